// ARC (checks/arc_verifier, checks/arc_sealer): chains an independent
// implementation made (dkimpy) validated, then changed and broken every way
// RFC 8617 §5.2 names; DNS answers from a table; and our own seals, which
// our verifier must take (dkimpy checks them too, tests/e2e/test_arc.py).
#include <gtest/gtest.h>

#include <fstream>

#include "checks/arc_sealer.hpp"
#include "checks/arc_sets.hpp"
#include "checks/arc_verifier.hpp"
#include "checks/dkim_crypto.hpp"
#include "checks/message_fields.hpp"
#include "unit/txt_table.hpp"

namespace portcullis::checks {
namespace {

// RSA 1024 (the least RFC 8301 allows), made for these tests: the sealers'
// key (the private one seals in the sealer tests).
const std::string arc_record =
    "v=DKIM1; k=rsa; "
    "p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC7xod2RST4vHHuUdAMG9+17+YGLQOPegpVFozMOrBToM7Wk63dMHyL4CQXK24ddAG5APc2OCl"
    "vAgk2bVVvaWr73iDEHqtlm6XWpM/PCjH+xHeW7COO2Qv737kJLBAQ9IQ2J1NFWncpxdoDrRraSujKLAE8BFi6LOi55L5b8tbT6QIDAQAB";
const std::string arc_key = R"KEY(-----BEGIN PRIVATE KEY-----
MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBALvGh3ZFJPi8ce5R
0Awb37Xv5gYtA496ClUWjMw6sFOgztaTrd0wfIvgJBcrbh10AbkA9zY4KW8CCTZt
VW9pavveIMQeq2Wbpdakz88KMf7Ed5bsI47ZC/vfuQksEBD0hDYnU0VadynF2gOt
GtpK6MosATwEWLos6Lnkvlvy1tPpAgMBAAECgYAWodAT7jONk1D8E3pK61UkXZzQ
474JHgF+ze/8cZptCfXEIRqUjVKFnWdcL4zfGetXPAmPzGcaDRnFKJpiikctjVVb
6Xj6R3h//SK3FFNt1Rv4wOnNr8P/3+E7uSu4styejHUezre0j3h5MoQXiUSsCN7h
mOQHlRwa9/0+HHWxAQJBAOtQKrzqtcP7Y8YnhCbg9EwHNsnQQMxOl2Y932vAFsaB
sVRhbQKi6iMxUBuGMWiqDaai3poL8yrqfPHgo5rCDmECQQDMSIFOqtGZJ9t3SCCo
UL58ZjQYAFFm4T+pYNwV9JZwFPJEa4Ahbg2v6cowzCzHA73t7F3gWJ+w4hJswAew
/GKJAkAIwPS2Dm0wmzt89Z9e6uNrqKELJOokL5BGR2r2UTEHtW9pWi55+KGJKZ53
R6iy4hCb8Fcjl+o14H9BaD/t0+ZBAkEAwMsw1iialXurQYDd6VwC2m6ufXRXXsv4
hAc4zrO+AtuR5Ya7L1GpMztmqfUX0V8zscbgtimN1KcXknENETiwWQJBAKLzClHN
fB++RqV0QBMX42aC4Nhh8aXE3i8ovEfGpcVajuH7YfYP4QVMS0ir6Tova/Zj825X
bIEtRpbGIsZw1SA=
-----END PRIVATE KEY-----
)KEY";

// A message a mailing list (lists.test), then a relay (relay.test) forwarded,
// each sealing it with dkimpy (LF lines here); `one_hop` is the list's copy.
const std::string two_hops = R"MSG(ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=relay.test; s=arc; t=1796190049;
 b=P/9y3hJ5Lv35oTH3wjY2J24R1dNN/MuyxA5M5Fs4rzLORKCuU8QMHFZC6YbwWZ5uaDPXQ
 2Ky28QobnvMZOTmrGBIA4Ab+gfWwrieKrNDEeQkpa27QnbZIXelFTx+HRRNF2wEtuLoc8PA
 QGBbVJCJWRIkocC6vBKAbwc42OluFdU=
ARC-Message-Signature: i=2; a=rsa-sha256; c=relaxed/relaxed;
 d=relay.test; s=arc; t=1796190049; h=from : to : subject : date :
 from; bh=ei/VhU8peFzE7ZHI6weY88Pv2qe7ipjSntl3Gj+00aQ=;
 b=Lbzrfnoy1TtQZik4vnBE0VJT0cxpZz0qBKPKfC5vyYDvuZ3/QciPTQRc+MFNg8SRSyhdL
 lcdEpxPa2C5nLWVRDNham7WRj/w6K4iVzCVTHpuzXojVnbQ+/G9CvhxqJSfXUeXZtHMhTQ6
 FmT50tbu6FqnprjEwuJKplnZl7p57Is=
ARC-Authentication-Results: i=2; relay.test; dkim=none;
  arc=pass
Authentication-Results: relay.test; dkim=none; arc=pass
ARC-Seal: i=1; cv=none; a=rsa-sha256; d=lists.test; s=arc; t=1796190049;
 b=mZGq3H+s8np8Q77MHKL5y+4adPqsthJ+X8xdX+q4YmoEy/Pj3beIhm3CDEMSGlBAWQNW1
 zIQTruAHvgGdt5OcJzBs1Ejovqnyliw6f3V9LVgpbbrageXldnz8WrG/NDuwe27kbBwf7pY
 oy+ii1+NncCdjNyIau7kpRFAyyMheUw=
ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed;
 d=lists.test; s=arc; t=1796190049; h=from : to : subject : date :
 from; bh=ei/VhU8peFzE7ZHI6weY88Pv2qe7ipjSntl3Gj+00aQ=;
 b=PFPGJclvuHYOPWi/UMgAi3VFgUgBe6TyjJ8zp4Kk6tsm7HJrzt0sOG06IErb26FK96kT7
 FmBf8acIHiA9kohHul64D4DlW+BsKdsh4L6ifiWRPPbRgBwiPgdQu4no0aFeuAxEHhEetHD
 jFIjK/Pa0pPTrpGcteN9VeqNs8pXDB4=
ARC-Authentication-Results: i=1; lists.test; dkim=none
Authentication-Results: lists.test; dkim=none
From: Alice <alice@example.test>
To: list@lists.test
Subject: ARC  test
Date: Wed, 02 Dec 2026 12:00:00 +0000

Hello list.
)MSG";
const std::string one_hop = two_hops.substr(two_hops.find("ARC-Seal: i=1"));
const std::string plain = two_hops.substr(two_hops.find("From: Alice"));

