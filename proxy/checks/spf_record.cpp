// RFC 7208 record syntax, term by term, after the collected ABNF of §12.
#include "checks/spf_record.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <random>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>

#include "smtp/text.hpp"

namespace portcullis::checks {
namespace {

using smtp::ascii_lower;
using smtp::equals_nocase;
using smtp::is_alpha;
using smtp::is_digit;

constexpr std::string_view spf_version = "v=spf1";
constexpr int max_ip4_cidr = 32;   // §5.6 ip4-cidr-length
constexpr int max_ip6_cidr = 128;  // §5.6 ip6-cidr-length
constexpr int max_qnum = 255;      // §12 qnum
constexpr std::size_t max_qnum_digits = 3;
constexpr std::size_t max_cidr_digits = 3;
constexpr std::string_view macro_letters = "slodiphcrtv";  // §7.2
constexpr std::string_view exp_only_letters = "crt";       // §7.2: only in exp text
constexpr std::string_view macro_delimiters = ".-+,/_=";   // §7.1 delimiter

// What libspf2 is given for an ip4 or ip6 network of any address: it keeps
// a CIDR length of 0 to mean "none", so /0 becomes the two halves, /1 each.
constexpr std::string_view ip4_halves[] = {"ip4:0.0.0.0/1", "ip4:128.0.0.0/1"};
constexpr std::string_view ip6_halves[] = {"ip6:::/1", "ip6:8000::/1"};

bool is_alnum(char c) { return is_alpha(c) || is_digit(c); }

// %x21-7E: what macro-literal and the names allow; SP separates terms (§12).
bool is_visible(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x21 && u <= 0x7e;
}

bool is_qualifier(char c) { return c == '+' || c == '-' || c == '~' || c == '?'; }

// name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ) (§12); the first
// character is checked on its own.
bool is_name_char(char c) { return is_alnum(c) || c == '-' || c == '_' || c == '.'; }

bool is_all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_digit);
}

// A term as a message may show it: visible ASCII as it is, any other byte
// as \xHH (a record is DNS data: it may hold anything), cut when long.
std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (out.size() >= spf_error_term_chars) {
      out += "...";
      break;
    }
    if (is_visible(c)) {
      out += c;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    }
  }
  return out;
}

// ip4-network = qnum "." qnum "." qnum "." qnum, qnum 0-255 without leading
// zeros (§12); §5.6: no octet may be left out.
bool is_ip4_network(std::string_view s) {
  for (int octet = 0; octet < 4; ++octet) {
    if (octet > 0) {
      if (s.empty() || s[0] != '.') return false;
      s.remove_prefix(1);
    }
    std::size_t digits = 0;
    while (digits < s.size() && is_digit(s[digits])) ++digits;
    if (digits == 0 || digits > max_qnum_digits || (digits > 1 && s[0] == '0')) return false;
    int value = 0;
    for (std::size_t i = 0; i < digits; ++i) value = value * 10 + (s[i] - '0');
    if (value > max_qnum) return false;
    s.remove_prefix(digits);
  }
  return s.empty();
}

// ip6-network: RFC 4291 §2.2 text forms (§12), which inet_pton parses.
bool is_ip6_network(std::string_view s) {
  const std::string text(s);
  in6_addr address;
  return inet_pton(AF_INET6, text.c_str(), &address) == 1;
}

// Whether an ip4 or ip6 term's ":network[/length]" (valid) holds `client`;
// §5.6: never an address of the other family.
bool network_holds(std::string_view argument, bool ip4, const boost::asio::ip::address& client) {
  namespace ip = boost::asio::ip;
  if (ip4 != client.is_v4()) return false;
  std::string network(argument.substr(1));  // (after the ':')
  if (network.find('/') == std::string::npos) network += ip4 ? "/32" : "/128";
  boost::system::error_code ec;
  if (ip4) {
    const auto held = ip::make_network_v4(network, ec);
    return !ec && ip::network_v4(client.to_v4(), held.prefix_length()).canonical() == held.canonical();
  }
  const auto held = ip::make_network_v6(network, ec);
  return !ec && ip::network_v6(client.to_v6(), held.prefix_length()).canonical() == held.canonical();
}

