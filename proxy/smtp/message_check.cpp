#include "smtp/message_check.hpp"

#include "smtp/message_header.hpp"

namespace portcullis::smtp {

bool is_valid_header_name(std::string_view name) {
  if (name.empty()) return false;
  for (unsigned char c : name)
    if (c < 33 || c > 126 || c == ':') return false;
  return true;
}

bool is_valid_header_value(std::string_view value) {
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

namespace {

// A field's first line: a name, then the colon, with white space allowed
// between them (RFC 5322 §4.5, obs-optional: "Subject : x" is a field, which
// a reader must take; header_field_name drops that white space as they do).
bool is_field_line(std::string_view line) { return is_valid_header_name(header_field_name(line)); }

}  // namespace

std::optional<std::string> message_problem(std::string_view message) {
  bool in_header = true;
  std::size_t line_no = 0;
  std::size_t pos = 0;
  while (pos < message.size()) {
    ++line_no;
    const auto crlf = message.find("\r\n", pos);
    const std::string_view line = message.substr(pos, crlf == std::string_view::npos ? std::string_view::npos : crlf - pos);
    if (crlf == std::string_view::npos && line.empty()) break;
    // (Three memchr scans: find_first_of tests each byte against the set, several times slower.)
    if (line.find('\r') != std::string_view::npos || line.find('\n') != std::string_view::npos)
      return "bare CR or LF on line " + std::to_string(line_no);
    if (line.find('\0') != std::string_view::npos) return "NUL on line " + std::to_string(line_no);
    if (in_header) {
      if (line.empty()) {
        in_header = false;
      } else if (line.front() == ' ' || line.front() == '\t') {
        if (line_no == 1) return "the message starts with a continuation line";
      } else {
        if (!is_field_line(line)) return "malformed header on line " + std::to_string(line_no);
      }
    }
    if (crlf == std::string_view::npos) break;  // a last line without CRLF gets one on the wire
    pos = crlf + 2;
  }
  return std::nullopt;
}

std::optional<std::string> header_fields_problem(std::string_view fields) {
  if (fields.empty()) return "no header field";
  if (!fields.ends_with("\r\n")) return "the last field does not end with CRLF";
  if (fields.find("\r\n\r\n") != std::string_view::npos || fields.starts_with("\r\n")) return "an empty line";
  return message_problem(fields);  // (every line a field or a continuation: no empty line ends the header)
}

bool head_is_whole(std::string_view message) {
  bool in_field = false;  // a continuation needs a field to continue
  for (std::size_t pos = 0; pos < message.size();) {
    const auto crlf = message.find("\r\n", pos);
    if (crlf == std::string_view::npos) return false;  // a last line without CRLF
    const auto line = message.substr(pos, crlf - pos);
    if (line.empty()) return true;  // the empty line that ends the header section
    if (line.find('\r') != std::string_view::npos || line.find('\n') != std::string_view::npos) return false;
    if (line.front() == ' ' || line.front() == '\t') {
      if (!in_field) return false;
    } else {
      if (!is_field_line(line)) return false;
      in_field = true;
    }
    pos = crlf + 2;
  }
  return true;
}

}  // namespace portcullis::smtp