table sealers_dns() {
  table dns;
  dns.txt("arc._domainkey.lists.test", arc_record);
  dns.txt("arc._domainkey.relay.test", arc_record);
  dns.txt("seal._domainkey.mx.test", arc_record);
  return dns;
}

std::string validate(table& dns, const std::string& message_lf, std::chrono::milliseconds budget = arc_lookup_budget) {
  const arc_verifier v(dns.lookup(), budget);
  const auto r = v.verify_now(*message_store::wrap(std::make_shared<std::string>(crlf(message_lf))));
  std::string out = std::string(to_string(r.result)) + " i=" + std::to_string(r.instances);
  for (const auto& d : r.sealers) out += " " + d;
  if (!r.problem.empty()) out += " (" + r.problem + ")";
  return out;
}

// Our sealer: mx.test, selector seal, with the key above (written to `key_file` in the test folder).
std::unique_ptr<arc_sealer> mx_test_sealer(const std::string& key_file) {
  const auto path = std::filesystem::path(::testing::TempDir()) / key_file;
  std::ofstream(path) << arc_key;
  arc_seal_config c;
  c.enabled = true;
  c.domain = "mx.test";
  c.selector = "seal";
  c.key_file = path;
  return std::make_unique<arc_sealer>(c, "mx.test");
}

// The ArcSealer fixture's sealer, for tests of the verifier.
class ArcSealerForTests {
 public:
  const arc_sealer& get() const { return *sealer_; }

 private:
  std::unique_ptr<arc_sealer> sealer_ = mx_test_sealer("arc_test_key_v.pem");
};

arc_result checked_pass(unsigned instances) {
  arc_result r;
  r.result = arc_result::kind::pass;
  r.instances = instances;
  return r;
}

std::string replaced(std::string m, std::string_view from, std::string_view to) {
  return m.replace(m.find(from), from.size(), to);
}

TEST(ArcVerifier, NoArcFieldsIsNone) {
  table dns = sealers_dns();
  EXPECT_EQ(validate(dns, plain), "none i=0");
}