// toplabel = ( *alphanum ALPHA *alphanum ) /
//            ( 1*alphanum "-" *( alphanum / "-" ) alphanum )   (§7.1)
// i.e. letters, digits and inner hyphens, and not all digits.
bool is_toplabel(std::string_view label) {
  if (label.empty() || label.front() == '-' || label.back() == '-') return false;
  bool letter_or_hyphen = false;
  for (const char c : label) {
    if (is_alpha(c) || c == '-') {
      letter_or_hyphen = true;
    } else if (!is_digit(c)) {
      return false;
    }
  }
  return letter_or_hyphen;
}

// "%{" macro-letter transformers *delimiter "}" (§7.1), given what lies
// between the braces.
std::optional<std::string> macro_error(std::string_view body) {
  if (body.empty()) return "empty macro %{}";
  const char letter = ascii_lower(body[0]);
  if (macro_letters.find(letter) == std::string_view::npos)
    return "unknown macro letter '" + std::string(1, body[0]) + "'";
  // §7.2: c, r and t are for the explanation text an exp= points to, not
  // for the domain-specs and modifiers of the record itself.
  if (exp_only_letters.find(letter) != std::string_view::npos)
    return "macro letter '" + std::string(1, body[0]) + "' is allowed only in exp text";
  std::size_t i = 1;
  while (i < body.size() && is_digit(body[i])) ++i;
  const auto digits = body.substr(1, i - 1);
  // §7.3: "If a DIGIT is specified, the value MUST be nonzero."
  if (!digits.empty() && digits.find_first_not_of('0') == std::string_view::npos)
    return "macro %{" + printable(body) + "} keeps no part";
  if (i < body.size() && ascii_lower(body[i]) == 'r') ++i;
  for (; i < body.size(); ++i)
    if (macro_delimiters.find(body[i]) == std::string_view::npos)
      return "bad macro delimiter '" + std::string(1, body[i]) + "'";
  return std::nullopt;
}

struct macro_string_scan {
  std::optional<std::string> error;
  std::size_t literal_tail = 0;  // where the literal text after the last macro-expand starts
};

// macro-string = *( macro-expand / macro-literal ) (§7.1). The caller has
// checked that every character is visible ASCII.
macro_string_scan scan_macro_string(std::string_view s) {
  macro_string_scan scan;
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '%') {
      ++i;
      continue;
    }
    const char next = i + 1 < s.size() ? s[i + 1] : '\0';
    if (next == '%' || next == '_' || next == '-') {
      i += 2;
    } else if (next == '{') {
      const auto close = s.find('}', i + 2);
      if (close == std::string_view::npos) {
        scan.error = "unterminated macro";
        return scan;
      }
      if (auto error = macro_error(s.substr(i + 2, close - i - 2))) {
        scan.error = std::move(error);
        return scan;
      }
      i = close + 1;
    } else {
      // §7.1: "A '%' character not followed by a '{', '%', '-', or '_'
      // character is a syntax error."
      scan.error = "'%' not followed by {, %, _ or -";
      return scan;
    }
    scan.literal_tail = i;
  }
  return scan;
}

// domain-spec = macro-string domain-end
// domain-end  = ( "." toplabel [ "." ] ) / macro-expand          (§7.1)
// The text as written: what a macro expands to is not held to the grammar,
// so "%{h}" is valid whatever the client said in HELO.
std::optional<std::string> domain_spec_error(std::string_view spec) {
  if (spec.empty()) return "empty domain";
  auto scan = scan_macro_string(spec);
  if (scan.error) return std::move(scan.error);
  if (scan.literal_tail == spec.size()) return std::nullopt;  // ends in a macro-expand
  auto tail = spec.substr(scan.literal_tail);
  if (tail.back() == '.') tail.remove_suffix(1);
  auto bare = spec;
  if (bare.back() == '.') bare.remove_suffix(1);
  // The usual mistake: an address where a domain goes (a:192.0.2.1).
  if (is_ip4_network(bare) || is_ip6_network(bare)) return "an IP address is not a domain (use ip4: or ip6:)";
  const auto dot = tail.rfind('.');
  if (dot == std::string_view::npos) return "domain must end in .<top-level label> or a macro";
  const auto label = tail.substr(dot + 1);
  if (label.empty()) return "empty top-level label";
  if (!is_toplabel(label)) {
    if (is_all_digits(label)) return "all-numeric top-level label \"" + printable(label) + "\"";
    return "bad top-level label \"" + printable(label) + "\"";
  }
  return std::nullopt;
}

// ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT) ; 0-32
// ip6-cidr-length = "/" ("0" / %x31-39 0*2DIGIT) ; 0-128      (§12)
std::optional<std::string> cidr_length_error(std::string_view digits, int max) {
  if (digits.empty()) return "missing CIDR length";
  if (!is_all_digits(digits)) return "bad CIDR length";
  if (digits.size() > 1 && digits[0] == '0') return "CIDR length with a leading zero";
  if (digits.size() > max_cidr_digits || std::stoi(std::string(digits)) > max)
    return "CIDR length above " + std::to_string(max);
  return std::nullopt;
}

// A term split the way §4.6.1 tells them apart: a name followed by "="
// (before any ":" or "/") is a modifier, anything else a mechanism.
struct term_parts {
  std::string_view qualifier;  // "", "+", "-", "~" or "?"
  std::string_view name;       // as written
  std::string_view argument;   // a mechanism's from its ":" or "/" on; a modifier's after "="
  bool modifier = false;
};

term_parts split_term(std::string_view term) {
  term_parts parts;
  if (!term.empty() && is_qualifier(term[0])) {
    parts.qualifier = term.substr(0, 1);
    term.remove_prefix(1);
  }
  std::size_t name_end = 0;
  while (name_end < term.size() && is_name_char(term[name_end])) ++name_end;
  if (name_end < term.size() && term[name_end] == '=') {
    parts.modifier = true;
    parts.name = term.substr(0, name_end);
    parts.argument = term.substr(name_end + 1);
    return parts;
  }
  const auto name_len = std::min(term.find_first_of(":/"), term.size());
  parts.name = term.substr(0, name_len);
  parts.argument = term.substr(name_len);
  return parts;
}

enum class mechanism { all, include, a, mx, ptr, ip4, ip6, exists, unknown };

// Names are case-insensitive (§4.6.1).
mechanism mechanism_named(std::string_view name) {
  struct named {
    std::string_view name;
    mechanism kind;
  };
  static constexpr named known[] = {
      {"all", mechanism::all}, {"include", mechanism::include}, {"a", mechanism::a},
      {"mx", mechanism::mx},   {"ptr", mechanism::ptr},         {"ip4", mechanism::ip4},
      {"ip6", mechanism::ip6}, {"exists", mechanism::exists},
  };
  for (const auto& k : known)
    if (equals_nocase(name, k.name)) return k.kind;
  return mechanism::unknown;
}

struct dual_cidr {
  std::string_view rest;  // what comes before the CIDR lengths
  std::optional<std::string_view> ip4, ip6;  // their digits
};

// dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ] at the end
// of an a or mx term (§5.3, §5.4). A domain-spec never ends in "/" and
// digits (its domain-end is a toplabel or a macro), so whatever looks like a
// CIDR length there is one; "/" with no digits is taken too, to be refused.
dual_cidr split_dual_cidr(std::string_view argument) {
  dual_cidr cidr{argument, std::nullopt, std::nullopt};
  const auto digits_start = [](std::string_view s) {
    auto i = s.size();
    while (i > 0 && is_digit(s[i - 1])) --i;
    return i;
  };
  auto start = digits_start(cidr.rest);
  if (start >= 2 && cidr.rest[start - 1] == '/' && cidr.rest[start - 2] == '/') {
    cidr.ip6 = cidr.rest.substr(start);
    cidr.rest = cidr.rest.substr(0, start - 2);
    start = digits_start(cidr.rest);
  }
  if (start >= 1 && cidr.rest[start - 1] == '/') {
    cidr.ip4 = cidr.rest.substr(start);
    cidr.rest = cidr.rest.substr(0, start - 1);
  }
  return cidr;
}

