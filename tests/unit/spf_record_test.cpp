// Table tests for the RFC 7208 record check (§4.5, §4.6, §5, §6, §7, §12)
// and for the record libspf2 is given. Rows marked "suite:" are records of
// the openspf RFC 7208 test suite (2014.04), under the test's name.
#include "checks/spf_record.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace portcullis::checks {
namespace {

using namespace std::literals;

// want: "" for a valid record, else the whole error message.
struct record_case {
  std::string record;
  std::string want;
};

void expect_cases(const std::vector<record_case>& cases) {
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "record: \"" << c.record << "\"");
    const auto error = spf_record_error(c.record);
    if (c.want.empty()) {
      EXPECT_EQ(error, std::nullopt);
    } else {
      ASSERT_TRUE(error.has_value());
      EXPECT_EQ(*error, c.want);
    }
  }
}

std::string repeat(std::string_view s, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += s;
  return out;
}

// §4.5: the version, then SP or the end; §4.6.1: terms separated by SP only.
TEST(SpfRecordVersion, Table) {
  expect_cases({
      {"v=spf1", ""},
      {"v=spf1 ", ""},
      {"V=SpF1 -all", ""},                // suite: case-insensitive
      {"v=spf1 a  -all", ""},             // suite: two-spaces
      {"v=spf1 a -all ", ""},             // suite: trailing-space
      {"v=spf1    ", ""},
      {"v=spf10", "v=spf10: not \"v=spf1\" followed by a space"},    // suite: nospace2
      {"v=spf1mx", "v=spf1mx: not \"v=spf1\" followed by a space"},  // suite: nospace1
      {"v=spf1\t-all", "v=spf1\\x09-all: not \"v=spf1\" followed by a space"},
      {"v=spf2 -all", "v=spf2: not \"v=spf1\" followed by a space"},
      {"spf1 -all", "spf1: not \"v=spf1\" followed by a space"},
      {"", ": not \"v=spf1\" followed by a space"},
      {" v=spf1 -all", ": not \"v=spf1\" followed by a space"},
  });
}

// §12: every character of a term is visible US-ASCII; SP alone separates.
TEST(SpfRecordCharacters, Table) {
  expect_cases({
      {"v=spf1 a:\xEF\xBB\xBFgarbage.example.net -all",  // suite: non-ascii-policy
       "a:\\xef\\xbb\\xbfgarbage.example.net: non-ASCII byte 0xef"},
      {"v=spf1 \x80" "a:example.net -all", "\\x80a:example.net: non-ASCII byte 0x80"},  // suite: non-ascii-mech
      {"v=spf1 a:example.net \x96" "all", "\\x96all: non-ASCII byte 0x96"},             // suite: non-ascii-result
      {"v=spf1 a:ctrl.example.com\rptr -all",                                           // suite: control-char-policy
       "a:ctrl.example.com\\x0dptr: control character 0x0d"},
      {"v=spf1 ip4:192.0.2.5\n include:spf.protection.outlook.com ~all",  // suite: badip4
       "ip4:192.0.2.5\\x0a: control character 0x0a"},
      {"v=spf1 a:foo.example.com\0"s, "a:foo.example.com\\x00: control character 0x00"},  // suite: a-null
      {"v=spf1 a\t-all", "a\\x09-all: control character 0x09"},
      {"v=spf1 -all\x7f", "-all\\x7f: control character 0x7f"},
      {"v=spf1 -all\r\n", "-all\\x0d\\x0a: control character 0x0d"},
  });
}

// §4.6.1, §5: the eight mechanisms and their qualifiers; nothing else.
TEST(SpfRecordMechanisms, Table) {
  expect_cases({
      {"v=spf1 all", ""},
      {"v=spf1 +all", ""},
      {"v=spf1 ?all", ""},   // suite: all-neutral
      {"v=spf1 ~all", ""},
      {"v=spf1 all -all", ""},  // suite: all-double
      {"v=spf1 ALL", ""},
      {"v=spf1 -all.", "-all.: unknown mechanism"},             // suite: all-dot
      {"v=spf1 -all:foobar", "-all:foobar: all takes no argument"},  // suite: all-arg
      {"v=spf1 -all/8", "-all/8: all takes no argument"},       // suite: all-cidr
      {"v=spf1 ip4:1.2.3.4 -all moo", "moo: unknown mechanism"},  // suite: detect-errors-anywhere
      {"v=spf1 moo.cow/far_out=man:dog/cat ip4:1.2.3.4 -all",     // suite: modifier-charset-bad1
       "moo.cow/far_out=man:dog/cat: unknown mechanism"},
      {"v=spf1 moo.cow:far_out=man:dog/cat ip4:1.2.3.4 -all",     // suite: modifier-charset-bad2
       "moo.cow:far_out=man:dog/cat: unknown mechanism"},
      {"v=spf1 ip4:1.2.3.4 redirect:t2.example.com",  // suite: redirect-is-modifier
       "redirect:t2.example.com: redirect is a modifier: redirect=<domain>"},
      {"v=spf1 exp:x.example.com", "exp:x.example.com: exp is a modifier: exp=<domain>"},
      {"v=spf1 !a", "!a: unknown mechanism"},  // not a qualifier (suite: nospftxttimeout's "!a")
      {"v=spf1 ++all", "++all: unknown mechanism"},
      {"v=spf1 -", "-: missing mechanism name"},
      {"v=spf1 /24", "/24: missing mechanism name"},
      {"v=spf1 :example.com", ":example.com: missing mechanism name"},
      {"v=spf1 192.0.2.1", "192.0.2.1: an address needs ip4:"},
      {"v=spf1 +192.0.2.0/24", "+192.0.2.0/24: an address needs ip4:"},
      {"v=spf1 2001:db8::1", "2001:db8::1: an address needs ip6:"},
      {"v=spf1 a, -all", "a,: unknown mechanism"},
      {"v=spf1 a,mx -all", "a,mx: unknown mechanism"},
      {"v=spf1 include", "include: include needs :<domain>"},
      {"v=spf1 include +all", "include: include needs :<domain>"},  // suite: include-syntax-error
      {"v=spf1 exists", "exists: exists needs :<domain>"},          // suite: exists-implicit
      {"v=spf1 include/24", "include/24: include needs :<domain>"},
      {"v=spf1 ptr", ""},
      {"v=spf1 ptr:example.com -all", ""},  // suite: ptr-match-target
      {"v=spf1 ptr:example.Com -all", ""},  // suite: ptr-case-change
      {"v=spf1 ptr/0 -all", "ptr/0: ptr takes no CIDR length"},  // suite: ptr-cidr
      {"v=spf1 ptr:", "ptr:: empty domain"},                      // suite: ptr-empty-domain
      {"v=spf1 ptr:example.com/24", "ptr:example.com/24: bad top-level label \"com/24\""},
  });
}

