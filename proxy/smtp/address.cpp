#include "smtp/address.hpp"

#include <arpa/inet.h>

#include <string_view>

#include "smtp/text.hpp"

namespace portcullis::smtp {

namespace {

constexpr std::size_t max_label = 63;  // RFC 1035 §2.3.4

bool is_non_ascii(char c) { return static_cast<unsigned char>(c) >= 0x80; }

// RFC 5322 atext, plus UTF8-non-ascii under SMTPUTF8 (RFC 6531 §3.3).
bool is_atext(char c, bool utf8) {
  if (is_alpha(c) || is_digit(c)) return true;
  if (utf8 && is_non_ascii(c)) return true;
  return std::string_view("!#$%&'*+-/=?^_`{|}~").find(c) != std::string_view::npos;
}

// A cursor over the text; each parse_* consumes what it matched or fails.
struct scanner {
  std::string_view s;
  std::size_t pos = 0;
  bool at_end() const { return pos >= s.size(); }
  char peek() const { return at_end() ? '\0' : s[pos]; }
  bool take(char c) {
    if (peek() != c || at_end()) return false;
    ++pos;
    return true;
  }
};

bool parse_dot_string(scanner& sc, bool utf8) {
  for (;;) {
    const std::size_t start = sc.pos;
    while (!sc.at_end() && is_atext(sc.peek(), utf8)) ++sc.pos;
    if (sc.pos == start) return false;  // empty atom: leading, trailing or double dot
    if (!sc.take('.')) return true;
  }
}

bool parse_quoted_string(scanner& sc, bool utf8) {
  if (!sc.take('"')) return false;
  while (!sc.at_end()) {
    const char c = sc.peek();
    const auto u = static_cast<unsigned char>(c);
    if (c == '"') {
      ++sc.pos;
      return true;
    }
    if (c == '\\') {  // quoted-pairSMTP = %d92 %d32-126
      ++sc.pos;
      const auto q = static_cast<unsigned char>(sc.peek());
      if (sc.at_end() || q < 32 || q > 126) return false;
      ++sc.pos;
      continue;
    }
    // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 under SMTPUTF8
    if ((u >= 32 && u <= 126) || (utf8 && u >= 0x80)) {
      ++sc.pos;
      continue;
    }
    return false;
  }
  return false;
}

bool is_let_dig(char c, bool utf8) { return is_alpha(c) || is_digit(c) || (utf8 && is_non_ascii(c)); }

// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
bool parse_domain_name(scanner& sc, bool utf8) {
  for (;;) {
    const std::size_t start = sc.pos;
    while (!sc.at_end() && (is_let_dig(sc.peek(), utf8) || sc.peek() == '-')) ++sc.pos;
    const std::string_view label = sc.s.substr(start, sc.pos - start);
    if (label.empty() || label.size() > max_label || label.front() == '-' || label.back() == '-') return false;
    if (!sc.take('.')) return true;
  }
}

// address-literal = "[" ( IPv4 / "IPv6:" IPv6 / Standardized-tag ":" 1*dcontent ) "]"
bool parse_address_literal(scanner& sc) {
  if (!sc.take('[')) return false;
  const std::size_t close = sc.s.find(']', sc.pos);
  if (close == std::string_view::npos) return false;
  const std::string inner(sc.s.substr(sc.pos, close - sc.pos));
  sc.pos = close + 1;
  // dcontent = %d33-90 / %d94-126, checked before inet_pton: it reads a C
  // string and would stop at a NUL, letting "[1.2.3.4\0\r\nRSET]" through.
  // '<' and '>' are dcontent, but no standardized tag needs them and inside a
  // path they would end it early for a naive parser upstream.
  for (const char ch : inner) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']' || c == '<' || c == '>') return false;
  }
  unsigned char buf[16];
  if (starts_with_nocase(inner, "IPv6:")) return inet_pton(AF_INET6, inner.c_str() + 5, buf) == 1;
  if (inet_pton(AF_INET, inner.c_str(), buf) == 1) return true;
  // General-address-literal: a tag (Ldh-str) then dcontent = %d33-90 / %d94-126
  const auto colon = inner.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == inner.size()) return false;
  for (std::size_t i = 0; i < colon; ++i)
    if (!is_let_dig(inner[i], false) && inner[i] != '-') return false;
  return true;
}

bool parse_domain(scanner& sc, bool utf8) {
  return sc.peek() == '[' ? parse_address_literal(sc) : parse_domain_name(sc, utf8);
}

std::optional<address> parse_mailbox_at(scanner& sc, bool utf8) {
  const std::size_t local_start = sc.pos;
  const bool ok = sc.peek() == '"' ? parse_quoted_string(sc, utf8) : parse_dot_string(sc, utf8);
  if (!ok) return std::nullopt;
  const std::size_t local_end = sc.pos;
  if (!sc.take('@')) return std::nullopt;
  const std::size_t domain_start = sc.pos;
  if (!parse_domain(sc, utf8)) return std::nullopt;
  address a;
  a.local = std::string(sc.s.substr(local_start, local_end - local_start));
  a.domain = std::string(sc.s.substr(domain_start, sc.pos - domain_start));
  return a;
}

