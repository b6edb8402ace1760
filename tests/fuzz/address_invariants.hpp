// What must hold of any address or path the parsers accept: shared by
// fuzz_address and fuzz_command (which reaches the path parser through
// MAIL FROM:/RCPT TO:).
#pragma once

#include <string_view>

#include "fuzz_check.hpp"
#include "smtp/address.hpp"
#include "smtp/text.hpp"

namespace portcullis::smtp::fuzz {

// Fit to go upstream between "<" and ">": no CR, LF or NUL anywhere, and no
// '<', '>' or space outside a quoted local part (CVE-2020-7247 territory).
inline void check_wire_safe(const address& a) {
  for (const char c : a.local + a.domain) FUZZ_CHECK(c != '\r' && c != '\n' && c != '\0');
  const bool quoted = !a.local.empty() && a.local.front() == '"';
  if (!quoted)
    for (const char c : a.local) FUZZ_CHECK(c != '<' && c != '>' && c != ' ');
  for (const char c : a.domain) FUZZ_CHECK(c != '<' && c != '>' && c != ' ');
}

inline bool is_keyword_char(char c) { return is_alpha(c) || is_digit(c) || c == '-'; }

inline void check_params(const std::vector<esmtp_param>& params) {
  for (const auto& p : params) {
    FUZZ_CHECK(!p.keyword.empty() && p.keyword.front() != '-');
    for (const char c : p.keyword) FUZZ_CHECK(is_keyword_char(c) && ascii_upper(c) == c);
    FUZZ_CHECK(p.has_value ? !p.value.empty() : p.value.empty());
    for (const char ch : p.value) {
      const auto c = static_cast<unsigned char>(ch);
      FUZZ_CHECK(c > 32 && c != '=' && c != 0x7f);
    }
  }
}

inline void check_path_argument(std::string_view arg, bool reverse, bool utf8_session) {
  const path_result r = parse_path_argument(arg, reverse, utf8_session);
  FUZZ_CHECK(r.value.has_value() == (r.error == path_error::none));
  if (!r.value) return;
  const address& a = r.value->addr;
  FUZZ_CHECK(!a.null() || reverse);  // "<>" is MAIL's only
  FUZZ_CHECK(is_valid_address(a, true));
  check_wire_safe(a);
  FUZZ_CHECK(a.local.size() <= max_local_part && a.domain.size() <= max_domain);
  FUZZ_CHECK(a.str().size() + 2 <= max_path);
  check_params(r.value->params);
  bool utf8 = utf8_session;
  for (const auto& p : r.value->params) utf8 = utf8 || p.keyword == "SMTPUTF8";
  FUZZ_CHECK(utf8 || is_ascii(arg));
  FUZZ_CHECK(is_valid_utf8(arg));
  // Accepted with UTF-8 forbidden means accepted with it allowed too.
  if (!utf8_session) FUZZ_CHECK(parse_path_argument(arg, reverse, true).error == path_error::none);
}

}  // namespace portcullis::smtp::fuzz
