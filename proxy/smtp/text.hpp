// Small ASCII helpers shared by the protocol parsers: SMTP keywords are
// case-insensitive ASCII, never locale-dependent.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

namespace portcullis::smtp {

constexpr char ascii_upper(char c) { return (c >= 'a' && c <= 'z') ? char(c - 'a' + 'A') : c; }
constexpr char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }
constexpr bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr bool is_digit(char c) { return c >= '0' && c <= '9'; }
constexpr bool is_wsp(char c) { return c == ' ' || c == '\t'; }  // RFC 5322 WSP
constexpr bool is_line_end(char c) { return c == '\r' || c == '\n'; }
// WSP or a line end: what folding white space (RFC 5322 §3.2.2, RFC 6376
// §2.8) is made of. (One compare for a byte above SP, most of any text.)
constexpr bool is_fws(char c) { return static_cast<unsigned char>(c) <= ' ' && (is_wsp(c) || is_line_end(c)); }

// `s` without the bytes `drop` picks at its ends (a tag's name or value).
template <class Drop>
constexpr std::string_view trimmed(std::string_view s, Drop drop) {
  while (!s.empty() && drop(s.front())) s.remove_prefix(1);
  while (!s.empty() && drop(s.back())) s.remove_suffix(1);
  return s;
}

// `s` without the bytes `drop` picks, the runs between them copied whole
// (a DKIM key or signature is hundreds of bytes, a few runs where folded).
template <class Drop>
std::string without_bytes(std::string_view s, Drop drop) {
  std::string out;
  out.reserve(s.size());
  for (auto run = s.begin(); run < s.end();) {
    const auto end = std::find_if(run, s.end(), drop);
    out.append(run, end);
    run = end == s.end() ? end : end + 1;
  }
  return out;
}

inline bool equals_nocase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_upper(a[i]) != ascii_upper(b[i])) return false;
  return true;
}

inline bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && equals_nocase(s.substr(0, prefix.size()), prefix);
}

inline std::string to_lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = ascii_lower(c);
  return out;
}

inline std::string to_upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = ascii_upper(c);
  return out;
}

// Well-formed UTF-8 (RFC 3629): no overlongs, no surrogates, nothing past U+10FFFF.
bool is_valid_utf8(std::string_view s);
bool is_ascii(std::string_view s);

// A host name as Postfix's valid_hostname takes one (for a name from DNS:
// a PTR record's): labels of letters, digits, "-" and "_", 1 to 63 octets,
// none starting or ending with "-", 255 octets in all, and not all digits
// and dots (that would read as an address).
bool is_valid_hostname(std::string_view s);

}  // namespace portcullis::smtp