// A-d-l = At-domain *( "," At-domain ) ":" — a source route, obsolete and ignored.
bool skip_source_route(scanner& sc) {
  if (sc.peek() != '@') return true;
  do {
    if (!sc.take('@') || !parse_domain(sc, false)) return false;
  } while (sc.take(','));
  return sc.take(':');
}

bool lengths_ok(const address& a) {
  return a.local.size() <= max_local_part && a.domain.size() <= max_domain;
}

bool is_esmtp_keyword(std::string_view k) {
  if (k.empty() || !(is_alpha(k[0]) || is_digit(k[0]))) return false;
  for (char c : k)
    if (!(is_alpha(c) || is_digit(c) || c == '-')) return false;
  return true;
}

// esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 allowed under SMTPUTF8 (RFC 6531 §3.3)
bool is_esmtp_value(std::string_view v, bool utf8) {
  if (v.empty()) return false;
  for (char ch : v) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x80 ? !utf8 : (c < 33 || c > 126 || c == '=')) return false;
  }
  return true;
}

}  // namespace

std::optional<address> parse_mailbox(std::string_view text, bool utf8) {
  if (utf8 ? !is_valid_utf8(text) : !is_ascii(text)) return std::nullopt;
  scanner sc{text};
  auto a = parse_mailbox_at(sc, utf8);
  if (!a || !sc.at_end() || !lengths_ok(*a)) return std::nullopt;
  return a;
}

bool same_mailbox(const address& a, const address& b) {
  return a.local == b.local && equals_nocase(a.domain, b.domain);
}

bool is_valid_address(const address& a, bool utf8) {
  if (a.null()) return true;
  if (a.domain.empty()) return equals_nocase(a.local, "postmaster");
  const auto parsed = parse_mailbox(a.str(), utf8);
  return parsed && *parsed == a && a.str().size() + 2 <= max_path;
}

std::optional<address> parse_valid_mailbox(std::string_view text, bool utf8) {
  auto a = parse_mailbox(text, utf8);
  if (!a || !is_valid_address(*a, utf8)) return std::nullopt;
  return a;
}

std::optional<std::vector<esmtp_param>> parse_esmtp_params(std::string_view text, bool utf8) {
  std::vector<esmtp_param> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (text[pos] == ' ') {
      ++pos;
      continue;
    }
    const std::size_t end = std::min(text.find(' ', pos), text.size());
    const std::string_view item = text.substr(pos, end - pos);
    pos = end;
    esmtp_param p;
    const auto eq = item.find('=');
    p.keyword = to_upper(item.substr(0, eq));
    if (!is_esmtp_keyword(p.keyword)) return std::nullopt;
    if (eq != std::string_view::npos) {
      p.value = std::string(item.substr(eq + 1));
      p.has_value = true;
      if (!is_esmtp_value(p.value, utf8)) return std::nullopt;
    }
    out.push_back(std::move(p));
  }
  return out;
}

path_result parse_path_argument(std::string_view arg, bool reverse, bool utf8_session) {
  // UTF-8 is judged after the parameters are known (SMTPUTF8 may come with them).
  scanner sc{arg};
  if (!sc.take('<')) return {std::nullopt, path_error::syntax};
  path_argument result;
  if (!(reverse && sc.peek() == '>')) {
    if (!reverse && starts_with_nocase(arg.substr(sc.pos), "postmaster>")) {
      // RFC 5321 §4.1.1.3: "RCPT TO:<Postmaster>" with no domain must be accepted.
      result.addr.local = std::string(arg.substr(sc.pos, 10));
      sc.pos += 10;
    } else {
      if (!skip_source_route(sc)) return {std::nullopt, path_error::syntax};
      auto a = parse_mailbox_at(sc, true);
      if (!a) return {std::nullopt, path_error::syntax};
      result.addr = std::move(*a);
    }
  }
  if (!sc.take('>')) return {std::nullopt, path_error::syntax};
  if (!lengths_ok(result.addr) || sc.pos > max_path) return {std::nullopt, path_error::too_long};
  const std::string_view rest = arg.substr(sc.pos);
  if (!rest.empty() && rest.front() != ' ') return {std::nullopt, path_error::syntax};
  if (!is_valid_utf8(arg)) return {std::nullopt, path_error::syntax};
  auto params = parse_esmtp_params(rest, true);
  if (!params) return {std::nullopt, path_error::bad_params};
  result.params = std::move(*params);
  bool utf8 = utf8_session;
  for (const auto& p : result.params)
    if (p.keyword == "SMTPUTF8") utf8 = true;
  if (!utf8 && !is_ascii(arg)) return {std::nullopt, path_error::non_ascii};
  return {std::move(result), path_error::none};
}

std::string join_paths(const std::vector<address>& list) {
  std::string out;
  for (const auto& a : list) {
    if (!out.empty()) out += ',';
    out += '<' + a.str() + '>';
  }
  return out;
}

}  // namespace portcullis::smtp