// §5.6: ip4 and ip6, the address and the CIDR length.
TEST(SpfRecordIpNetworks, Table) {
  expect_cases({
      {"v=spf1 ip4:1.1.1.1/0 -all", ""},    // suite: cidr4-0
      {"v=spf1 ip4:1.2.3.4/32 -all", ""},   // suite: cidr4-32
      {"v=spf1 ip4:0.0.0.0", ""},
      {"v=spf1 ip4:255.255.255.255/1", ""},
      {"v=spf1 IP4:192.0.2.0/24", ""},
      {"v=spf1 -ip4:1.2.3.4 ip6:::FFFF:1.2.3.4", ""},  // suite: ip4-mapped-ip6
      {"v=spf1 ip4:1.2.3.4/33 -all", "ip4:1.2.3.4/33: CIDR length above 32"},                 // suite: cidr4-33
      {"v=spf1 ip4:1.2.3.4/032 -all", "ip4:1.2.3.4/032: CIDR length with a leading zero"},  // suite: cidr4-032
      {"v=spf1 ip4:1.2.3.4/00", "ip4:1.2.3.4/00: CIDR length with a leading zero"},
      {"v=spf1 ip4:1.2.3.4/1000", "ip4:1.2.3.4/1000: CIDR length above 32"},
      {"v=spf1 ip4:1.2.3.4/", "ip4:1.2.3.4/: missing CIDR length"},
      {"v=spf1 ip4:1.2.3.4/x", "ip4:1.2.3.4/x: bad CIDR length"},
      {"v=spf1 ip4:1.2.3.4/-1", "ip4:1.2.3.4/-1: bad CIDR length"},
      {"v=spf1 ip4", "ip4: ip4 needs :<address>"},                        // suite: bare-ip4
      {"v=spf1 ip4:", "ip4:: bad IPv4 address"},
      {"v=spf1 ip4/24", "ip4/24: ip4 needs :<address>"},
      {"v=spf1 ip4:1.2.3.4//32", "ip4:1.2.3.4//32: bad CIDR length"},     // suite: ip4-dual-cidr
      {"v=spf1 ip4:1.2.3.4:8080", "ip4:1.2.3.4:8080: bad IPv4 address"},  // suite: bad-ip4-port
      {"v=spf1 ip4:1.2.3", "ip4:1.2.3: bad IPv4 address"},                // suite: bad-ip4-short
      {"v=spf1 ip4:1.2.3.256", "ip4:1.2.3.256: bad IPv4 address"},
      {"v=spf1 ip4:1.2.3.4.5", "ip4:1.2.3.4.5: bad IPv4 address"},
      {"v=spf1 ip4:01.2.3.4", "ip4:01.2.3.4: bad IPv4 address"},
      {"v=spf1 ip4:1.2.3.0004", "ip4:1.2.3.0004: bad IPv4 address"},
      {"v=spf1 ip4:1.2..4", "ip4:1.2..4: bad IPv4 address"},
      {"v=spf1 ip4:1.2.3.4.", "ip4:1.2.3.4.: bad IPv4 address"},
      {"v=spf1 ip4: 1.2.3.4", "ip4:: bad IPv4 address"},
      {"v=spf1 ip4:x1.2.3.4", "ip4:x1.2.3.4: bad IPv4 address"},
      {"v=spf1 ip4:::1", "ip4:::1: bad IPv4 address"},
      {"v=spf1 ip4:example.com", "ip4:example.com: bad IPv4 address"},
      {"v=spf1 ip6:::1.1.1.1/0", ""},           // suite: cidr6-0
      {"v=spf1 ip6:Cafe:Babe:8000::/33", ""},   // suite: cidr6-33
      {"v=spf1 ip6:2001:db8::/32 ip6:::1/128 ip6:::", ""},
      {"v=spf1 ip6:1:2:3:4:5:6:7:8", ""},
      {"v=spf1 ip6:1:2:3:4:5:6:1.2.3.4", ""},
      {"v=spf1 -all ip6", "ip6: ip6 needs :<address>"},                          // suite: bare-ip6
      {"v=spf1 ip6:::1.1.1.1/129", "ip6:::1.1.1.1/129: CIDR length above 128"},  // suite: cidr6-129
      {"v=spf1 ip6:::1.1.1.1//33", "ip6:::1.1.1.1//33: bad CIDR length"},        // suite: cidr6-bad
      {"v=spf1 ip6::CAFE::BABE", "ip6::CAFE::BABE: bad IPv6 address"},           // suite: ip6-bad1
      {"v=spf1 ip6:::1/0128", "ip6:::1/0128: CIDR length with a leading zero"},
      {"v=spf1 ip6:1::2::3", "ip6:1::2::3: bad IPv6 address"},
      {"v=spf1 ip6:12345::", "ip6:12345::: bad IPv6 address"},
      {"v=spf1 ip6:1:2:3:4:5:6:7:8:9", "ip6:1:2:3:4:5:6:7:8:9: bad IPv6 address"},
      {"v=spf1 ip6:::1.2.3.04", "ip6:::1.2.3.04: bad IPv6 address"},
      {"v=spf1 ip6:fe80::1%eth0", "ip6:fe80::1%eth0: bad IPv6 address"},
      {"v=spf1 ip6:1.2.3.4", "ip6:1.2.3.4: bad IPv6 address"},
      {"v=spf1 ip6:[::1]", "ip6:[::1]: bad IPv6 address"},
  });
}

