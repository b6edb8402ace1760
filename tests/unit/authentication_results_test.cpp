// The Authentication-Results header we add, and the fields claiming our
// authserv-id that a message must lose first (RFC 8601 §5, §7.1).
#include "checks/authentication_results.hpp"

#include <gtest/gtest.h>

namespace portcullis::checks {
namespace {

using kind = spf_result::kind;

spf_result spf(kind k, std::string domain, bool helo = false, std::string problem = "") {
  spf_result r;
  r.result = k;
  r.domain = std::move(domain);
  r.helo = helo;
  r.problem = std::move(problem);
  return r;
}

TEST(AuthenticationResultsHeader, Table) {
  struct header_case {
    std::optional<spf_result> spf;
    std::string want;
  };
  const std::vector<header_case> cases = {
      {std::nullopt, "Authentication-Results: mx.example.test; none\r\n"},
      {spf(kind::pass, "example.com"), "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=example.com\r\n"},
      {spf(kind::fail, "helo.example.com", true),
       "Authentication-Results: mx.example.test;\r\n\tspf=fail smtp.helo=helo.example.com\r\n"},
      {spf(kind::none, "[192.0.2.1]", true, "not a domain name: [192.0.2.1]"),
       "Authentication-Results: mx.example.test;\r\n\tspf=none reason=\"not a domain name: [192.0.2.1]\" "
       "smtp.helo=\"[192.0.2.1]\"\r\n"},
      // A reason is what a domain's records or a nameserver made: quoted, escaped, printable.
      {spf(kind::permerror, "example.com", false, "ip4:1.2.3.256: bad \"IPv4\" \\ address\r\nX-Injected: 1"),
       "Authentication-Results: mx.example.test;\r\n\tspf=permerror reason=\"ip4:1.2.3.256: bad \\\"IPv4\\\" \\\\ "
       "address??X-Injected: 1\" smtp.mailfrom=example.com\r\n"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.want);
    EXPECT_EQ(authentication_results_header("mx.example.test", c.spf), c.want);
  }
  const auto long_reason = authentication_results_header("mx", spf(kind::temperror, "e.com", false, std::string(5000, 'x')));
  EXPECT_LT(long_reason.size(), 300u);
}

// Escapes count against a value's bound: a d= and s= of 300 '"' each made a
// line of 1,100 octets (RFC 5322 §2.1.1: 998 at most), and the upstream
// refused the message. A value is never cut inside an escape.
TEST(AuthenticationResultsHeader, EveryLineFitsHoweverHostileTheValues) {
  for (const char c : {'"', '\\', 'x'}) {
    dkim_signature sig;
    sig.result = dkim_signature::kind::permerror;
    sig.domain = std::string(300, c);
    sig.selector = std::string(301, c);
    sig.problem = std::string(5000, c);
    const auto field = authentication_results_header("mx", spf(kind::fail, std::string(999, c), false, std::string(999, c)),
                                                     dkim_results{sig});
    std::size_t start = 0;
    for (auto end = field.find("\r\n"); end != std::string::npos; start = end + 2, end = field.find("\r\n", start)) {
      const auto line = field.substr(start, end - start);
      EXPECT_LE(line.size(), 998u) << line;
      // Each quoted value ends in an unescaped quote: an even run of backslashes before it.
      for (auto q = line.find("\" "); q != std::string::npos; q = line.find("\" ", q + 1)) {
        std::size_t backslashes = 0;
        while (backslashes < q && line[q - 1 - backslashes] == '\\') ++backslashes;
        EXPECT_EQ(backslashes % 2, 0u) << line;
      }
    }
  }
}

// A DKIM entry with no d= stands for no one signature (those past [checks]
// dkim_signatures, or a header section too large to read): it has no
// header.d nor header.s (RFC 8601 §2.2 makes propspecs optional).
TEST(AuthenticationResultsHeader, ADkimEntryForNoOneSignature) {
  dkim_signature too_large;
  too_large.result = dkim_signature::kind::permerror;
  too_large.problem = "header section too large (over 1024 KiB): not verified";
  EXPECT_EQ(authentication_results_header("mx", std::nullopt, dkim_results{too_large}),
            "Authentication-Results: mx;\r\n"
            "\tdkim=permerror reason=\"header section too large (over 1024 KiB): not verified\"\r\n");
  dkim_signature one;
  one.result = dkim_signature::kind::pass;
  one.domain = "example.test";
  one.selector = "s";
  dkim_signature counted;
  counted.result = dkim_signature::kind::neutral;
  counted.problem = "19999 more signatures not evaluated (limit 5)";
  EXPECT_EQ(authentication_results_header("mx", std::nullopt, dkim_results{one, counted}),
            "Authentication-Results: mx;\r\n\tdkim=pass header.d=example.test header.s=s;\r\n"
            "\tdkim=neutral reason=\"19999 more signatures not evaluated (limit 5)\"\r\n");
}

TEST(ReportedPasses, WhatAnAuthenticationResultsValueSaysPassed) {
  const auto passes = [](std::string_view value, std::size_t max = 16) {
    std::string out;
    for (const auto& [method, domain] : reported_passes(value, max)) out += (out.empty() ? "" : " ") + method + ":" + domain;
    return out;
  };
  EXPECT_EQ(passes(" lists.test; dkim=pass header.d=Example.TEST header.s=s; spf=pass smtp.mailfrom=a@bounces.example.test;"
                   " dmarc=pass (p=reject dis=none) header.from=example.test"),
            "dkim:example.test spf:bounces.example.test dmarc:example.test");
  // Only passes; header.i when there is no header.d; smtp.helo when there is no smtp.mailfrom; each pair once.
  EXPECT_EQ(passes("mx 1; dkim=fail header.d=a.test; dkim=pass header.i=@b.test; spf=pass smtp.helo=c.test;"
                   " dkim=pass header.d=b.test; spf=softfail smtp.mailfrom=d.test; arc=pass; iprev=pass policy.iprev=192.0.2.1"),
            "dkim:b.test spf:c.test");
  // Comments, folding, quoting, versions and reasons anywhere RFC 8601 allows them.
  EXPECT_EQ(passes(" (c) \"lists.test\" (c);\r\n\t dkim/1 (x) = (y) pass (good) reason=\"a; b\" (z)\r\n"
                   "  header.d = (d) example.test;\tspf=pass smtp.mailfrom=\"a b\"@mail.example.test"),
            "dkim:example.test spf:mail.example.test");
  // A pass with no domain to it is none; "none" is no result; the grammar broken: what came before.
  EXPECT_EQ(passes("mx; dkim=pass; dmarc=pass header.from="), "");
  EXPECT_EQ(passes("mx; none"), "");
  EXPECT_EQ(passes("mx; dkim=pass header.d=a.test; dkim pass header.d=b.test; dmarc=pass header.from=c.test"), "dkim:a.test");
  EXPECT_EQ(passes("mx; dkim=pass header.d=a.test header.d"), "");
  // At most `max` of them.
  std::string many = "mx";
  for (int i = 0; i < 1000; ++i) many += "; dkim=pass header.d=d" + std::to_string(i) + ".test";
  EXPECT_EQ(reported_passes(many, 16).size(), 16u);
  EXPECT_EQ(passes(many, 2), "dkim:d0.test dkim:d1.test");
}

TEST(AuthservId, ReadsTokenQuotedAndAfterComments) {
  EXPECT_EQ(authserv_id_of(" mx.example.test; spf=pass"), "mx.example.test");
  EXPECT_EQ(authserv_id_of(" mx.example.test 1; spf=pass"), "mx.example.test");  // with a version
  EXPECT_EQ(authserv_id_of(" (a (nested) comment)\r\n\tmx.example.test;"), "mx.example.test");
  EXPECT_EQ(authserv_id_of(" \"mx.example.test\"; none"), "mx.example.test");
  EXPECT_EQ(authserv_id_of(" mx.example.test(comment); none"), "mx.example.test");
  EXPECT_EQ(authserv_id_of("   "), "");
}

std::vector<std::string> claimed_fields(const std::string& message, std::size_t piece = 0) {
  claimed_results_finder finder("MX.example.test");
  if (piece == 0) {
    finder.feed(message);
  } else {
    for (std::size_t i = 0; i < message.size(); i += piece) finder.feed(std::string_view(message).substr(i, piece));
  }
  finder.finish();
  std::vector<std::string> out;
  for (auto [b, e] : finder.claimed()) out.push_back(message.substr(b, e - b));
  return out;
}

const std::string forged =
    "Received: from a\r\n"
    "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=bank.example\r\n"
    "Authentication-Results: other.example.net; dkim=pass\r\n"
    "authentication-results:(forged)\r\n\tMX.EXAMPLE.TEST;\r\n dkim=pass header.d=bank.example\r\n"
    "Authentication-Results : \"mx.example.test\" 1; dmarc=pass\r\n"
    "Authentication-Results-Extra: mx.example.test; none\r\n"
    "Subject: hi\r\n"
    "\r\n"
    "Authentication-Results: mx.example.test; in the body, not a field\r\n";

TEST(ClaimedResultsFinder, FindsEveryFieldClaimingOurIdInTheHeaderSectionOnly) {
  const std::vector<std::string> want = {
      "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=bank.example\r\n",
      "authentication-results:(forged)\r\n\tMX.EXAMPLE.TEST;\r\n dkim=pass header.d=bank.example\r\n",
      "Authentication-Results : \"mx.example.test\" 1; dmarc=pass\r\n",
  };
  EXPECT_EQ(claimed_fields(forged), want);
  // However the message arrives in pieces.
  for (std::size_t piece = 1; piece < 40; ++piece) EXPECT_EQ(claimed_fields(forged, piece), want) << piece;
}

TEST(ClaimedResultsFinder, StopsAtTheEndOfTheHeaderSection) {
  claimed_results_finder finder("mx.example.test");
  EXPECT_TRUE(finder.feed("Subject: a\r\n"));
  EXPECT_FALSE(finder.feed("\r\nAuthentication-Results: mx.example.test; none\r\n"));
  finder.finish();
  EXPECT_TRUE(finder.claimed().empty());
}

TEST(ClaimedResultsFinder, AFieldEndingTheMessageCounts) {
  EXPECT_EQ(claimed_fields("Authentication-Results: mx.example.test; none\r\n"),
            std::vector<std::string>{"Authentication-Results: mx.example.test; none\r\n"});
  EXPECT_TRUE(claimed_fields("").empty());
}

TEST(ClaimedResultsFinder, SeesOurIdBehindCommentsAndSpaceOfAnyLength) {
  // RFC 8601 §2.2 puts CFWS of any length before the id; a reader downstream skips it all
  // and trusts what follows. Fed whole and in pieces of every size up to a few bytes.
  const std::string fold = "\r\n\t";
  for (const std::string& cfws :
       {"(" + std::string(100000, 'c') + ") ", std::string(3000, ' '), "(a (nested \\) ) (comment)) " + fold + "(\\()",
        "(" + std::string(3000, 'c') + ")" + fold + std::string(3000, ' ') + "(x)" + fold}) {
    const std::string field = "Authentication-Results: " + cfws + "mx.example.test; dkim=pass header.d=bank.example\r\n";
    const std::string message = "Subject: x\r\n" + field + "\r\nbody";
    for (std::size_t piece : {0u, 1u, 2u, 3u, 7u, 4096u}) {
      const auto claimed = claimed_fields(message, piece);
      ASSERT_EQ(claimed.size(), 1u) << cfws.size() << " bytes of CFWS, pieces of " << piece;
      EXPECT_EQ(claimed[0], field);
    }
  }
  // White space before the colon (obsolete syntax), as long as the sender likes.
  const std::string spaced = "Authentication-Results" + std::string(3000, ' ') + ": mx.example.test; none\r\n";
  EXPECT_EQ(claimed_fields(spaced + "\r\n"), std::vector<std::string>{spaced});
  // White space inside the name is another name.
  EXPECT_TRUE(claimed_fields("Authentication-Resul ts: mx.example.test; none\r\n\r\n").empty());
  EXPECT_TRUE(claimed_fields("Authentication-Resul" + std::string(3000, ' ') + "ts: mx.example.test; none\r\n\r\n").empty());
  // Another id behind it is not ours; nor is ours inside a comment.
  EXPECT_TRUE(claimed_fields("Authentication-Results: (" + std::string(5000, 'c') + ") other.test; none\r\n\r\n").empty());
  EXPECT_TRUE(claimed_fields("Authentication-Results: (mx.example.test) other.test; none\r\n\r\n").empty());
}

TEST(ClaimedResultsFinder, KeepsOnlyTheStartOfALongField) {
  // What follows the id is not kept past a few KB (no growth), and the field is claimed whole.
  const std::string message = "Authentication-Results: mx.example.test; " + std::string(100000, 'x') + "\r\n\r\nbody";
  ASSERT_EQ(claimed_fields(message).size(), 1u);
  EXPECT_EQ(claimed_fields(message)[0].size(), message.size() - 6);
}

}  // namespace
}  // namespace portcullis::checks