std::optional<std::string> mechanism_error(const term_parts& term) {
  const auto argument = term.argument;
  const auto kind = mechanism_named(term.name);
  switch (kind) {
    case mechanism::all:  // §5.1: all = "all"
      if (!argument.empty()) return "all takes no argument";
      return std::nullopt;
    case mechanism::include:  // §5.2, §5.7: "include" / "exists" ":" domain-spec
    case mechanism::exists:
      if (argument.empty() || argument[0] != ':')
        return std::string(kind == mechanism::include ? "include" : "exists") + " needs :<domain>";
      return domain_spec_error(argument.substr(1));
    case mechanism::ptr:  // §5.5: ptr = "ptr" [ ":" domain-spec ]
      if (argument.empty()) return std::nullopt;
      if (argument[0] != ':') return "ptr takes no CIDR length";
      return domain_spec_error(argument.substr(1));
    case mechanism::a:  // §5.3, §5.4: [ ":" domain-spec ] [ dual-cidr-length ]
    case mechanism::mx: {
      const auto cidr = split_dual_cidr(argument);
      if (cidr.ip4)
        if (auto error = cidr_length_error(*cidr.ip4, max_ip4_cidr)) return error;
      if (cidr.ip6)
        if (auto error = cidr_length_error(*cidr.ip6, max_ip6_cidr)) return error;
      if (cidr.rest.empty()) return std::nullopt;
      if (cidr.rest[0] != ':') return "bad CIDR length (IPv4 /N, IPv6 //N)";
      return domain_spec_error(cidr.rest.substr(1));
    }
    case mechanism::ip4:  // §5.6: ":" ip4-network [ ip4-cidr-length ]
    case mechanism::ip6: {
      const bool v4 = kind == mechanism::ip4;
      if (argument.empty() || argument[0] != ':') return v4 ? "ip4 needs :<address>" : "ip6 needs :<address>";
      const auto network = argument.substr(1);
      const auto slash = network.find('/');
      const auto address = network.substr(0, slash);
      if (v4 ? !is_ip4_network(address) : !is_ip6_network(address))
        return v4 ? "bad IPv4 address" : "bad IPv6 address";
      if (slash == std::string_view::npos) return std::nullopt;
      return cidr_length_error(network.substr(slash + 1), v4 ? max_ip4_cidr : max_ip6_cidr);
    }
    case mechanism::unknown:
      break;
  }
  // §4.6.1, §5: a term without "=" is one of §5's eight mechanisms; any
  // other is a syntax error, and §4.6 makes every syntax error a permerror.
  if (term.name.empty()) return "missing mechanism name";
  if (equals_nocase(term.name, "redirect") || equals_nocase(term.name, "exp"))
    return std::string(term.name) + " is a modifier: " + std::string(term.name) + "=<domain>";
  const auto bare = std::string(term.name) + std::string(term.argument);
  const auto address = std::string_view(bare).substr(0, bare.find('/'));
  if (is_ip4_network(address)) return "an address needs ip4:";
  if (is_ip6_network(address)) return "an address needs ip6:";
  return "unknown mechanism";
}

struct modifiers_seen {
  bool redirect = false;
  bool exp = false;
};

std::optional<std::string> modifier_error(const term_parts& term, modifiers_seen& seen) {
  if (!term.qualifier.empty()) return "a modifier takes no qualifier";
  if (term.name.empty() || !is_alpha(term.name[0])) return "modifier name must start with a letter";
  const bool redirect = equals_nocase(term.name, "redirect");
  if (redirect || equals_nocase(term.name, "exp")) {
    // §6: "These two modifiers MUST NOT appear in a record more than once each."
    bool& once = redirect ? seen.redirect : seen.exp;
    if (once) return std::string(redirect ? "redirect" : "exp") + " appears twice";
    once = true;
    // §6.1, §6.2: "=" domain-spec. An empty exp= too: the erratum to
    // §6.2 settled it as a permerror (the suite's exp-empty-domain).
    return domain_spec_error(term.argument);
  }
  // §6: unknown-modifier = name "=" macro-string; ignored, but held to
  // the grammar all the same.
  return scan_macro_string(term.argument).error;
}

std::optional<std::string> term_error(std::string_view term, modifiers_seen& seen) {
  for (const char c : term) {
    if (is_visible(c)) continue;
    // §4.6.1: terms are separated by SP alone (no tab, no CR or LF);
    // §3.1: a record is US-ASCII; §12: inside a term, visible ASCII only.
    char why[48];
    std::snprintf(why, sizeof why, "%s 0x%02x",
                  static_cast<unsigned char>(c) >= 0x80 ? "non-ASCII byte" : "control character",
                  static_cast<unsigned char>(c));
    return std::string(why);
  }
  const auto parts = split_term(term);
  return parts.modifier ? modifier_error(parts, seen) : mechanism_error(parts);
}