// §5.3, §5.4: a and mx, [":" domain-spec] [dual-cidr-length].
TEST(SpfRecordDualCidr, Table) {
  expect_cases({
      {"v=spf1 a mx", ""},
      {"v=spf1 a/0 -all", ""},       // suite: a-cidr4-0
      {"v=spf1 a//0 -all", ""},      // suite: a-cidr6-0-ip6
      {"v=spf1 a//33 -all", ""},     // suite: a-cidr6
      {"v=spf1 a/24//64 -all", ""},  // suite: a-dual-cidr-ip4-match
      {"v=spf1 a/24 -all", ""},
      {"v=spf1 a:foo.example.com/24", ""},  // suite: a-multi-ip1
      {"v=spf1 mx:foo.example.com/24", ""},
      {"v=spf1 mx/0 -all", ""},
      {"v=spf1 mx//0 -all", ""},
      {"v=spf1 ?mx:%{d}/27//96", ""},
      {"v=spf1 a:foo:bar/baz.example.com", ""},   // suite: a-colon-domain
      {"v=spf1 mx:foo:bar/baz.example.com", ""},  // suite: mx-colon-domain
      {"v=spf1 a/33 -all", "a/33: CIDR length above 32"},                 // suite: a-bad-cidr4
      {"v=spf1 a//129 -all", "a//129: CIDR length above 128"},            // suite: a-bad-cidr6
      {"v=spf1 a/24/64 -all", "a/24/64: CIDR length above 32"},           // suite: a-dual-cidr-ip4-err
      {"v=spf1 mx/33 -all", "mx/33: CIDR length above 32"},               // suite: mx-bad-cidr4
      {"v=spf1 mx//129 -all", "mx//129: CIDR length above 128"},          // suite: mx-bad-cidr6
      {"v=spf1 a/24/32", "a/24/32: bad CIDR length (IPv4 /N, IPv6 //N)"},
      {"v=spf1 a/024", "a/024: CIDR length with a leading zero"},
      {"v=spf1 a//064", "a//064: CIDR length with a leading zero"},
      {"v=spf1 a/", "a/: missing CIDR length"},
      {"v=spf1 a//", "a//: missing CIDR length"},
      {"v=spf1 a:example.com/", "a:example.com/: missing CIDR length"},
      {"v=spf1 a:example.com/24/", "a:example.com/24/: missing CIDR length"},
      {"v=spf1 a:example.com///64", "a:example.com///64: missing CIDR length"},
      {"v=spf1 a:example.com//24/", "a:example.com//24/: missing CIDR length"},
      {"v=spf1 mx/24//64/", "mx/24//64/: missing CIDR length"},
      {"v=spf1 a/x", "a/x: bad CIDR length (IPv4 /N, IPv6 //N)"},
      {"v=spf1 a:", "a:: empty domain"},     // suite: a-empty-domain
      {"v=spf1 mx: -all", "mx:: empty domain"},  // suite: mx-empty-domain
      {"v=spf1 a:/24", "a:/24: empty domain"},
  });
}

