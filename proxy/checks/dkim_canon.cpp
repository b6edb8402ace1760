#include "checks/dkim_canon.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>

#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

std::string relaxed_header(std::string_view field) {
  // Unfolded first (§3.4.2): a CRLF goes wherever it is, the name included.
  const auto colon = field.find(':');
  std::string out;
  out.reserve(field.size() + 2);  // (it only shrinks, but for the CRLF of a field that lacks one)
  for (char c : field.substr(0, colon)) {
    if (c != '\r' && c != '\n') out += smtp::ascii_lower(c);
  }
  while (!out.empty() && smtp::is_wsp(out.back())) out.pop_back();
  out += ':';
  if (colon == std::string_view::npos) {
    out += "\r\n";
    return out;
  }
  const std::string_view value = field.substr(colon + 1);
  const std::size_t value_start = out.size();
  // Runs of bytes that stay as they are, copied whole; between them CR and LF
  // go (unfolding) and a run of WSP becomes one space, unless it is at either
  // end of the value.
  bool wsp = false;
  for (auto run = value.begin(); run < value.end();) {
    if (smtp::is_fws(*run)) {
      wsp = wsp || smtp::is_wsp(*run);
      ++run;
      continue;
    }
    if (wsp && out.size() > value_start) out += ' ';  // (none before the value)
    wsp = false;
    const auto end = std::find_if(run, value.end(), smtp::is_fws);
    out.append(run, end);
    run = end;
  }
  out += "\r\n";
  return out;
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

namespace {

// The bytes a body line copies as they came: all but CR, LF and, relaxed, WSP.
constexpr std::array<bool, 256> kept_bytes(bool relaxed) {
  std::array<bool, 256> kept{};
  for (int c = 0; c < 256; ++c) kept[c] = c != '\r' && c != '\n' && !(relaxed && (c == ' ' || c == '\t'));
  return kept;
}
constexpr auto kept_relaxed = kept_bytes(true);
constexpr auto kept_simple = kept_bytes(false);

// Simple: where the bytes from `i` on stop being all at least 0x0e, looked at
// eight at a time (a word has a byte below 0x0e iff (w - 0x0e*) & ~w & 0x80*
// is not 0). The bytes that end a run, CR and LF, are below it.
std::size_t skip_simple_words(std::string_view s, std::size_t i) {
  constexpr std::uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (((w - ones * 0x0e) & ~w & highs) != 0) break;
  }
  return i;
}

// Relaxed: the first byte from `i` on that may end a run of bytes that stay
// as they came, looked at eight at a time: a byte below SP (TAB, CR, LF,
// other controls), or an SP not followed by a plain byte in its word (a
// second SP, a control, or the word's end: the byte-wise step looks past it).
// The flags are exact up to the first one (a borrow only ever spreads a
// false alarm upwards, which the byte-wise step then clears).
std::size_t skip_relaxed_words(std::string_view s, std::size_t i) {
  constexpr std::uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL, spaces = ones * ' ';
  constexpr std::uint64_t last = 0x8000000000000000ULL;  // byte 7's high bit (little-endian: the word's last byte)
  static_assert(std::endian::native == std::endian::little);
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (((w - ones * '!') & ~w & highs) == 0) continue;  // nothing below '!' (base64, say): no SP either
    const std::uint64_t control = (w - spaces) & ~w & highs;
    const std::uint64_t x = w ^ spaces;
    const std::uint64_t sp = (x - ones) & ~x & highs;
    const std::uint64_t stop = control | (sp & (((sp | control) >> 8) | last));
    if (stop != 0) return i + static_cast<std::size_t>(std::countr_zero(stop) / 8);
  }
  return i;
}

}  // namespace

void canonical_body::feed(std::string_view bytes, std::string& out) {
  const auto& kept = relaxed_ ? kept_relaxed : kept_simple;
  const auto plain = [&kept](char c) { return kept[static_cast<unsigned char>(c)]; };
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
      // The run that stays as it came, copied at once: plain bytes and, relaxed, a single SP
      // between two of them (what the run of WSP there becomes anyway): words, not letters.
      std::size_t end = i + 1;
      while ((end = relaxed_ ? skip_relaxed_words(bytes, end) : skip_simple_words(bytes, end)) < bytes.size()) {
        if (plain(bytes[end])) {
          ++end;
        } else if (bytes[end] == ' ' && end + 1 < bytes.size() && plain(bytes[end + 1])) {
          end += 2;
        } else {
          break;
        }
      }
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

namespace {
// Each field's name, found once (the callers look at every field for each name they want).
std::vector<std::string_view> names_of(const std::vector<std::string>& fields) {
  std::vector<std::string_view> names;
  names.reserve(fields.size());
  for (const auto& f : fields) names.push_back(smtp::header_field_name(f));
  return names;
}
}  // namespace

std::vector<std::string> signed_field_names(const std::vector<std::string>& fields,
                                            const std::vector<std::string_view>& wanted,
                                            const std::vector<std::string_view>& oversigned) {
  const auto names = names_of(fields);
  std::vector<std::string> h;
  for (auto name : wanted) {
    const auto n =
        std::count_if(names.begin(), names.end(), [&](std::string_view f) { return smtp::equals_nocase(f, name); });
    const bool over = std::find(oversigned.begin(), oversigned.end(), name) != oversigned.end();
    for (long i = 0; i < n + (over ? 1 : 0); ++i) h.emplace_back(smtp::to_lower(name));
  }
  return h;
}

std::string signed_fields(const std::vector<std::string>& fields, const std::vector<std::string>& h,
                          dkim_canonicalization c) {
  std::string out;
  for_each_signed_field(fields, h, c, [&out](std::string_view field) { out += field; });
  return out;
}

void for_each_signed_field(const std::vector<std::string>& fields, const std::vector<std::string>& h,
                           dkim_canonicalization c, const std::function<void(std::string_view)>& out) {
  // The fields sorted by name (any case), each name's from the bottom up: h=
  // takes one per mention (§5.4.2), found by a binary search, not a scan of
  // the header. (A scan per mention made an h= of N names over N fields
  // N² steps: seconds for a few hundred KB of header a sender controls.)
  struct named {
    std::string_view name;
    std::size_t index;
    std::size_t taken;  // at a name's first entry: its fields h= has taken
  };
  const auto less = [](std::string_view a, std::string_view b) {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                        [](char x, char y) { return smtp::ascii_lower(x) < smtp::ascii_lower(y); });
  };
  std::vector<named> by_name;
  by_name.reserve(fields.size());
  for (std::size_t i = fields.size(); i-- > 0;) by_name.push_back({smtp::header_field_name(fields[i]), i, 0});
  std::stable_sort(by_name.begin(), by_name.end(), [&](const named& a, const named& b) { return less(a.name, b.name); });
  for (const auto& name : h) {
    const auto first = std::lower_bound(by_name.begin(), by_name.end(), name,
                                        [&](const named& e, std::string_view n) { return less(e.name, n); });
    if (first == by_name.end() || less(name, first->name)) continue;  // no field of that name
    const auto next = first + static_cast<std::ptrdiff_t>(first->taken);
    if (next == by_name.end() || !smtp::equals_nocase(next->name, name)) continue;  // all taken (oversigning)
    ++first->taken;
    out(canonical_header(fields[next->index], c));
  }
}

}  // namespace portcullis::checks
