// SPF records held to RFC 7208's grammar (§4.5, §4.6, §5, §6, §7, §12)
// before libspf2 sees them: libspf2 compiles many records the RFC makes a
// permerror, and refuses a few the RFC allows. Pure: no DNS, no libspf2.
//
// Syntax only. What the RFC decides while evaluating is left to the
// evaluator: the limit of 10 DNS-querying terms and of 2 void lookups
// (§4.6.4), a missing or duplicated record (§4.5), a redirect or include
// target without a record (§5.2, §6.1), labels too long once expanded
// (§4.3, §4.8: the RFC leaves the result open).
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <boost/asio/ip/address.hpp>

namespace portcullis::checks {

// Why `record` (one TXT record's strings joined, starting "v=spf1") is a
// permerror under RFC 7208, or nullopt when it is valid. The message names
// the first bad term, e.g. "ip4:1.2.3.256: bad IPv4 address"; bytes outside
// visible ASCII appear as \xHH and a long term is cut (spf_error_term_chars),
// so the message is fit for a log line or a reply text.
std::optional<std::string> spf_record_error(std::string_view record);

// The record as libspf2 should see it: the same text, except for valid
// constructs libspf2 refuses, rewritten into an equivalent form it accepts:
//   - ip4:N/0 -> ip4:0.0.0.0/1 ip4:128.0.0.0/1, ip6:N/0 -> ip6:::/1
//     ip6:8000::/1, each with the original qualifier (libspf2 keeps a CIDR
//     length of 0 to mean "none");
//   - unknown modifiers are dropped: RFC 7208 §6 has them ignored, and
//     libspf2 refuses some valid ones ("moo.cow=", macros it rejects);
//   - in macros (§7.1), an upper-case "R" transformer becomes "r" and a
//     DIGIT transformer of libspf2_max_macro_parts or more goes (all the
//     labels, §7.3).
// What has no equivalent is left as it is: a /0 (or //0) on a or mx (no
// libspf2 term matches "any address of that family": spf_record_for_client
// marks those for the checker's DNS layer), the "," and "/" macro
// delimiters and a literal run of more than 255 octets in a domain-spec
// (libspf2 refuses them). Only called on records for which
// spf_record_error returned nullopt.
std::string spf_record_for_libspf2(std::string_view record);

// What marks a name whose every address matches: an a or mx term whose
// CIDR length for the client's family is 0 (§5.3, §5.4). libspf2 reads a
// length of 0 as "none" (/32, /128) and has no term for it, so the name
// gets a marker suffix instead, and the checker's DNS layer answers a
// lookup of a marked name with the client's own address when the name has
// any (and a marked MX lookup with marked host names). The marker is a
// secret of the one check (any_address_marker): a name the client chose
// (its HELO through %{h}, its sender through %{l}) or a record's own text
// could end in a fixed one and pass any client. ".invalid" (RFC 6761)
// never names anything real.
std::string any_address_marker();

// A record from spf_record_for_libspf2 made ready for one client (an
// IPv4-mapped IPv6 address already made IPv4): an ip4 or ip6 term that
// does not hold the client goes (it queries nothing and cannot match, so the
// result is the same, and a long record of addresses stays within the 511
// bytes libspf2 compiles a record into); an a or mx term keeps only the
// client's family's CIDR length, and one of 0 marks the name (`marker`,
// from any_address_marker; "%{d}" when there is none); redirect= goes after
// the mechanisms, where §6.1 applies it (libspf2 applies it where it
// stands), or goes when there is an "all" (§6.1: then it is ignored).
std::string spf_record_for_client(std::string_view libspf2_record, const boost::asio::ip::address& client,
                                  std::string_view marker);

// The longest macro-string libspf2 is given to compile (a term of a record,
// a word of an explanation) when it holds a macro. Debian 12's libspf2
// (1.2.10) writes past its buffer when a string literal starts within 4
// bytes of a term's 511 bytes of compiled data (CVE-2023-42118, fixed
// upstream after that release): an explanation word of 127 "%{d}" and a
// letter smashed the stack; a record term with a long literal after them
// too. Compiled, a macro-string takes at most 2.4 bytes a character ("x%{d}"
// repeated, measured), so 200 characters stay under 480 bytes. Real terms
// with macros are a few dozen characters.
inline constexpr std::size_t libspf2_max_macro_string = 200;

// A valid record as libspf2 is about to compile it, measured in one walk:
// its mechanisms and modifiers as libspf2 counts them once compiled
// (redirect= among the mechanisms: fewer means it dropped some), and the
// length of its longest term that holds a macro ('%'; 0 for none), which
// must stay within libspf2_max_macro_string.
struct spf_record_shape {
  std::size_t mechanisms = 0;
  std::size_t modifiers = 0;
  std::size_t longest_macro_term = 0;
  bool operator==(const spf_record_shape&) const = default;
};
spf_record_shape spf_shape_of(std::string_view record);

// What a macro letter (lower case) stands for in one check (RFC 7208 §7.3),
// where it is known before libspf2 expands it; nullopt where not ("p").
using spf_macro_value = std::function<std::optional<std::string>(char letter)>;

// `text` (a record as spf_record_for_libspf2 made it, or an explanation)
// with the DIGIT transformer of each macro dropped where it keeps as many
// labels as the macro's value has, or more: all of them either way (§7.3),
// and libspf2 would cut the value's first character instead (see
// libspf2_max_macro_parts). A DIGIT of 0 is left for libspf2 to refuse.
std::string spf_macros_for_values(std::string_view text, const spf_macro_value& value_of);

// The longest part of a bad term quoted in an error message.
inline constexpr std::size_t spf_error_term_chars = 64;

// libspf2 refuses a macro's DIGIT transformer above 128, and given one of
// as many labels as the value has or more it drops the value's first
// character (spf_expand.c, "truncate, from the right hand side": %{d2} of
// "example.test" is "xample.test"). RFC 7208 §7.3 asks for at least 127 and
// sets no maximum; a domain name has at most 127 labels (253 octets), and a
// longer name is cut to that (§4.8), so from 128 on a DIGIT means "all".
inline constexpr int libspf2_max_macro_parts = 128;

}  // namespace portcullis::checks