// §7.1: domain-spec = macro-string domain-end.
TEST(SpfRecordDomainSpec, Table) {
  expect_cases({
      {"v=spf1 a:foo.example.xn--zckzah -all", ""},  // suite: a-dash-in-toplabel
      {"v=spf1 include:o.spf.example.com. ~all", ""},
      {"v=spf1 a:123-456.x-1", ""},
      {"v=spf1 a:example.c0m", ""},
      {"v=spf1 a:.com", ""},  // macro-string may be empty
      {"v=spf1 a:x{}!#$&'*+,;<=>?@[]^_`|~\"().com", ""},
      {"v=spf1 a:mail.example...com -all", ""},  // suite: invalid-domain-empty-label ([fail, permerror])
      {"v=spf1 a:" + repeat("a", 64) + ".example.com", ""},  // suite: invalid-domain-long ([fail, permerror])
      // Longer than a DNS name: cut from the left once expanded (§7.3).
      {"v=spf1 exists:" + repeat("abcdefghij.", 30) + "com", ""},
      // suite: invalid-domain, a-only-toplabel, a-only-toplabel-trailing-dot
      {"v=spf1 a:foo-bar -all", "a:foo-bar: domain must end in .<top-level label> or a macro"},
      {"v=spf1 a:museum", "a:museum: domain must end in .<top-level label> or a macro"},
      {"v=spf1 a:museum.", "a:museum.: domain must end in .<top-level label> or a macro"},
      // suite: a-numeric
      {"v=spf1 a:111.222.33.44", "a:111.222.33.44: an IP address is not a domain (use ip4: or ip6:)"},
      {"v=spf1 a:192.0.2.1.", "a:192.0.2.1.: an IP address is not a domain (use ip4: or ip6:)"},
      {"v=spf1 mx:::1", "mx:::1: an IP address is not a domain (use ip4: or ip6:)"},
      {"v=spf1 a:abc.123", "a:abc.123: all-numeric top-level label \"123\""},    // suite: a-numeric-toplabel
      {"v=spf1 mx:abc.123", "mx:abc.123: all-numeric top-level label \"123\""},  // suite: mx-numeric-top-label
      {"v=spf1 a:example.com:8080", "a:example.com:8080: bad top-level label \"com:8080\""},    // suite: a-bad-domain
      {"v=spf1 mx:example.com:8080", "mx:example.com:8080: bad top-level label \"com:8080\""},  // suite: mx-bad-domain
      {"v=spf1 a:example.-com", "a:example.-com: bad top-level label \"-com\""},    // suite: a-bad-toplabel
      {"v=spf1 mx:example.-com", "mx:example.-com: bad top-level label \"-com\""},  // suite: mx-bad-toplab
      {"v=spf1 a:example.com-", "a:example.com-: bad top-level label \"com-\""},
      {"v=spf1 a:example.c_m", "a:example.c_m: bad top-level label \"c_m\""},
      {"v=spf1 a:example.com..", "a:example.com..: empty top-level label"},
      {"v=spf1 a:.", "a:.: domain must end in .<top-level label> or a macro"},
      {"v=spf1 include:ip5.example.com/24 -all",  // suite: include-cidr
       "include:ip5.example.com/24: bad top-level label \"com/24\""},
      {"v=spf1 exists:mail.example.com/24",  // suite: exists-cidr
       "exists:mail.example.com/24: bad top-level label \"com/24\""},
      {"v=spf1 include: -all", "include:: empty domain"},  // suite: include-empty-domain
      {"v=spf1 exists:", "exists:: empty domain"},         // suite: exists-empty-domain
      {"v=spf1 a:example." + repeat("c", 79) + "_",
       "a:example." + repeat("c", 54) + "...: bad top-level label \"" + repeat("c", 64) + "...\""},
  });
}

