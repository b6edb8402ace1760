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

inline std::string escape_log_text(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const unsigned char c : s) {
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
  for (const unsigned char c : s)
    if (needs_log_escape(c)) return false;
  return true;
}

}  // namespace portcullis