// Calls visit(separator, term) for every term after the version, and
// returns the spaces after the last one.
template <typename Visit>
std::string_view for_each_term(std::string_view record, Visit&& visit) {
  std::size_t i = spf_version.size();
  while (i < record.size()) {
    const auto start = record.find_first_not_of(' ', i);
    if (start == std::string_view::npos) break;
    const auto end = std::min(record.find(' ', start), record.size());
    if (!visit(record.substr(i, start - i), record.substr(start, end - start))) return {};
    i = end;
  }
  return record.substr(std::min(i, record.size()));
}

// A macro's DIGIT and "R" transformers as libspf2 takes them (header).
std::string macro_for_libspf2(std::string_view body) {
  if (body.empty()) return {};
  std::string out(body.substr(0, 1));
  std::size_t i = 1;
  while (i < body.size() && is_digit(body[i])) ++i;
  const auto digits = body.substr(1, i - 1);
  const auto significant = digits.substr(std::min(digits.find_first_not_of('0'), digits.size()));
  const auto most = std::to_string(libspf2_max_macro_parts);
  const bool all_labels = significant.size() > most.size() ||
                          (significant.size() == most.size() && significant >= std::string_view(most));
  if (!all_labels) out += digits;
  if (i < body.size() && body[i] == 'R') {
    out += 'r';
    ++i;
  }
  out += body.substr(i);
  return out;
}

// `s` with the body of each of its macros ("%{...}") rewritten by `body`.
template <typename Rewrite>
std::string with_macros(std::string_view s, Rewrite&& body) {
  std::string out;
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '%' && i + 1 < s.size() && s[i + 1] == '{') {
      const auto close = s.find('}', i + 2);
      if (close == std::string_view::npos) break;
      out += "%{";
      out += body(s.substr(i + 2, close - i - 2));
      out += '}';
      i = close + 1;
    } else {
      // "%%", "%_" and "%-" go together, so that their second character is
      // never taken for the start of a macro.
      const std::size_t n = s[i] == '%' && i + 1 < s.size() ? 2 : 1;
      out += s.substr(i, n);
      i += n;
    }
  }
  out += s.substr(std::min(i, s.size()));
  return out;
}

std::string macros_for_libspf2(std::string_view s) { return with_macros(s, macro_for_libspf2); }

// One term as libspf2 should see it; empty to drop it.
std::string term_for_libspf2(std::string_view term) {
  const auto parts = split_term(term);
  if (parts.modifier) {
    const bool known = equals_nocase(parts.name, "redirect") || equals_nocase(parts.name, "exp");
    return known ? macros_for_libspf2(term) : std::string();  // §6: unknown modifiers are ignored
  }
  const auto kind = mechanism_named(parts.name);
  if (kind == mechanism::ip4 || kind == mechanism::ip6) {
    const auto slash = parts.argument.find('/');
    if (slash != std::string_view::npos && parts.argument.substr(slash + 1) == "0") {
      const auto& halves = kind == mechanism::ip4 ? ip4_halves : ip6_halves;
      return std::string(parts.qualifier) + std::string(halves[0]) + ' ' + std::string(parts.qualifier) +
             std::string(halves[1]);
    }
    return std::string(term);
  }
  return macros_for_libspf2(term);
}

}  // namespace

std::optional<std::string> spf_record_error(std::string_view record) {
  // §4.5: "v=spf1" (case-insensitive, §12) then a space or the end.
  if (!smtp::starts_with_nocase(record, spf_version) ||
      (record.size() > spf_version.size() && record[spf_version.size()] != ' '))
    return printable(record.substr(0, record.find(' '))) + ": not \"v=spf1\" followed by a space";
  std::optional<std::string> error;
  modifiers_seen seen;
  for_each_term(record, [&](std::string_view, std::string_view term) {
    if (auto why = term_error(term, seen)) error = printable(term) + ": " + *why;
    return !error;
  });
  return error;
}

