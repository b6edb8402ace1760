#include "checks/dkim_canon.hpp"

#include <algorithm>
#include <map>

#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

std::string relaxed_header(std::string_view field) {
  // Unfolded first (§3.4.2): a CRLF goes wherever it is, the name included.
  const auto colon = field.find(':');
  std::string out;
  for (char c : field.substr(0, colon)) {
    if (c != '\r' && c != '\n') out += smtp::ascii_lower(c);
  }
  while (!out.empty() && smtp::is_wsp(out.back())) out.pop_back();
  out += ':';
  if (colon == std::string_view::npos) return out + "\r\n";
  std::string_view value = field.substr(colon + 1);
  const std::size_t value_start = out.size();
  bool wsp = false;
  for (char c : value) {
    if (c == '\r' || c == '\n') continue;  // unfolding
    if (smtp::is_wsp(c)) {
      wsp = true;
      continue;
    }
    if (wsp && out.size() > value_start) out += ' ';  // (none before the value)
    wsp = false;
    out += c;
  }
  return out + "\r\n";
}

std::string canonical_header(std::string_view field, dkim_canonicalization c) {
  if (c == dkim_canonicalization::relaxed) return relaxed_header(field);
  std::string out(field);
  if (!out.ends_with("\r\n")) {  // (a last field of a header-only message may lack its line end)
    if (out.ends_with('\n')) out.pop_back();
    out += "\r\n";
  }
  return out;
}

std::string unsigned_signature_field(std::string_view field, dkim_canonicalization c) {
  while (field.ends_with('\n') || field.ends_with('\r')) field.remove_suffix(1);
  std::string f(field);
  // The tag named "b" (not "bh"): the value after its "=", up to the next ";" or the end.
  for (auto start = f.find(':'); start != std::string::npos && start < f.size(); start = f.find(';', start)) {
    ++start;
    const auto equals = f.find('=', start);
    if (equals == std::string::npos) break;
    std::string_view name(f.data() + start, equals - start);
    const auto fws = [](char ch) { return smtp::is_wsp(ch) || ch == '\r' || ch == '\n'; };
    while (!name.empty() && fws(name.front())) name.remove_prefix(1);
    while (!name.empty() && fws(name.back())) name.remove_suffix(1);
    if (name == "b") {
      const auto end = f.find(';', equals);
      f.erase(equals + 1, (end == std::string::npos ? f.size() : end) - equals - 1);
      break;
    }
  }
  std::string out = canonical_header(f, c);
  out.resize(out.size() - 2);  // the CRLF canonical_header ends with
  return out;
}

void canonical_body::feed(std::string_view bytes, std::string& out) {
  const auto plain = [this](char c) { return c != '\r' && c != '\n' && !(relaxed_ && smtp::is_wsp(c)); };
  for (std::size_t i = 0; i < bytes.size();) {
    const char c = bytes[i];
    if (c == '\r') {  // lines end with CRLF (the DATA decoder saw to it): LF ends them
      ++i;
    } else if (c == '\n') {
      if (content_) {
        out += "\r\n";
      } else {
        ++empty_lines_;
      }
      content_ = wsp_ = false;
      ++i;
    } else if (!plain(c)) {  // relaxed: WSP
      wsp_ = true;
      ++i;
    } else {
      for (; !content_ && empty_lines_ > 0; --empty_lines_) out += "\r\n";  // they were inside the body after all
      if (wsp_) out += ' ';
      wsp_ = false;
      content_ = any_ = true;
      std::size_t end = i + 1;  // the run of plain bytes, copied at once
      while (end < bytes.size() && plain(bytes[end])) ++end;
      out.append(bytes.data() + i, end - i);
      i = end;
    }
  }
}

void canonical_body::finish(std::string& out) {
  // A last line without its CRLF gets one; an empty body is one CRLF in simple, nothing in relaxed.
  if (content_ || (!relaxed_ && !any_)) out += "\r\n";
  content_ = wsp_ = any_ = false;
  empty_lines_ = 0;
}

std::vector<std::string> signed_field_names(const std::vector<std::string>& fields,
                                            const std::vector<std::string_view>& wanted,
                                            const std::vector<std::string_view>& oversigned) {
  std::vector<std::string> h;
  for (auto name : wanted) {
    const auto n = std::count_if(fields.begin(), fields.end(), [&](const std::string& f) {
      return smtp::equals_nocase(smtp::header_field_name(f), name);
    });
    const bool over = std::find(oversigned.begin(), oversigned.end(), name) != oversigned.end();
    for (long i = 0; i < n + (over ? 1 : 0); ++i) h.emplace_back(smtp::to_lower(name));
  }
  return h;
}

std::string signed_fields(const std::vector<std::string>& fields, const std::vector<std::string>& h,
                          dkim_canonicalization c) {
  std::map<std::string, std::size_t> taken;  // name -> fields of that name taken, from the bottom
  std::string out;
  for (const auto& name : h) {
    std::size_t skip = taken[name]++;
    for (auto f = fields.rbegin(); f != fields.rend(); ++f) {
      if (!smtp::equals_nocase(smtp::header_field_name(*f), name)) continue;
      if (skip-- == 0) {
        out += canonical_header(*f, c);
        break;
      }
    }
  }
  return out;
}

}  // namespace portcullis::checks
