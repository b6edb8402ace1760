// Table tests for envelope addresses and ESMTP parameters (RFC 5321 §4.1.2,
// §4.1.3, §4.5.3.1; SMTPUTF8: RFC 6531 §3.3).
#include "smtp/address.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace portcullis::smtp {
namespace {

using namespace std::literals;

// A syntactically valid domain of exactly n octets (labels of at most 63).
std::string domain_of_length(std::size_t n) {
  std::string d;
  while (d.size() < n) {
    std::size_t left = n - d.size();
    if (!d.empty()) {
      d += '.';
      --left;
    }
    std::size_t take = std::min<std::size_t>(left, 63);
    if (left - take == 1) --take;  // never leave a lone "." for the next label
    d.append(take, 'a');
  }
  return d;
}

std::string local_of_length(std::size_t n) { return std::string(n, 'l'); }

std::string repeat(std::string_view s, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += s;
  return out;
}

TEST(AddressHelpers, DomainOfLength) {
  for (std::size_t n : {1, 63, 64, 65, 127, 128, 189, 190, 252, 255, 256}) {
    const std::string d = domain_of_length(n);
    EXPECT_EQ(d.size(), n);
    EXPECT_TRUE(parse_mailbox("a@" + d, false) || n > max_domain) << n;
  }
}

std::string escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += char(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// parse_mailbox: "local@domain", no angle brackets.

struct mailbox_case {
  std::string text;
  bool utf8;
  std::optional<address> want;  // nullopt: refused
};

address addr(std::string local, std::string domain) { return address{std::move(local), std::move(domain)}; }

std::vector<mailbox_case> mailbox_cases() {
  const auto no = std::nullopt;
  return {
      // Dot-strings (§4.1.2 Dot-string = Atom *("." Atom)).
      {"a@b", false, addr("a", "b")},
      {"user@example.com", false, addr("user", "example.com")},
      {"First.Last@Example.COM", false, addr("First.Last", "Example.COM")},
      {"a+tag@example.com", false, addr("a+tag", "example.com")},
      {"!#$%&'*+-/=?^_`{|}~@example.com", false, addr("!#$%&'*+-/=?^_`{|}~", "example.com")},
      {"a.b.c.d@x", false, addr("a.b.c.d", "x")},
      {".a@b", false, no},  // leading dot
      {"a.@b", false, no},  // trailing dot
      {"a..b@c", false, no},  // double dot
      {".@b", false, no},
      {"a b@c", false, no},
      {"a\\b@c", false, no},  // a backslash only quotes inside a quoted string
      {"a(comment)@b", false, no},
      {"a,b@c", false, no},
      {"a:b@c", false, no},
      {"a;b@c", false, no},
      {"a<b@c", false, no},
      {"a>b@c", false, no},
      {"a[b@c", false, no},

      // Quoted local parts (§4.1.2 Quoted-string), kept with their quotes.
      {"\"a b\"@x", false, addr("\"a b\"", "x")},
      {"\"a\\\"b\"@x", false, addr("\"a\\\"b\"", "x")},
      {"\"a\\\\b\"@x", false, addr("\"a\\\\b\"", "x")},
      {"\"\\a\"@x", false, addr("\"\\a\"", "x")},  // quoted-pairSMTP: any of %d32-126
      {"\"a@b\"@x", false, addr("\"a@b\"", "x")},
      {"\".a..b.\"@x", false, addr("\".a..b.\"", "x")},
      {"\"a>b<c\"@x", false, addr("\"a>b<c\"", "x")},
      {"\"\"@x", false, addr("\"\"", "x")},  // *QcontentSMTP: may be empty
      {"\" \"@x", false, addr("\" \"", "x")},
      {"\"a@x", false, no},  // unterminated
      {"\"a\\\"@x", false, no},  // the closing quote is escaped
      {"\"a\\", false, no},
      {"\"a\"b@x", false, no},  // quoted string then atom
      {"a\"b\"@x", false, no},
      {"\"a\".b@x", false, no},
      {"\"a\tb\"@x", false, no},  // HT is not qtextSMTP
      {"\"a\\\tb\"@x", false, no},  // nor quotable
      {"\"a\\\x01\"@x", false, no},
      {"\"a\rb\"@x", false, no},
      {"\"a\nb\"@x", false, no},
      {"\"a\x7f\"@x", false, no},
      {"\"a\0b\"@x"s, false, no},

      // Domains (§4.1.2 Domain = sub-domain *("." sub-domain)).
      {"a@sub.example.com", false, addr("a", "sub.example.com")},
      {"a@a-b.c", false, addr("a", "a-b.c")},
      {"a@a--b.c", false, addr("a", "a--b.c")},
      {"a@123.com", false, addr("a", "123.com")},
      {"a@", false, no},
      {"@b", false, no},
      {"a", false, no},
      {"", false, no},
      {"a@@b", false, no},
      {"a@b@c", false, no},
      {"a@.b", false, no},
      {"a@b.", false, no},  // no trailing root dot in SMTP
      {"a@b..c", false, no},
      {"a@-b", false, no},
      {"a@b-", false, no},
      {"a@b-.c", false, no},
      {"a@b_c", false, no},
      {"a@b c", false, no},
      {"a@b ", false, no},
      {" a@b", false, no},
      {"<a@b>", false, no},
      {"a@b\r\n", false, no},
      {"a@b\nRCPT TO:<c@d>", false, no},
      {"a\0@b"s, false, no},
      {"a@b\0"s, false, no},
      {"a@b\0c"s, false, no},
      {"a@" + std::string(63, 'x') + ".com", false, addr("a", std::string(63, 'x') + ".com")},
      {"a@" + std::string(64, 'x') + ".com", false, no},  // RFC 1035 §2.3.4: labels of 63 at most

      // Address literals (§4.1.3).
      {"a@[1.2.3.4]", false, addr("a", "[1.2.3.4]")},
      {"a@[255.255.255.255]", false, addr("a", "[255.255.255.255]")},
      {"a@[IPv6:::1]", false, addr("a", "[IPv6:::1]")},
      {"a@[IPv6:2001:db8::1]", false, addr("a", "[IPv6:2001:db8::1]")},
      {"a@[ipv6:2001:DB8::1]", false, addr("a", "[ipv6:2001:DB8::1]")},
      {"a@[IPv6:::ffff:192.0.2.1]", false, addr("a", "[IPv6:::ffff:192.0.2.1]")},
      {"a@[x-tag:content]", false, addr("a", "[x-tag:content]")},  // General-address-literal
      {"a@[1.2.3.999]", false, no},
      {"a@[1.2.3]", false, no},
      {"a@[1.2.3.4.5]", false, no},
      {"a@[1.2.3.4", false, no},
      {"a@1.2.3.4]", false, no},
      {"a@[]", false, no},
      {"a@[ 1.2.3.4]", false, no},
      {"a@[IPv6:]", false, no},
      {"a@[IPv6:::g]", false, no},
      {"a@[IPv6:1.2.3.4]", false, no},  // an IPv4 address is not an IPv6 literal
      {"a@[IPv6:1:2:3:4:5:6:7:8:9]", false, no},
      {"a@[:x]", false, no},
      {"a@[x:]", false, no},
      {"a@[x y:z]", false, no},
      {"a@[tag:a b]", false, no},
      {"a@[tag:a[b]", false, no},
      {"a@[tag:a\\b]", false, no},
      {"a@[1.2.3.4]x", false, no},
      {"a@[1.2.3.4].com", false, no},
      {"a@x.[1.2.3.4]", false, no},
      // inet_pton stops at a NUL: the bytes after it must not slip through
      // (an address with NUL or CRLF would go upstream verbatim).
      {"a@[1.2.3.4\0]"s, false, no},
      {"a@[1.2.3.4\0x]"s, false, no},
      {"a@[IPv6:::1\0\r\nRSET]"s, false, no},
      {"a@[IPv6:::1\0]"s, false, no},
      // '<' and '>' are dcontent, but inside a path they would end it for any
      // naive parser upstream; no standardized tag needs them (§4.1.3).
      {"a@[x:<b>]", false, no},
      {"a@[x:>]", false, no},

      // Lengths (§4.5.3.1.1-2).
      {local_of_length(64) + "@x", false, addr(local_of_length(64), "x")},
      {local_of_length(65) + "@x", false, no},
      {"\"" + local_of_length(62) + "\"@x", false, addr("\"" + local_of_length(62) + "\"", "x")},
      {"\"" + local_of_length(63) + "\"@x", false, no},  // the quotes count
      {"a@" + domain_of_length(255), false, addr("a", domain_of_length(255))},
      {"a@" + domain_of_length(256), false, no},

      // SMTPUTF8 (RFC 6531 §3.3): UTF-8 only when allowed, and only valid UTF-8.
      {"ü@x", false, no},
      {"a@bücher.de", false, no},
      {"\"ü b\"@x", false, no},
      {"ü@x", true, addr("ü", "x")},
      {"a@bücher.de", true, addr("a", "bücher.de")},
      {"\"ü b\"@x", true, addr("\"ü b\"", "x")},
      {"用户@例子.广告", true, addr("用户", "例子.广告")},
      {"a@b", true, addr("a", "b")},
      {"\xff@x", true, no},
      {"\xc3@x", true, no},  // truncated sequence
      {"a@b\xc3", true, no},
      {"\xc0\xaf@x", true, no},  // overlong "/"
      {"\xed\xa0\x80@x", true, no},  // surrogate
      {"\xf4\x90\x80\x80@x", true, no},  // past U+10FFFF
      {"a@[IPv6:::1ü]", true, no},
      {"a@[x:ü]", true, no},
  };
}

TEST(ParseMailbox, Table) {
  for (const auto& c : mailbox_cases()) {
    SCOPED_TRACE(testing::Message() << "text: \"" << escape(c.text) << "\" utf8=" << c.utf8);
    const auto got = parse_mailbox(c.text, c.utf8);
    EXPECT_EQ(got.has_value(), c.want.has_value());
    if (!got || !c.want) continue;
    EXPECT_EQ(got->local, c.want->local);
    EXPECT_EQ(got->domain, c.want->domain);
    EXPECT_EQ(got->str(), c.text);
  }
}

// What parse_mailbox accepts re-parses to itself, and is_valid_address agrees
// whenever the mailbox fits in a path (§4.5.3.1.3: 256 octets with "<>").
TEST(ParseMailbox, AcceptedIsValidAndStable) {
  for (const auto& c : mailbox_cases()) {
    if (!c.want) continue;
    SCOPED_TRACE(testing::Message() << "text: \"" << escape(c.text) << "\"");
    const auto a = *parse_mailbox(c.text, c.utf8);
    EXPECT_EQ(parse_mailbox(a.str(), c.utf8), a);
    EXPECT_EQ(is_valid_address(a, c.utf8), a.str().size() + 2 <= max_path);
  }
}

// A mailbox handed over as text (a policy's rewrite): what parses and fits in a path.
TEST(ParseValidMailbox, ParsedAndFitsInAPath) {
  for (const auto& c : mailbox_cases()) {
    SCOPED_TRACE(testing::Message() << "text: \"" << escape(c.text) << "\" utf8=" << c.utf8);
    const auto got = parse_valid_mailbox(c.text, c.utf8);
    EXPECT_EQ(got.has_value(), c.want.has_value() && c.text.size() + 2 <= max_path);
    if (got) {
      EXPECT_EQ(*got, *c.want);
    }
  }
}

// ---------------------------------------------------------------------------
// parse_path_argument: "<path> [params]" after FROM:/TO:.

struct path_case {
  std::string arg;
  bool reverse;
  bool utf8_session;
  path_error error;
  address want = {};
  std::vector<esmtp_param> params = {};
};

esmtp_param param(std::string k) { return esmtp_param{std::move(k), "", false}; }
esmtp_param param(std::string k, std::string v) { return esmtp_param{std::move(k), std::move(v), true}; }

std::string path_error_name(path_error e) {
  switch (e) {
    case path_error::none: return "none";
    case path_error::syntax: return "syntax";
    case path_error::too_long: return "too_long";
    case path_error::bad_params: return "bad_params";
    case path_error::non_ascii: return "non_ascii";
  }
  return "?";
}

std::vector<path_case> path_cases() {
  constexpr bool rev = true, fwd = false;
  const auto ok = path_error::none, syntax = path_error::syntax, too_long = path_error::too_long,
             bad_params = path_error::bad_params, non_ascii = path_error::non_ascii;
  // "<" + local + "@" + domain + ">" of exactly n octets.
  const auto path_of = [](std::size_t n) { return "<a@" + domain_of_length(n - 4) + ">"; };
  return {
      {"<a@b>", rev, false, ok, addr("a", "b")},
      {"<a@b>", fwd, false, ok, addr("a", "b")},
      {"<user@example.com>", fwd, false, ok, addr("user", "example.com")},
      {"<a@b> ", fwd, false, ok, addr("a", "b")},
      // The null reverse-path is MAIL's only (§4.1.1.2, §4.1.1.3).
      {"<>", rev, false, ok, address{}},
      {"<> SIZE=100", rev, false, ok, address{}, {param("SIZE", "100")}},
      {"<>", fwd, false, syntax},
      {"< >", rev, false, syntax},
      // "RCPT TO:<Postmaster>" with no domain must be accepted (§4.1.1.3);
      // as a reverse-path it is no mailbox.
      {"<Postmaster>", fwd, false, ok, addr("Postmaster", "")},
      {"<postmaster>", fwd, false, ok, addr("postmaster", "")},
      {"<POSTMASTER> NOTIFY=NEVER", fwd, false, ok, addr("POSTMASTER", ""), {param("NOTIFY", "NEVER")}},
      {"<Postmaster@example.com>", fwd, false, ok, addr("Postmaster", "example.com")},
      {"<Postmaster>", rev, false, syntax},
      {"<Postmasters>", fwd, false, syntax},
      {"<Postmaster >", fwd, false, syntax},
      {"<@a:Postmaster>", fwd, false, syntax},
      // Parameters.
      {"<a@b> SIZE=123 BODY=8BITMIME SMTPUTF8", rev, false, ok, addr("a", "b"),
       {param("SIZE", "123"), param("BODY", "8BITMIME"), param("SMTPUTF8")}},
      {"<a@b> size=123 body=8bitmime", rev, false, ok, addr("a", "b"),
       {param("SIZE", "123"), param("BODY", "8bitmime")}},
      {"<a@b> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b", fwd, false, ok, addr("a", "b"),
       {param("NOTIFY", "SUCCESS,FAILURE"), param("ORCPT", "rfc822;a+40b")}},
      {"<a@b> SIZE=", rev, false, bad_params},
      {"<a@b> =1", rev, false, bad_params},
      {"<a@b> SI_ZE=1", rev, false, bad_params},
      {"<a@b> -SIZE=1", rev, false, bad_params},
      {"<a@b> A=b=c", rev, false, bad_params},
      {"<a@b> A=\x01", rev, false, bad_params},
      {"<a@b> A=x\x7f", rev, false, bad_params},
      {"<a@b> A=x\r\n", rev, false, bad_params},
      {"<a@b> <c@d>", fwd, false, bad_params},
      // Source routes are accepted and dropped (§4.1.2, Appendix C).
      {"<@a,@b:u@c>", fwd, false, ok, addr("u", "c")},
      {"<@a:u@c>", rev, false, ok, addr("u", "c")},
      {"<@[1.2.3.4],@b.c:u@d> SIZE=1", rev, false, ok, addr("u", "d"), {param("SIZE", "1")}},
      {"<@a:>", fwd, false, syntax},
      {"<@a,u@c>", fwd, false, syntax},
      {"<@a u@c>", fwd, false, syntax},
      {"<@:u@c>", fwd, false, syntax},
      {"<@a,@:u@c>", fwd, false, syntax},
      {"<@a,:u@c>", fwd, false, syntax},
      {"<@a:@b:u@c>", fwd, false, syntax},
      {"<@a>", fwd, false, syntax},
      // Quoted local parts and literals inside a path; '>' in quotes does not end it.
      {"<\"a b\"@x>", fwd, false, ok, addr("\"a b\"", "x")},
      {"<\"a\\\"b\"@x>", fwd, false, ok, addr("\"a\\\"b\"", "x")},
      {"<\"a>b\"@x>", fwd, false, ok, addr("\"a>b\"", "x")},
      {"<\"a>\"@x> SIZE=1", rev, false, ok, addr("\"a>\"", "x"), {param("SIZE", "1")}},
      {"<\"a>", fwd, false, syntax},
      {"<a@[1.2.3.4]>", fwd, false, ok, addr("a", "[1.2.3.4]")},
      {"<a@[IPv6:::1]>", fwd, false, ok, addr("a", "[IPv6:::1]")},
      {"<a@[IPv6:::1]]>", fwd, false, syntax},
      {"<a@[1.2.3.4\0]>"s, fwd, false, syntax},
      {"<a@[IPv6:::1\0\r\nRSET]>"s, fwd, false, syntax},
      // Not a path.
      {"", fwd, false, syntax},
      {"<", fwd, false, syntax},
      {">", fwd, false, syntax},
      {"a@b", fwd, false, syntax},  // missing angle brackets
      {"a@b>", fwd, false, syntax},
      {"<a@b", fwd, false, syntax},
      {" <a@b>", fwd, false, syntax},
      {"<<a@b>>", fwd, false, syntax},
      {"<a@b>>", fwd, false, syntax},  // junk after '>'
      {"<a@b>x", fwd, false, syntax},
      {"<a@b>SIZE=1", rev, false, syntax},
      {"<a@b>\tSIZE=1", rev, false, syntax},
      {"<a@b>\r\n", fwd, false, syntax},
      {"<a@b c>", fwd, false, syntax},
      {"<a @b>", fwd, false, syntax},
      {"<a@b@c>", fwd, false, syntax},
      {"<.a@b>", fwd, false, syntax},
      {"<a..b@c>", fwd, false, syntax},
      {"<a@b.>", fwd, false, syntax},
      {"<a>", rev, false, syntax},
      {"<@b>", fwd, false, syntax},
      // Lengths (§4.5.3.1): local part 64, path 256 with its punctuation,
      // source route included.
      {"<" + local_of_length(64) + "@x>", fwd, false, ok, addr(local_of_length(64), "x")},
      {"<" + local_of_length(65) + "@x>", fwd, false, too_long},
      {path_of(256), fwd, false, ok, addr("a", domain_of_length(252))},
      {path_of(257), fwd, false, too_long},
      {path_of(256) + " SIZE=1", rev, false, ok, addr("a", domain_of_length(252)), {param("SIZE", "1")}},
      {"<a@" + domain_of_length(255) + ">", fwd, false, too_long},  // a legal domain, but no room in a path
      {"<@b:a@" + domain_of_length(249) + ">", fwd, false, ok, addr("a", domain_of_length(249))},  // 256
      {"<@bc:a@" + domain_of_length(249) + ">", fwd, false, too_long},                            // 257
      // SMTPUTF8 (RFC 6531 §3.3, §3.4).
      {"<ü@x>", rev, false, non_ascii},
      {"<a@bücher.de>", fwd, false, non_ascii},
      {"<\"ü\"@x>", fwd, false, non_ascii},
      {"<a@b> X=ü", rev, false, non_ascii},
      {"<ü@x> SMTPUTF8", rev, false, ok, addr("ü", "x"), {param("SMTPUTF8")}},
      {"<ü@x> smtputf8", rev, false, ok, addr("ü", "x"), {param("SMTPUTF8")}},
      {"<ü@x> BODY=8BITMIME SMTPUTF8", rev, false, ok, addr("ü", "x"),
       {param("BODY", "8BITMIME"), param("SMTPUTF8")}},
      {"<用户@例子.广告>", fwd, true, ok, addr("用户", "例子.广告")},
      {"<a@bücher.de>", fwd, true, ok, addr("a", "bücher.de")},
      {"<a@b> X=ü SMTPUTF8", rev, false, ok, addr("a", "b"), {param("X", "ü"), param("SMTPUTF8")}},
      {"<\xff@x> SMTPUTF8", rev, false, syntax},
      {"<\xc3@x>", fwd, true, syntax},
      {"<\xed\xa0\x80@x>", fwd, true, syntax},
      {"<a@b> X=\xff SMTPUTF8", rev, false, syntax},
      {"<a@b> X=\xff", rev, false, syntax},
      {"<@bücher.de:a@b> SMTPUTF8", rev, false, syntax},  // routes are ASCII (and obsolete)
      {"<" + std::string(32, '\xc3') + std::string(32, '\xbc') + "@x> SMTPUTF8", rev, false, syntax},
      // 32 "ü" are 64 octets: the limit counts octets, not characters.
      {"<" + repeat("ü", 32) + "@x> SMTPUTF8", rev, false, ok, addr(repeat("ü", 32), "x"), {param("SMTPUTF8")}},
      {"<" + repeat("ü", 32) + "a@x> SMTPUTF8", rev, false, too_long},
  };
}

TEST(ParsePathArgument, Table) {
  for (const auto& c : path_cases()) {
    SCOPED_TRACE(testing::Message() << "arg: \"" << escape(c.arg) << "\" reverse=" << c.reverse
                                    << " utf8_session=" << c.utf8_session);
    const path_result got = parse_path_argument(c.arg, c.reverse, c.utf8_session);
    EXPECT_EQ(path_error_name(got.error), path_error_name(c.error));
    EXPECT_EQ(got.value.has_value(), c.error == path_error::none);
    if (!got.value || c.error != path_error::none) continue;
    EXPECT_EQ(got.value->addr.local, c.want.local);
    EXPECT_EQ(got.value->addr.domain, c.want.domain);
    EXPECT_EQ(got.value->params, c.params);
    // Whatever a path carried, it is fit to go back on the wire.
    EXPECT_TRUE(is_valid_address(got.value->addr, true));
  }
}

// ---------------------------------------------------------------------------
// parse_esmtp_params (§4.1.2 Mail-parameters; RFC 6531 §3.3 esmtp-value).

struct params_case {
  std::string text;
  bool utf8;
  std::optional<std::vector<esmtp_param>> want;
};

std::vector<params_case> params_cases() {
  using list = std::vector<esmtp_param>;
  const auto no = std::nullopt;
  return {
      {"", false, list{}},
      {" ", false, list{}},
      {"SIZE=123 BODY=8BITMIME SMTPUTF8", false, list{param("SIZE", "123"), param("BODY", "8BITMIME"), param("SMTPUTF8")}},
      {"  SIZE=1   BODY=7BIT ", false, list{param("SIZE", "1"), param("BODY", "7BIT")}},
      {"size=1", false, list{param("SIZE", "1")}},  // keywords upper-cased, values kept
      {"BODY=8bitmime", false, list{param("BODY", "8bitmime")}},
      {"RET=HDRS ENVID=QQ314159", false, list{param("RET", "HDRS"), param("ENVID", "QQ314159")}},
      {"X-CUSTOM=a+2Bb", false, list{param("X-CUSTOM", "a+2Bb")}},
      {"9X=1", false, list{param("9X", "1")}},  // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
      {"X=!\"#$%&'()*+,-./0123456789:;<>?@[\\]^_`{|}~", false,
       list{param("X", "!\"#$%&'()*+,-./0123456789:;<>?@[\\]^_`{|}~")}},
      {"SMTPUTF8", false, list{param("SMTPUTF8")}},
      {"SIZE=", false, no},  // esmtp-value = 1*(...)
      {"=1", false, no},
      {"-X=1", false, no},
      {"X_Y=1", false, no},
      {"X.Y", false, no},
      {"SIZE==1", false, no},  // '=' is not esmtp-value
      {"A=b=c", false, no},
      {"A=\x01", false, no},
      {"A=b\tc", false, no},
      {"A=\x7f", false, no},
      {"A=\r\n", false, no},
      {"A\r\n", false, no},
      {"A=b\0"s, false, no},
      {"A=ü", false, no},
      {"A=ü", true, list{param("A", "ü")}},
      {"Ü=1", true, no},  // keywords stay ASCII
      {"SIZE=1 <x>", false, no},
  };
}

TEST(ParseEsmtpParams, Table) {
  for (const auto& c : params_cases()) {
    SCOPED_TRACE(testing::Message() << "text: \"" << escape(c.text) << "\" utf8=" << c.utf8);
    const auto got = parse_esmtp_params(c.text, c.utf8);
    EXPECT_EQ(got.has_value(), c.want.has_value());
    if (got && c.want) {
      EXPECT_EQ(*got, *c.want);
    }
  }
}

// ---------------------------------------------------------------------------
// is_valid_address: what a rewritten address is checked with before it goes
// upstream inside "<...>".

struct valid_case {
  address a;
  bool utf8;
  bool want;
};

std::vector<valid_case> valid_cases() {
  return {
      {address{}, false, true},  // the null path
      {addr("a", "b"), false, true},
      {addr("\"a b\"", "c"), false, true},
      {addr("a", "[1.2.3.4]"), false, true},
      {addr("a b", "c"), false, false},
      {addr("a", "b>"), false, false},
      {addr("a>", "b"), false, false},
      {addr("a@b", "c"), false, false},
      {addr("a", "b@c"), false, false},
      {addr("", "b"), false, false},
      {addr("a", ""), false, false},
      {addr("Postmaster", ""), false, true},  // §4.1.1.3
      {addr("postmaster", ""), false, true},
      {addr("postmaster\r\n", ""), false, false},
      {addr("a", "b\r\nRSET"), false, false},
      {addr("a\r\n", "b"), false, false},
      {addr("a", "b\0"s), false, false},
      {addr("a", "[1.2.3.4\0]"s), false, false},
      {addr("a", "[IPv6:::1\0\r\nDATA]"s), false, false},
      {addr("ü", "x"), false, false},
      {addr("ü", "x"), true, true},
      {addr(local_of_length(64), "x"), false, true},
      {addr(local_of_length(65), "x"), false, false},
      {addr(local_of_length(64), domain_of_length(189)), false, true},  // 256 with "<>"
      {addr(local_of_length(64), domain_of_length(190)), false, false},
      {addr("a", domain_of_length(252)), false, true},
      {addr("a", domain_of_length(253)), false, false},
  };
}

TEST(Address, Str) {
  EXPECT_EQ(addr("a", "b").str(), "a@b");
  EXPECT_EQ(addr("\"a b\"", "[1.2.3.4]").str(), "\"a b\"@[1.2.3.4]");
  EXPECT_EQ(address{}.str(), "");
  EXPECT_TRUE(address{}.null());
  EXPECT_EQ(addr("Postmaster", "").str(), "Postmaster");
  EXPECT_FALSE(addr("Postmaster", "").null());
}

TEST(IsValidAddress, Table) {
  for (const auto& c : valid_cases()) {
    SCOPED_TRACE(testing::Message() << "address: \"" << escape(c.a.local) << "\" @ \"" << escape(c.a.domain)
                                    << "\" utf8=" << c.utf8);
    EXPECT_EQ(is_valid_address(c.a, c.utf8), c.want);
  }
}

}  // namespace
}  // namespace portcullis::smtp