std::string spf_macros_for_values(std::string_view text, const spf_macro_value& value_of) {
  return with_macros(text, [&](std::string_view body) -> std::string {
    if (body.empty()) return {};
    std::size_t i = 1;
    while (i < body.size() && is_digit(body[i])) ++i;
    const auto digits = body.substr(1, i - 1);
    const auto value = value_of(static_cast<char>(std::tolower(static_cast<unsigned char>(body[0]))));
    if (digits.empty() || !value) return std::string(body);
    // §7.3: the value split at the delimiters (after an "r", "." by default).
    const std::size_t after_r = i < body.size() && (body[i] == 'r' || body[i] == 'R') ? i + 1 : i;
    const auto delimiters = after_r < body.size() ? body.substr(after_r) : std::string_view(".");
    const auto parts = 1 + static_cast<std::size_t>(std::count_if(value->begin(), value->end(), [&](char c) {
                         return delimiters.find(c) != std::string_view::npos;
                       }));
    const auto significant = digits.substr(std::min(digits.find_first_not_of('0'), digits.size()));
    const bool all = significant.size() > 3 || (!significant.empty() && std::stoul(std::string(significant)) >= parts);
    if (!all) return std::string(body);
    std::string kept(body.substr(0, 1));  // (appended, not +: GCC 12's -Wrestrict misfires on the sum)
    kept.append(body.substr(i));
    return kept;
  });
}

std::string any_address_marker() {
  // 64 bits from the system's CSPRNG: never guessed within one check. getrandom(2)
  // itself, not std::random_device: constructing one costs about 30 us here (it
  // probes the CPU's generator), a tenth of a whole message's CPU with the checks.
  std::uint64_t secret = 0;
  if (::getrandom(&secret, sizeof secret, 0) != static_cast<ssize_t>(sizeof secret)) {
    std::random_device random;  // (only if the system call failed: never seen on Linux 3.17+)
    secret = (std::uint64_t{random()} << 32) ^ random();
  }
  char marker[64];
  std::snprintf(marker, sizeof marker, ".any-address-%016llx.portcullis.invalid",
                static_cast<unsigned long long>(secret));
  return marker;
}

std::string spf_record_for_client(std::string_view record, const boost::asio::ip::address& client,
                                  std::string_view marker) {
  const bool ipv6 = !client.is_v4();
  std::string out(record.substr(0, spf_version.size()));
  std::string redirect;
  bool has_all = false;
  for_each_term(record, [&](std::string_view, std::string_view term) {
    const auto parts = split_term(term);
    if (parts.modifier && equals_nocase(parts.name, "redirect")) {
      redirect = term;  // placed after the mechanisms, below
      return true;
    }
    const auto kind = parts.modifier ? mechanism::unknown : mechanism_named(parts.name);
    has_all = has_all || kind == mechanism::all;
    const bool ip_term = kind == mechanism::ip4 || kind == mechanism::ip6;
    if (ip_term && !network_holds(parts.argument, kind == mechanism::ip4, client)) return true;
    out += ' ';
    if (kind != mechanism::a && kind != mechanism::mx) {
      out += term;
      return true;
    }
    // Only the client's family's CIDR length counts (§5.3, §5.4).
    const auto cidr = split_dual_cidr(parts.argument);
    const auto length = ipv6 ? cidr.ip6 : cidr.ip4;
    out += parts.qualifier;
    out += parts.name;
    const bool any_address = length && length->find_first_not_of('0') == std::string_view::npos;
    if (any_address) {
      // libspf2 takes a length of 0 for "none" (/32, /128): the name is marked instead.
      out += ':';
      out += cidr.rest.empty() ? std::string_view("%{d}") : cidr.rest.substr(1);
      out += marker;
      return true;
    }
    out += cidr.rest;
    if (length) {
      out += ipv6 ? "//" : "/";
      out += *length;
    }
    return true;
  });
  // §6.1: redirect applies once no mechanism matched, and not at all with an "all".
  if (!redirect.empty() && !has_all) {
    out += ' ';
    out += redirect;
  }
  return out;
}

spf_record_shape spf_shape_of(std::string_view record) {
  spf_record_shape shape;
  for_each_term(record, [&](std::string_view, std::string_view term) {
    const auto parts = split_term(term);
    ++(parts.modifier && !equals_nocase(parts.name, "redirect") ? shape.modifiers : shape.mechanisms);
    if (term.find('%') != std::string_view::npos) shape.longest_macro_term = std::max(shape.longest_macro_term, term.size());
    return true;
  });
  return shape;
}

std::string spf_record_for_libspf2(std::string_view record) {
  std::string out(record.substr(0, spf_version.size()));
  const auto trailing = for_each_term(record, [&](std::string_view separator, std::string_view term) {
    const auto rewritten = term_for_libspf2(term);
    if (!rewritten.empty()) {
      out += separator;
      out += rewritten;
    }
    return true;
  });
  out += trailing;
  return out;
}

}  // namespace portcullis::checks