// §7.1, §7.2, §7.3: macros, in domain-specs and in modifiers.
TEST(SpfRecordMacros, Table) {
  expect_cases({
      {"v=spf1 a:%{d}", ""},
      {"v=spf1 a:%{H}.bar -all", ""},  // suite: invalid-domain-long-via-macro
      {"v=spf1 a:%{H} -all", ""},       // suite: hello-macro
      {"v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all", ""},  // suite: macro-mania-in-domain
      {"v=spf1 exists:%{i}.%{l2r-}.user.%{d2}", ""},    // suite: macro-reverse-split-on-dash
      {"v=spf1 exists:%{l2r+-}.user.%{d2}", ""},        // suite: macro-multiple-delimiters
      {"v=spf1 exists:%{p}.should.example.com ~exists:%{p}.ok.example.com", ""},  // suite: p-macro-multiple
      {"v=spf1 -include:_spfh.%{d2} ip4:1.2.3.0/24 -all", ""},                     // suite: require-valid-helo
      {"v=spf1 redirect=%{d}.d.spf.example.com.", ""},  // suite: trailing-dot-domain
      {"v=spf1 -all exp=%{ir}.example.com", ""},        // suite: exp-txt-macro-char
      {"v=spf1 -all exp=msg8.%{D2}", ""},               // suite: upper-macro
      {"v=spf1 exists:%{ir}.%{v}._spf.%{d2}", ""},
      {"v=spf1 exists:%{s}%{l}%{o}%{d}%{i}%{p}%{h}%{v}", ""},
      {"v=spf1 exists:%{S}%{L}%{O}%{D}%{I}%{P}%{H}%{V}", ""},
      {"v=spf1 exists:%{d127r.-+,/_=}", ""},
      {"v=spf1 exists:%{dR}.example.com", ""},
      {"v=spf1 exists:%{d01}.example.com", ""},
      {"v=spf1 exists:%{d999999999999999999999}.example.com", ""},  // §7.3 sets no maximum
      {"v=spf1 a:foo.%%", ""},  // "%%" is a macro-expand, so a domain-end
      {"v=spf1 a:foo.%_ a:foo.%-", ""},
      {"v=spf1 a:%{d}.c", ""},
      {"v=spf1 a:%{d}com", "a:%{d}com: domain must end in .<top-level label> or a macro"},
      {"v=spf1 a:%{d}.", "a:%{d}.: domain must end in .<top-level label> or a macro"},
      {"v=spf1 a:%{a}.example.com -all", "a:%{a}.example.com: unknown macro letter 'a'"},  // suite: undef-macro
      {"v=spf1 a:%{X}.example.com", "a:%{X}.example.com: unknown macro letter 'X'"},
      {"v=spf1 -all exp=%{r}.example.com",  // suite: exp-only-macro-char
       "exp=%{r}.example.com: macro letter 'r' is allowed only in exp text"},
      {"v=spf1 a:%{c}.example.com", "a:%{c}.example.com: macro letter 'c' is allowed only in exp text"},
      {"v=spf1 exists:%{T}.example.com", "exists:%{T}.example.com: macro letter 'T' is allowed only in exp text"},
      {"v=spf1 redirect=%{r}.example.com", "redirect=%{r}.example.com: macro letter 'r' is allowed only in exp text"},
      {"v=spf1 -exists:%(ir).sbl.example.com ?all",  // suite: invalid-macro-char
       "-exists:%(ir).sbl.example.com: '%' not followed by {, %, _ or -"},
      {"v=spf1 exists:foo%(ir).sbl.example.com ?all",  // suite: invalid-embedded-macro-char
       "exists:foo%(ir).sbl.example.com: '%' not followed by {, %, _ or -"},
      {"v=spf1 exists:foo%.sbl.example.com ?all",  // suite: invalid-trailing-macro-char
       "exists:foo%.sbl.example.com: '%' not followed by {, %, _ or -"},
      {"v=spf1 a:example.com%", "a:example.com%: '%' not followed by {, %, _ or -"},
      {"v=spf1 a:%{d", "a:%{d: unterminated macro"},
      {"v=spf1 a:%{d.example.com", "a:%{d.example.com: unterminated macro"},
      {"v=spf1 a:%{}.example.com", "a:%{}.example.com: empty macro %{}"},
      {"v=spf1 a:%{d0}.example.com", "a:%{d0}.example.com: macro %{d0} keeps no part"},
      {"v=spf1 a:%{d000r}.example.com", "a:%{d000r}.example.com: macro %{d000r} keeps no part"},
      {"v=spf1 a:%{d2rr}.example.com", "a:%{d2rr}.example.com: bad macro delimiter 'r'"},
      {"v=spf1 a:%{dr2}.example.com", "a:%{dr2}.example.com: bad macro delimiter '2'"},
      {"v=spf1 a:%{d*}.example.com", "a:%{d*}.example.com: bad macro delimiter '*'"},
      {"v=spf1 a:%{d%}.example.com", "a:%{d%}.example.com: bad macro delimiter '%'"},
      {"v=spf1 a:%{{d}}.example.com", "a:%{{d}}.example.com: unknown macro letter '{'"},
  });
}