TEST(ArcVerifier, DkimpyChainsPass) {
  table dns = sealers_dns();
  EXPECT_EQ(validate(dns, one_hop), "pass i=1 lists.test");
  EXPECT_EQ(validate(dns, two_hops), "pass i=2 lists.test relay.test");
  // Fields added on top later, outside every signature, change nothing.
  EXPECT_EQ(validate(dns, "Received: from somewhere\n" + two_hops), "pass i=2 lists.test relay.test");
}

TEST(ArcVerifier, ChangesAfterASealFailIt) {
  table dns = sealers_dns();
  EXPECT_EQ(validate(dns, replaced(two_hops, "Hello list.", "Hello all.")),
            "fail i=2 lists.test relay.test (ARC-Message-Signature[2] did not validate: body hash did not verify)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "Subject: ARC  test", "Subject: ARC test!")),
            "fail i=2 lists.test relay.test "
            "(ARC-Message-Signature[2] did not validate: signature verification failed)");
  // The list's results changed: only the seals cover them.
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=1; lists.test; dkim=none", "i=1; lists.test; dkim=pass")),
            "fail i=2 lists.test relay.test (ARC-Seal[2] did not validate: signature verification failed)");
  // Relaxed canonicalization: refolding and respacing a sealed field is no change.
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=1; lists.test; dkim=none", "i=1;\n   lists.test;   dkim=none")),
            "pass i=2 lists.test relay.test");
}

TEST(ArcVerifier, MalformedChainsFail) {  // RFC 8617 §5.2 steps 2 to 4
  table dns = sealers_dns();
  const auto without_seal_2 = two_hops.substr(two_hops.find("ARC-Message-Signature: i=2"));
  EXPECT_EQ(validate(dns, without_seal_2), "fail i=0 (incomplete ARC set for instance 2)");
  EXPECT_EQ(validate(dns, "ARC-Authentication-Results: i=2; x; dkim=none\n" + two_hops),
            "fail i=0 (more than one ARC-Authentication-Results for instance 2)");
  EXPECT_EQ(validate(dns, "ARC-Authentication-Results: i=4; x; dkim=none\n" + two_hops),
            "fail i=0 (incomplete ARC set for instance 3)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=2; cv=pass", "i=2; cv=none")),
            "fail i=0 (ARC-Seal[2] reported invalid status none)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=1; cv=none", "i=1; cv=pass")),
            "fail i=0 (ARC-Seal[1] reported invalid status pass)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=2; cv=pass", "i=2; cv=fail")),
            "fail i=0 (ARC-Seal[2] reported failure, the chain is terminated)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=2; cv=pass", "i=51; cv=pass")),
            "fail i=0 (ARC-Seal: instance (i=) invalid)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "ARC-Authentication-Results: i=1;", "ARC-Authentication-Results: 1;")),
            "fail i=0 (ARC-Authentication-Results without a valid instance (i=))");
  EXPECT_EQ(validate(dns, replaced(two_hops, "i=2; cv=pass;", "i=2; cv=pass; h=from;")),
            "fail i=0 (ARC-Seal: h= in an ARC-Seal)");
  EXPECT_EQ(validate(dns, replaced(two_hops, "h=from : to", "h=arc-seal : from : to")),
            "fail i=0 (ARC-Message-Signature: header list covers ARC-Seal)");
}

TEST(ArcVerifier, KeyTroubleFailsTheChain) {
  table dns = sealers_dns();
  dns.answers.erase("arc._domainkey.lists.test");
  EXPECT_EQ(validate(dns, two_hops),
            "fail i=2 lists.test relay.test (ARC-Seal[1] did not validate: key not found in DNS)");
  dns.trouble("arc._domainkey.relay.test", dns::answer::status::timeout);
  EXPECT_EQ(validate(dns, two_hops),
            "fail i=2 lists.test relay.test (ARC-Message-Signature[2] did not validate: key DNS query failed)");
  // The lookups' time budget, spent before the first one.
  table good = sealers_dns();
  EXPECT_EQ(validate(good, two_hops, std::chrono::milliseconds(-1)),
            "fail i=2 lists.test relay.test "
            "(ARC-Message-Signature[2] did not validate: not verified: key lookups took over 0 s in all)");
}

TEST(ArcVerifier, AMessageOfHeaderFieldsOnly) {
  table dns = sealers_dns();
  const auto header_only = two_hops.substr(0, two_hops.find("\n\n") + 1);
  EXPECT_EQ(validate(dns, header_only),
            "fail i=2 lists.test relay.test (ARC-Message-Signature[2] did not validate: body hash did not verify)");
}

