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
  bool wsp = false;
  for (char c : value) {
    if (c == '\r' || c == '\n') continue;  // unfolding
    if (smtp::is_wsp(c)) {
      wsp = true;
      continue;
    }
    if (wsp && out.back() != ':') out += ' ';  // (none right after the colon)
    wsp = false;
    out += c;
  }
  return out + "\r\n";
}

void relaxed_body::feed(std::string_view bytes, std::string& out) {
  for (char c : bytes) {
    if (c == '\r') continue;  // lines end with CRLF (the DATA decoder saw to it): LF ends them
    if (c == '\n') {
      if (content_) {
        out += "\r\n";
      } else {
        ++empty_lines_;
      }
      content_ = wsp_ = false;
      continue;
    }
    if (smtp::is_wsp(c)) {
      wsp_ = true;
      continue;
    }
    for (; !content_ && empty_lines_ > 0; --empty_lines_) out += "\r\n";  // they were inside the body after all
    if (wsp_) out += ' ';
    wsp_ = false;
    content_ = true;
    out += c;
  }
}

void relaxed_body::finish(std::string& out) {
  if (content_) out += "\r\n";  // a last line without its CRLF
  content_ = wsp_ = false;
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

std::string signed_fields_relaxed(const std::vector<std::string>& fields, const std::vector<std::string>& h) {
  std::map<std::string, std::size_t> taken;  // name -> fields of that name taken, from the bottom
  std::string out;
  for (const auto& name : h) {
    std::size_t skip = taken[name]++;
    for (auto f = fields.rbegin(); f != fields.rend(); ++f) {
      if (!smtp::equals_nocase(smtp::header_field_name(*f), name)) continue;
      if (skip-- == 0) {
        out += relaxed_header(*f);
        break;
      }
    }
  }
  return out;
}

}  // namespace portcullis::checks