// §6: redirect and exp at most once, each "=" domain-spec; unknown
// modifiers "=" macro-string, ignored but held to the grammar.
TEST(SpfRecordModifiers, Table) {
  expect_cases({
      {"v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all", ""},  // suite: modifier-charset-good
      {"v=spf1 redirect=t5.example.com ~all", ""},                  // suite: redirect-after-mechanisms1
      {"v=spf1 exp=exp1.example.com redirect=e2.example.com", ""},  // suite: redirect-cancels-exp
      {"v=spf1 default=pass", ""},                                  // suite: default-modifier-obsolete
      {"v=spf1 default=+", ""},                                     // suite: default-modifier-obsolete2
      {"v=spf1 Redirect=example.com", ""},
      {"v=spf1 EXP=explain.example.com -all", ""},
      {"v=spf1 foo=", ""},
      {"v=spf1 foo=bar=baz", ""},
      {"v=spf1 foo=%{l}%%%_%-", ""},
      {"v=spf1 foo=~!@#$&'()*+,-./:;<=>?@[\\]^_`{|}~", ""},
      {"v=spf1 ra=postmaster rp=100 rr=all", ""},  // RFC 6652's reporting modifiers
      {"v=spf1 a=b", ""},                  // a modifier named "a": unknown, ignored
      {"v=spf1 include=example.com", ""},  // likewise: §4.6.1 tells them apart by the "="
      {"v=spf1 x=1 x=2", ""},               // §6: unknown modifiers may repeat
      {"v=spf1 1up=foo", "1up=foo: modifier name must start with a letter"},  // suite: invalid-modifier
      {"v=spf1 =all", "=all: modifier name must start with a letter"},        // suite: empty-modifier-name
      {"v=spf1 _spf=x", "_spf=x: modifier name must start with a letter"},
      {"v=spf1 .x=y", ".x=y: modifier name must start with a letter"},
      {"v=spf1 -foo=bar", "-foo=bar: a modifier takes no qualifier"},
      {"v=spf1 +redirect=example.com", "+redirect=example.com: a modifier takes no qualifier"},
      {"v=spf1 -all foo=%abc", "foo=%abc: '%' not followed by {, %, _ or -"},  // suite: unknown-modifier-syntax
      {"v=spf1 foo=%{x}", "foo=%{x}: unknown macro letter 'x'"},
      {"v=spf1 foo=%{c}", "foo=%{c}: macro letter 'c' is allowed only in exp text"},
      {"v=spf1 foo=50%", "foo=50%: '%' not followed by {, %, _ or -"},
      {"v=spf1 exp= -all", "exp=: empty domain"},  // suite: exp-empty-domain
      {"v=spf1 exp=-all", "exp=-all: domain must end in .<top-level label> or a macro"},  // suite: exp-syntax-error
      {"v=spf1 redirect=-all ?all",  // suite: redirect-syntax-error
       "redirect=-all: domain must end in .<top-level label> or a macro"},
      {"v=spf1 ?all redirect=", "redirect=: empty domain"},  // suite: redirect-empty-domain
      {"v=spf1 exp=e13msg.example.com -all exp=e11msg.example.com",  // suite: exp-twice
       "exp=e11msg.example.com: exp appears twice"},
      {"v=spf1 redirect=e12.example.com -all redirect=e12.example.com",  // suite: redirect-twice
       "redirect=e12.example.com: redirect appears twice"},
      {"v=spf1 redirect=a.example.com REDIRECT=b.example.com", "REDIRECT=b.example.com: redirect appears twice"},
      {"v=spf1 exp=a.example.com redirect=b.example.com Exp=c.example.com",
       "Exp=c.example.com: exp appears twice"},
      {"v=spf1 redirect=example.com:8080", "redirect=example.com:8080: bad top-level label \"com:8080\""},
  });
}

// Processing limits and record selection are not syntax: these records are
// valid, whatever evaluating them gives (§4.5, §4.6.4).
TEST(SpfRecordNotSyntax, Table) {
  expect_cases({
      {"v=spf1 a mx a mx a mx a mx a ptr a ip4:1.2.3.4 -all", ""},  // suite: mech-over-limit
      {"v=spf1 a:err.example.com a:err1.example.com a:err2.example.com ?all", ""},  // suite: void-over-limit
      {"v=spf1 ip4:1.1.1.1 redirect=e1.example.com", ""},                           // suite: redirect-loop
      {"v=spf1 include:erehwon.example.com -all", ""},                              // suite: include-none
      {"v=spf1 " + repeat("include:example.com ", 40) + "-all", ""},
  });
}

// The first bad term is the one named, however many follow.
TEST(SpfRecordError, NamesTheFirstBadTerm) {
  EXPECT_EQ(spf_record_error("v=spf1 a moo ip4:1.2.3 -all:x"), "moo: unknown mechanism");
  EXPECT_EQ(spf_record_error("v=spf1 ip4:1.2.3 moo"), "ip4:1.2.3: bad IPv4 address");
}

// What a message may hold: visible ASCII only, the term cut when long.
TEST(SpfRecordError, MessageIsPrintableAndShort) {
  std::string record = "v=spf1 x";
  record += repeat("\x01", 200);
  const auto error = spf_record_error(record);
  ASSERT_TRUE(error.has_value());
  for (const char c : *error) EXPECT_TRUE(c >= 0x20 && c <= 0x7e) << int(c);
  EXPECT_LT(error->size(), spf_error_term_chars + 64);
  EXPECT_EQ(error->substr(0, 5), "x\\x01");
}

struct libspf2_case {
  std::string record;
  std::string want;
};