// Past max_checked_header bytes, the header section is neither read on nor
// kept (DKIM's limit too): the chain is not validated.
TEST(ArcVerifier, AHeaderSectionPastTheCapIsNotRead) {
  table dns = sealers_dns();
  const std::string pad = "X-Pad: " + std::string(max_checked_header, 'a') + "\n";
  EXPECT_EQ(validate(dns, pad + two_hops), "fail i=0 (header section too large (over 1024 KiB): not validated)");
  EXPECT_EQ(validate(dns, "X-Pad: " + std::string(max_checked_header / 2, 'a') + "\n" + two_hops),
            "pass i=2 lists.test relay.test");
}

// Each seal i signs sets 1 to i (§5.1.1): a long chain's sets are
// canonicalized once each, not once per seal above them.
TEST(ArcVerifier, TheSealsOfALongChainValidate) {
  table dns = sealers_dns();
  std::string m = crlf(plain);
  ArcSealerForTests sealer;
  for (unsigned i = 1; i <= max_arc_instance; ++i) {
    arc_result chain;
    chain.result = i == 1 ? arc_result::kind::none : arc_result::kind::pass;
    chain.instances = i - 1;
    const std::string prefix = "Authentication-Results: mx.test; arc=" + std::string(to_string(chain.result)) + " (" +
                               std::string(1000, 'x') + ")\r\n";
    std::string why_not;
    const auto set = sealer.get().seal_now(prefix, *message_store::wrap(std::make_shared<std::string>(m)), chain, why_not);
    ASSERT_FALSE(set.empty()) << i << ": " << why_not;
    m = set + prefix + m;
  }
  EXPECT_EQ(validate(dns, m).substr(0, 10), "pass i=50 ");
}

// What the newest set's ARC-Authentication-Results report as passed: the
// last intermediary's findings, which DMARC may take (arc_aligned).
TEST(ArcVerifier, TheNewestSetsPassesAreReported) {
  table dns = sealers_dns();
  const arc_verifier v(dns.lookup());
  const auto passes = [&](const std::string& message_lf) {
    std::vector<reported_pass> out{{"stale", "entry"}};
    const auto r = v.verify_now(*message_store::wrap(std::make_shared<std::string>(crlf(message_lf))), std::nullopt, &out);
    std::string text = std::string(to_string(r.result)) + ":";
    for (const auto& [method, domain] : out) text += " " + method + "=" + domain;
    return text;
  };
  EXPECT_EQ(passes(two_hops), "pass:");  // (dkim=none; arc= is not reported)
  EXPECT_EQ(passes(plain), "none: stale=entry");  // untouched unless the chain passes
  ArcSealerForTests sealer;
  std::string why_not;
  const auto m = message_store::wrap(std::make_shared<std::string>(crlf(two_hops)));
  const std::string results = "Authentication-Results: mx.test; arc=pass; spf=pass smtp.mailfrom=b@Bounce.Example.test;"
                              " dkim=pass header.d=example.test header.s=s; dkim=fail header.d=evil.test;"
                              " dmarc=pass (p=reject) header.from=example.test\r\n";
  const auto third = sealer.get().seal_now(results, *m, checked_pass(2), why_not);
  ASSERT_FALSE(third.empty()) << why_not;
  EXPECT_EQ(passes(third + crlf(two_hops)),
            "pass: spf=bounce.example.test dkim=example.test dmarc=example.test");
  // A failing chain reports nothing: its results are no one's word.
  EXPECT_EQ(passes(replaced(third + crlf(two_hops), "Hello list.", "Hello all.")).substr(0, 5), "fail:");
}

// Our sealer, with the key above as mx.test's.
class ArcSealer : public ::testing::Test {
 protected:
  void SetUp() override { sealer = mx_test_sealer("arc_test_key.pem"); }
  // Our Authentication-Results and the message as received (LF lines), sealed; "" with why_not set when not.
  std::string seal(const std::string& message_lf, std::optional<arc_result> chain, std::string results = "mx.test; arc=pass") {
    const std::string prefix = "Authentication-Results: " + results + "\r\n";
    const auto m = message_store::wrap(std::make_shared<std::string>(crlf(message_lf)));
    why_not.clear();
    const auto set = sealer->seal_now(prefix, *m, chain, why_not);
    return set.empty() ? "" : set + prefix + crlf(message_lf);
  }
  static arc_result checked(arc_result::kind k, unsigned instances) {
    arc_result r;
    r.result = k;
    r.instances = instances;
    return r;
  }
  std::unique_ptr<arc_sealer> sealer;
  std::string why_not;
};

