// Envelope addresses and ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2,
// §4.1.3, §4.5.3.1; SMTPUTF8: RFC 6531 §3.3).
//
// Pure: bytes in, values out. OpenSMTPD's worst bug (CVE-2020-7247) lived in
// this kind of code, so it is fuzzed (tests/fuzz) and table-tested.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::smtp {

// RFC 5321 §4.5.3.1.1-3
inline constexpr std::size_t max_local_part = 64;
inline constexpr std::size_t max_domain = 255;
inline constexpr std::size_t max_path = 256;

struct address {
  std::string local;   // as on the wire: a dot-string or a quoted-string with its quotes
  std::string domain;  // a domain or an address literal "[...]"; empty for the null path
  bool null() const { return local.empty() && domain.empty(); }
  // "Postmaster" alone is a valid RCPT (RFC 5321 §4.1.1.3), hence no "@" without a domain.
  std::string str() const { return domain.empty() ? local : local + '@' + domain; }
  bool operator==(const address&) const = default;
};

struct esmtp_param {
  std::string keyword;  // upper case
  std::string value;    // empty when given without "="
  bool has_value = false;
  bool operator==(const esmtp_param&) const = default;
};

// Parses "local@domain" (no angle brackets). `utf8`: allow UTF-8 per RFC 6531.
std::optional<address> parse_mailbox(std::string_view text, bool utf8);

// The argument of MAIL FROM:/RCPT TO: after the keyword: "<path> [params]".
struct path_argument {
  address addr;
  std::vector<esmtp_param> params;
};

enum class path_error {
  none,
  syntax,         // not "<...>" or a bad mailbox
  too_long,       // RFC 5321 §4.5.3.1
  bad_params,     // ESMTP parameter syntax
  non_ascii,      // UTF-8 without SMTPUTF8
};

struct path_result {
  std::optional<path_argument> value;
  path_error error = path_error::none;
};

// `reverse`: MAIL's reverse-path (allows "<>"). A source route ("@a,@b:") is
// accepted and dropped (RFC 5321 §4.1.2, Appendix C). UTF-8 is allowed only
// when the arguments carry SMTPUTF8 (for MAIL) or `utf8_session` is set (RCPT
// of a MAIL that had SMTPUTF8).
path_result parse_path_argument(std::string_view arg, bool reverse, bool utf8_session);

// ESMTP parameters "KEY[=VALUE] KEY[=VALUE]" (RFC 5321 §4.1.2 Mail-parameters).
std::optional<std::vector<esmtp_param>> parse_esmtp_params(std::string_view text, bool utf8);

// Is the address safe to put on the wire inside "<...>"? (what rewrites are checked with)
bool is_valid_address(const address& a, bool utf8);

// A mailbox a policy or a test hands over as text: parsed, and only if it is valid on the wire too.
std::optional<address> parse_valid_mailbox(std::string_view text, bool utf8);

// One mailbox or two? The local part is exact (RFC 5321 §2.4: only the
// destination host may interpret it); the domain is case-insensitive.
bool same_mailbox(const address& a, const address& b);

// "<a@x>,<b@y>": a list of paths as log lines show them.
std::string join_paths(const std::vector<address>& list);

}  // namespace portcullis::smtp