TEST(SpfRecordForLibspf2, Table) {
  const std::vector<libspf2_case> cases = {
      // Nothing libspf2 refuses: the text as it is, spacing and case included.
      {"v=spf1", "v=spf1"},
      {"v=spf1 -all", "v=spf1 -all"},
      {"V=SPF1  a   MX:example.com/24//64 -all  ", "V=SPF1  a   MX:example.com/24//64 -all  "},
      {"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all"},
      {"v=spf1 redirect=_spf.example.com exp=%{d2}.exp.example.com",
       "v=spf1 redirect=_spf.example.com exp=%{d2}.exp.example.com"},
      {"v=spf1 exists:%{i}.%{l2r-}.user.%{d2} a:%%%_%-.example.com",
       "v=spf1 exists:%{i}.%{l2r-}.user.%{d2} a:%%%_%-.example.com"},
      // A /0 on ip4 or ip6: the two halves of the address space, same qualifier.
      {"v=spf1 ip4:1.1.1.1/0 -all", "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 -all"},
      {"v=spf1 -ip4:192.0.2.1/0", "v=spf1 -ip4:0.0.0.0/1 -ip4:128.0.0.0/1"},
      {"v=spf1 ~IP4:0.0.0.0/0 ?all", "v=spf1 ~ip4:0.0.0.0/1 ~ip4:128.0.0.0/1 ?all"},
      {"v=spf1 ip6:::1.1.1.1/0", "v=spf1 ip6:::/1 ip6:8000::/1"},
      {"v=spf1 ?ip6:2001:db8::/0 -all", "v=spf1 ?ip6:::/1 ?ip6:8000::/1 -all"},
      {"v=spf1 ip4:10.0.0.0/8 ip4:10.0.0.0/0", "v=spf1 ip4:10.0.0.0/8 ip4:0.0.0.0/1 ip4:128.0.0.0/1"},
      // Unknown modifiers go (§6: ignored), with the spaces before them.
      {"v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all", "v=spf1 ip4:1.2.3.4 -all"},
      {"v=spf1 -all ra=postmaster  rp=100", "v=spf1 -all"},
      {"v=spf1 default=+", "v=spf1"},
      {"v=spf1 a=b a", "v=spf1 a"},
      // Macro transformers libspf2 refuses ("R", a DIGIT above 128) or
      // reads wrong (a DIGIT of as many labels as the value has or more):
      // from 128 on, a DIGIT means every label of a name.
      {"v=spf1 exists:%{dR}.example.com", "v=spf1 exists:%{dr}.example.com"},
      {"v=spf1 exists:%{d2R-}.x.example.com", "v=spf1 exists:%{d2r-}.x.example.com"},
      {"v=spf1 a:%{d999}.com", "v=spf1 a:%{d}.com"},
      {"v=spf1 a:%{d129r}.com", "v=spf1 a:%{dr}.com"},
      {"v=spf1 a:%{d127}.com a:%{d128}.com a:%{d0128}.com", "v=spf1 a:%{d127}.com a:%{d}.com a:%{d}.com"},
      {"v=spf1 a:%{d000999999999999999999}.com", "v=spf1 a:%{d}.com"},
      {"v=spf1 redirect=%{D2R}.example.com", "v=spf1 redirect=%{D2r}.example.com"},
      {"v=spf1 -all exp=%{O200R}.example.com", "v=spf1 -all exp=%{Or}.example.com"},
      {"v=spf1 a:%%{dR}.example.com", "v=spf1 a:%%{dR}.example.com"},  // "%%" then a literal "{dR}"
      // No equivalent for libspf2: left for it to refuse.
      {"v=spf1 a/0 mx//0 -all", "v=spf1 a/0 mx//0 -all"},
      {"v=spf1 exists:%{l,}.example.com", "v=spf1 exists:%{l,}.example.com"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "record: \"" << c.record << "\"");
    ASSERT_EQ(spf_record_error(c.record), std::nullopt);
    const auto rewritten = spf_record_for_libspf2(c.record);
    EXPECT_EQ(rewritten, c.want);
    EXPECT_EQ(spf_record_error(rewritten), std::nullopt);
    EXPECT_EQ(spf_record_for_libspf2(rewritten), rewritten);
  }
}

// What one client needs of a record libspf2 reads: its family's CIDR only,
// a length of 0 as the any-address mark, redirect= last or gone, and only
// the ip4/ip6 terms that hold it.
TEST(SpfRecordForClient, Table) {
  struct client_case {
    std::string record;
    std::string client;
    std::string want;
  };
  const std::string any = ".any-address-0123456789abcdef.portcullis.invalid";
  const std::string v4 = "198.51.100.7", v6 = "2001:db8::7";
  const std::vector<client_case> cases = {
      {"v=spf1 a mx -all", v4, "v=spf1 a mx -all"},
      {"v=spf1 a/24 mx:m.example.com//64 -all", v4, "v=spf1 a/24 mx:m.example.com -all"},
      {"v=spf1 a/24 mx:m.example.com//64 -all", v6, "v=spf1 a mx:m.example.com//64 -all"},
      {"v=spf1 a/0 -all", v4, "v=spf1 a:%{d}" + any + " -all"},
      {"v=spf1 a/0 -all", v6, "v=spf1 a -all"},
      {"v=spf1 -a:e.example.com//0 ~all", v6, "v=spf1 -a:e.example.com" + any + " ~all"},
      {"v=spf1 ?mx:e.example.com/0//0", v4, "v=spf1 ?mx:e.example.com" + any},
      {"v=spf1 A:%{d}.x.example.com/0", v4, "v=spf1 A:%{d}.x.example.com" + any},
      // §6.1: redirect after the mechanisms, and none with "all".
      {"v=spf1 redirect=r.example.com ip4:192.0.2.1", "192.0.2.1", "v=spf1 ip4:192.0.2.1 redirect=r.example.com"},
      {"v=spf1 redirect=r.example.com ip4:192.0.2.1", v4, "v=spf1 redirect=r.example.com"},
      {"v=spf1 redirect=r.example.com ~all", v4, "v=spf1 ~all"},
      {"v=spf1 exp=e.example.com -all", v4, "v=spf1 exp=e.example.com -all"},
      // ip4/ip6: only the terms that hold the client, each as it was.
      {"v=spf1 ip4:192.0.2.0/24 -ip4:198.51.100.0/25 ip6:2001:db8::/32 -all", v4, "v=spf1 -ip4:198.51.100.0/25 -all"},
      {"v=spf1 ip4:192.0.2.0/24 -ip4:198.51.100.0/25 ip6:2001:db8::/32 -all", v6, "v=spf1 ip6:2001:db8::/32 -all"},
      {"v=spf1 ip4:198.51.100.6/31 ip4:198.51.100.8/29 IP4:198.51.100.7 ~all", v4, "v=spf1 ip4:198.51.100.6/31 IP4:198.51.100.7 ~all"},
      {"v=spf1 ip4:198.51.100.6 ip4:198.51.100.0/30 ip4:198.51.100.4/30 -all", v4, "v=spf1 ip4:198.51.100.4/30 -all"},
      {"v=spf1 ip6:2001:db8::6/127 ip6:2001:db8::8/125 ip6:2001:db8::7/128 ?all", v6, "v=spf1 ip6:2001:db8::6/127 ip6:2001:db8::7/128 ?all"},
      {"v=spf1 ip6:2001:db9::/32 ip6:2001:db8:8000::/33 ip6:2001:db8::/33", v6, "v=spf1 ip6:2001:db8::/33"},
      // The halves of a /0 (spf_record_for_libspf2): the one of the client's half.
      {"v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 ip6:::/1 ip6:8000::/1", v4, "v=spf1 ip4:128.0.0.0/1"},
      {"v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 ip6:::/1 ip6:8000::/1", v6, "v=spf1 ip6:::/1"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "record: \"" << c.record << "\" client " << c.client);
    ASSERT_EQ(spf_record_error(c.record), std::nullopt);
    EXPECT_EQ(spf_record_for_client(c.record, boost::asio::ip::make_address(c.client), any), c.want);
  }
}