// (Sealed messages are CRLF already; crlf() adds CRs to bare LFs only.)
TEST_F(ArcSealer, OurSealsValidate) {
  table dns = sealers_dns();
  const auto first = seal(plain, checked(arc_result::kind::none, 0), "mx.test; dkim=none");
  ASSERT_FALSE(first.empty()) << why_not;
  EXPECT_TRUE(first.starts_with("ARC-Seal: i=1; cv=none; a=rsa-sha256; d=mx.test; s=seal; t=")) << first;
  EXPECT_NE(first.find("ARC-Authentication-Results: i=1; mx.test; dkim=none\r\n"), std::string::npos) << first;
  EXPECT_EQ(validate(dns, first), "pass i=1 mx.test");
  const auto third = seal(two_hops, checked(arc_result::kind::pass, 2));
  ASSERT_FALSE(third.empty()) << why_not;
  EXPECT_TRUE(third.starts_with("ARC-Seal: i=3; cv=pass;")) << third;
  EXPECT_EQ(validate(dns, third), "pass i=3 lists.test relay.test mx.test");
  EXPECT_EQ(validate(dns, replaced(third, "Hello list.", "Hello all.")),
            "fail i=3 lists.test relay.test mx.test "
            "(ARC-Message-Signature[3] did not validate: body hash did not verify)");
}

TEST_F(ArcSealer, AFailedChainIsSealedAsSuch) {  // RFC 8617 §5.1.2
  table dns = sealers_dns();
  const auto sealed = seal(replaced(two_hops, "Hello list.", "Hello all."), checked(arc_result::kind::fail, 2),
                           "mx.test; arc=fail");
  ASSERT_FALSE(sealed.empty()) << why_not;
  EXPECT_TRUE(sealed.starts_with("ARC-Seal: i=3; cv=fail;")) << sealed;
  EXPECT_EQ(validate(dns, sealed), "fail i=0 (ARC-Seal[3] reported failure, the chain is terminated)");
  // Our seal covers our set alone (the older sets are not vouched for).
  const auto ams_at = sealed.find("ARC-Message-Signature: i=3");
  const auto aar_at = sealed.find("ARC-Authentication-Results: i=3");
  const auto end = sealed.find("Authentication-Results: mx.test");
  const std::string as = sealed.substr(0, ams_at), ams = sealed.substr(ams_at, aar_at - ams_at),
                    aar = sealed.substr(aar_at, end - aar_at);
  dkim_signature_fields tags;
  ASSERT_EQ(parse_dkim_signature(as.substr(as.find(':') + 1), tags, dkim_signature_kind::arc_seal), "");
  dkim_key_cache keys;
  const auto key = find_dkim_key(dns.lookup(), keys, tags).key;
  ASSERT_TRUE(key);
  EXPECT_TRUE(signature_verifies(*key, arc_seal_data({{aar, ams, as}}), base64_decode(tags.signature)));
}

TEST_F(ArcSealer, ChainsThatMayNotBeContinued) {
  EXPECT_EQ(seal(plain, std::nullopt), "");
  EXPECT_EQ(why_not, "the chain it came with was not validated ([checks] arc)");
  EXPECT_EQ(seal(replaced(two_hops, "i=2; cv=pass", "i=2; cv=fail"), checked(arc_result::kind::fail, 0)), "");
  EXPECT_EQ(why_not, "the chain it came with ended in failure");
  EXPECT_EQ(seal("ARC-Authentication-Results: i=50; x; none\n" + plain, checked(arc_result::kind::fail, 0)), "");
  EXPECT_EQ(why_not, "the chain it came with has 50 sets already");
  EXPECT_EQ(seal(two_hops, checked(arc_result::kind::pass, 1)), "");
  EXPECT_EQ(why_not, "the chain changed since it was validated");
  EXPECT_EQ(seal(plain, checked(arc_result::kind::none, 0), "elsewhere.test; dkim=none"), "");
  EXPECT_EQ(why_not, "no Authentication-Results of ours to carry");
}

}  // namespace
}  // namespace portcullis::checks
