// What a log line may hold. A log line is one record: text that reaches it
// from outside (a client's AUTH name, which RFC 4616 §2 lets hold LF; an
// upstream's reply; a policy's pc.log message) must not end it early and
// forge the next one, nor drive the terminal that shows it. So every line is
// escaped where it is written (log.cpp's formatter), whatever its source.
// Pure: text in, text out.
#pragma once

#include <string>
#include <string_view>

namespace portcullis {

// CR, LF and TAB as \r \n \t; every other C0 control and DEL as \xNN.
// Backslashes and 8-bit octets are left as they are: the point is that a
// record stays one line, and the rest of the text stays readable (printable()
// is for showing a client's text exactly, backslashes escaped too).
inline bool needs_log_escape(unsigned char c) { return c < 0x20 || c == 0x7f; }

// The UTF-8 of a character that ends a line or drives a terminal as well:
// the C1 controls (U+0080-U+009F: NEL, CSI...) and U+2028/U+2029, which
// Unicode-aware readers (Python's splitlines, JavaScript) take for line
// breaks. Its length at `i` (2 or 3), else 0.
inline std::size_t unicode_break_at(std::string_view s, std::size_t i) {
  const auto at = [&s](std::size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
  if (at(i) == 0xc2 && at(i + 1) >= 0x80 && at(i + 1) <= 0x9f) return 2;
  if (at(i) == 0xe2 && at(i + 1) == 0x80 && (at(i + 2) == 0xa8 || at(i + 2) == 0xa9)) return 3;
  return 0;
}

// Such a character as \uXXXX.
inline void append_unicode_escape(std::string& out, std::string_view s, std::size_t i, std::size_t n) {
  static constexpr char hex[] = "0123456789abcdef";
  const unsigned code = n == 2 ? static_cast<unsigned char>(s[i + 1]) : 0x2000u | (static_cast<unsigned char>(s[i + 2]) - 0x80u);
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += hex[(code >> shift) & 15];
}

inline std::string escape_log_text(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      if (const auto n = unicode_break_at(s, i)) {
        append_unicode_escape(out, s, i, n);
        i += n - 1;
        continue;
      }
    }
    if (!needs_log_escape(c)) {
      out += static_cast<char>(c);
      continue;
    }
    switch (c) {
      case '\r': out += "\\r"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default: {
        static constexpr char hex[] = "0123456789abcdef";
        out += "\\x";
        out += hex[c >> 4];
        out += hex[c & 15];
      }
    }
  }
  return out;
}

// Whether `s` can be written as it is (the common case: no copy is made).
inline bool is_log_safe(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (needs_log_escape(c) || (c >= 0x80 && unicode_break_at(s, i))) return false;
  }
  return true;
}

}  // namespace portcullis