// The marker is a secret of one check: a name a client chose (a HELO through
// %{h}) cannot end in it, as it could in a fixed one.
TEST(SpfRecordForClient, AnyAddressMarkerIsNewForEveryCheck) {
  const std::string a = any_address_marker(), b = any_address_marker();
  EXPECT_NE(a, b);
  EXPECT_TRUE(a.starts_with(".any-address-") && a.ends_with(".portcullis.invalid")) << a;
  EXPECT_EQ(a.size(), std::string_view(".any-address-0123456789abcdef.portcullis.invalid").size());
}

TEST(SpfShapeOf, CountsAsLibspf2Does) {
  EXPECT_EQ(spf_shape_of("v=spf1"), (spf_record_shape{0, 0, 0}));
  EXPECT_EQ(spf_shape_of("v=spf1 a mx:x.example.com/24 -all"), (spf_record_shape{3, 0, 0}));
  // redirect= is among libspf2's mechanisms; exp= a modifier.
  EXPECT_EQ(spf_shape_of("v=spf1 ip4:192.0.2.0/24  redirect=r.example.com exp=e.example.com"),
            (spf_record_shape{2, 1, 0}));
  // The longest term with a macro, whatever its kind; terms without one do not count.
  EXPECT_EQ(spf_shape_of("v=spf1 exists:%{i}.x.example.com/24 ~all"), (spf_record_shape{2, 0, 28}));
  EXPECT_EQ(spf_shape_of("v=spf1 a:very-long-name-without-macros.example.com exp=%{d}.e.example a:%{l}.x"),
            (spf_record_shape{2, 1, 18}));
}

// libspf2 cuts a value's first character when a DIGIT keeps as many labels as
// it has or more; §7.3 keeps them all, so the DIGIT goes where the value is known.
TEST(SpfMacrosForValues, Table) {
  const auto values = [](char letter) -> std::optional<std::string> {
    switch (letter) {
      case 'd': return "example.test";
      case 'l': return "post-master";
      case 'i': return "192.0.2.7";
      default: return std::nullopt;
    }
  };
  const std::vector<std::pair<std::string, std::string>> table = {
      {"exists:%{d2}.x", "exists:%{d}.x"},          // as many labels
      {"exists:%{d3}.x", "exists:%{d}.x"},          // more
      {"exists:%{d1}.x", "exists:%{d1}.x"},         // fewer: libspf2 does it right
      {"exists:%{D2r}.x", "exists:%{Dr}.x"},        // URL-encoded, reversed
      {"exists:%{d2r-}.x", "exists:%{dr-}.x"},      // no "-" in the value: one label
      {"exists:%{l2-}.x", "exists:%{l-}.x"},        // two at "-"
      {"exists:%{l1-}.x", "exists:%{l1-}.x"},
      {"exists:%{l1}.x", "exists:%{l}.x"},          // one at "."
      {"exists:%{i4}.x", "exists:%{i}.x"},
      {"exists:%{i3r}.x", "exists:%{i3r}.x"},
      {"exists:%{p1}.x", "exists:%{p1}.x"},         // unknown until libspf2 looks it up
      {"exists:%{d0002}.x", "exists:%{d}.x"},
      {"exists:%{d0}.x", "exists:%{d0}.x"},         // invalid: libspf2 refuses it
      {"exists:%{d9999}.x", "exists:%{d}.x"},
      {"exists:%%{d2}.x", "exists:%%{d2}.x"},       // an escaped "%": no macro
      {"a:%{d2}%{d1}", "a:%{d}%{d1}"},
  };
  for (const auto& [in, want] : table) EXPECT_EQ(spf_macros_for_values(in, values), want) << in;
}

}  // namespace
}  // namespace portcullis::checks
