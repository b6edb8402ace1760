// The DKIM-Signature field and the key record, parsed (checks/dkim_fields).
#include "checks/dkim_fields.hpp"

#include <gtest/gtest.h>

using namespace portcullis::checks;

namespace {

std::string tags_of(std::string_view list) {
  std::string error;
  const auto tags = parse_dkim_tags(list, error);
  if (!tags) return "error: " + error;
  std::string out;
  for (const auto& [n, v] : *tags) out += std::string(n) + "=[" + std::string(v) + "]";
  return out;
}

std::string signature_problem(std::string_view value) {
  dkim_signature_fields f;
  return parse_dkim_signature(value, f);
}

const std::string good = "v=1; a=rsa-sha256; d=Example.TEST; s=sel; h=From:To; bh=AAAA; b=QUJD\r\n RA==";

std::string with(std::string_view from, std::string_view to) {
  std::string s = good;
  s.replace(s.find(from), from.size(), to);
  return s;
}

}  // namespace

TEST(DkimFields, TagLists) {  // RFC 6376 §3.2
  EXPECT_EQ(tags_of("a=1; b = two words ;c=\r\n\t3;"), "a=[1]b=[two words]c=[3]");
  EXPECT_EQ(tags_of(""), "");
  EXPECT_EQ(tags_of(" ; "), "error: an empty tag");
  EXPECT_EQ(tags_of("a=1;;b=2"), "error: an empty tag");
  EXPECT_EQ(tags_of("a=1; a=2"), "error: the tag a= twice");
  EXPECT_EQ(tags_of("a=1; A=2"), "a=[1]A=[2]");  // tag names are case-sensitive
  EXPECT_EQ(tags_of("a"), "error: a tag without \"=\"");
  EXPECT_EQ(tags_of("1a=x"), "error: a malformed tag name");
  EXPECT_EQ(tags_of("a b=x"), "error: a malformed tag name");
  EXPECT_EQ(tags_of("x_y9=; z=a=b"), "x_y9=[]z=[a=b]");
}

TEST(DkimFields, ASignature) {
  dkim_signature_fields f;
  ASSERT_EQ(parse_dkim_signature(good + "; c=relaxed; i=joe@news.example.test; l=10; t=5; x=6; q=dns/txt", f), "");
  EXPECT_EQ(f.algorithm, "rsa-sha256");
  EXPECT_EQ(f.domain, "example.test");
  EXPECT_EQ(f.selector, "sel");
  EXPECT_EQ(f.headers, (std::vector<std::string>{"from", "to"}));
  EXPECT_EQ(f.signature, "QUJDRA==");
  EXPECT_EQ(f.header_canon, dkim_canonicalization::relaxed);
  EXPECT_EQ(f.body_canon, dkim_canonicalization::simple);  // c= with one word: the body's is simple
  EXPECT_EQ(f.identity_domain, "news.example.test");
  EXPECT_EQ(f.length, 10u);
  EXPECT_EQ(f.timestamp, 5);
  EXPECT_EQ(f.expires, 6);
}

TEST(DkimFields, BrokenSignatures) {
  EXPECT_EQ(signature_problem(with("v=1", "v=2")), "unsupported signature version");
  EXPECT_EQ(signature_problem(with("v=1; ", "")), "version missing");
  EXPECT_EQ(signature_problem(with("rsa-sha256", "rsa-sha1")), "rsa-sha1 is not accepted (RFC 8301)");
  EXPECT_EQ(signature_problem(with("rsa-sha256", "dsa-sha256")), "signature algorithm invalid");
  EXPECT_EQ(signature_problem(with("b=QUJD\r\n RA==", "b=")), "signature data empty");
  EXPECT_EQ(signature_problem(with("b=QUJD\r\n RA==", "b=QUJ")), "signature data corrupt");
  EXPECT_EQ(signature_problem(with("bh=AAAA", "bh=A=AA")), "body hash corrupt");
  EXPECT_EQ(signature_problem(with("h=From:To", "h=To")), "header list does not cover From");
  EXPECT_EQ(signature_problem(with("h=From:To", "h=From::To")), "header list invalid");
  EXPECT_EQ(signature_problem(with("d=Example.TEST", "d=exa mple.test")), "domain tag invalid");
  EXPECT_EQ(signature_problem(with("s=sel", "s=")), "selector tag empty");
  EXPECT_EQ(signature_problem(good + "; c=relaxed/loose"), "invalid body canonicalization");
  EXPECT_EQ(signature_problem(good + "; i=joe@example.net"), "invalid domain coverage");
  EXPECT_EQ(signature_problem(good + "; i=joe@xexample.test"), "invalid domain coverage");
  EXPECT_EQ(signature_problem(good + "; i=joe"), "identity (i=) invalid");
  EXPECT_EQ(signature_problem(good + "; l=-1"), "body length value invalid");
  EXPECT_EQ(signature_problem(good + "; q=http"), "query method invalid");
  EXPECT_EQ(signature_problem(good + "; t=soon"), "timestamp (t=) invalid");
  EXPECT_EQ(signature_problem(good + "; v=1"), "signature syntax: the tag v= twice");
  // A broken signature still says whose it is.
  dkim_signature_fields f;
  EXPECT_NE(parse_dkim_signature(with("v=1", "v=9"), f), "");
  EXPECT_EQ(f.domain, "example.test");
  EXPECT_EQ(f.selector, "sel");
}

// RFC 8617 §4.1.2, §4.1.3: ARC's signatures take DKIM's tags, with i= the instance.
TEST(DkimFields, ArcSignatures) {
  const std::string ams = "i=2; a=rsa-sha256; c=relaxed/relaxed; d=lists.test; s=arc; h=from:to; bh=AAAA; b=QUJD";
  dkim_signature_fields f;
  ASSERT_EQ(parse_dkim_signature(ams, f, dkim_signature_kind::arc_message), "");
  EXPECT_EQ(f.instance, 2u);
  EXPECT_EQ(f.identity_domain, "lists.test");
  const auto message_problem = [](const std::string& value) {
    dkim_signature_fields g;
    return parse_dkim_signature(value, g, dkim_signature_kind::arc_message);
  };
  EXPECT_EQ(message_problem(ams.substr(5)), "instance missing");
  EXPECT_EQ(message_problem("i=0" + ams.substr(3)), "instance (i=) invalid");
  EXPECT_EQ(message_problem("i=51" + ams.substr(3)), "instance (i=) invalid");
  EXPECT_EQ(message_problem("i=x" + ams.substr(3)), "instance (i=) invalid");
  EXPECT_EQ(message_problem(ams + "; v=1"), "");  // an unknown tag to ARC: ignored
  EXPECT_EQ(message_problem(ams.substr(0, ams.find("h=")) + "h=from:arc-seal; bh=AAAA; b=QUJD"),
            "header list covers ARC-Seal");

  const std::string seal = "i=1; cv=none; a=rsa-sha256; d=lists.test; s=arc; t=12; b=QUJD";
  dkim_signature_fields g;
  ASSERT_EQ(parse_dkim_signature(seal, g, dkim_signature_kind::arc_seal), "");
  EXPECT_EQ(g.chain_status, "none");
  EXPECT_EQ(g.header_canon, dkim_canonicalization::relaxed);
  EXPECT_EQ(g.timestamp, 12);
  const auto seal_problem = [](const std::string& value) {
    dkim_signature_fields h;
    return parse_dkim_signature(value, h, dkim_signature_kind::arc_seal);
  };
  EXPECT_EQ(seal_problem(seal.substr(0, 5) + seal.substr(14)), "chain validation status missing");
  EXPECT_EQ(seal_problem("i=1; cv=maybe" + seal.substr(12)), "chain validation status (cv=) invalid");
  EXPECT_EQ(seal_problem(seal + "; h=from"), "h= in an ARC-Seal");
  EXPECT_EQ(seal_problem("i=1; cv=none; a=rsa-sha256; s=arc; b=QUJD"), "domain tag missing");
}

TEST(DkimFields, ArcResultsInstance) {  // RFC 8617 §4.1.1
  EXPECT_EQ(arc_results_instance("i=1; mx.test; spf=pass"), 1u);
  EXPECT_EQ(arc_results_instance(" I = 12 ;mx.test"), 12u);
  EXPECT_EQ(arc_results_instance("\r\n\ti=3;\r\n\tmx.test"), 3u);
  EXPECT_EQ(arc_results_instance("i=0; mx.test"), std::nullopt);
  EXPECT_EQ(arc_results_instance("i=51; mx.test"), std::nullopt);
  EXPECT_EQ(arc_results_instance("i=1 mx.test"), std::nullopt);
  EXPECT_EQ(arc_results_instance("mx.test; i=1;"), std::nullopt);
  EXPECT_EQ(arc_results_instance("i=; mx.test"), std::nullopt);
}

TEST(DkimFields, Times) {
  dkim_signature_fields f;
  f.timestamp = 1000;
  f.expires = 2000;
  EXPECT_EQ(check_dkim_times(f, 1500), "");
  EXPECT_EQ(check_dkim_times(f, 2001), "signature expired");
  EXPECT_EQ(check_dkim_times(f, 1000 - 301), "signature timestamp in the future");
  EXPECT_EQ(check_dkim_times(f, 1000 - 300), "");  // clocks may differ by five minutes
  f.expires = 999;
  EXPECT_EQ(check_dkim_times(f, 998), "signature timestamp order error");
  f.expires = 1000;  // equal: x= must be greater
  EXPECT_EQ(check_dkim_times(f, 1000), "signature timestamp order error");
}

TEST(DkimFields, KeyRecords) {  // RFC 6376 §3.6.1, RFC 8463
  dkim_key_fields k;
  ASSERT_EQ(parse_dkim_key("v=DKIM1; k=ed25519; t=y:s; h=sha1:sha256; s=email:*; p=QUJD\r\n RA==", k), "");
  EXPECT_EQ(k.key_type, dkim_key_fields::type::ed25519);
  EXPECT_TRUE(k.testing);
  EXPECT_TRUE(k.strict);
  EXPECT_EQ(k.key, "QUJDRA==");
  dkim_key_fields plain;
  ASSERT_EQ(parse_dkim_key("p=QUJDRA==", plain), "");  // no v=, no k=: an RSA key
  EXPECT_EQ(plain.key_type, dkim_key_fields::type::rsa);
  const auto problem = [](std::string_view record) {
    dkim_key_fields f;
    return parse_dkim_key(record, f);
  };
  EXPECT_EQ(problem("v=DKIM1; p="), "key revoked");
  EXPECT_EQ(problem("v=DKIM2; p=QUJDRA=="), "unknown key version");
  EXPECT_EQ(problem("k=dsa; p=QUJDRA=="), "unknown key type");
  EXPECT_EQ(problem("h=sha1; p=QUJDRA=="), "signature-key hash mismatch");
  EXPECT_EQ(problem("s=tlsrpt; p=QUJDRA=="), "not an e-mail key");
  EXPECT_EQ(problem("v=spf1 -all"), "unknown key version");  // (an SPF record where a key should be)
  EXPECT_EQ(problem("p=QUJDRA==; junk"), "key record syntax: a tag without \"=\"");
  EXPECT_EQ(problem("v=DKIM1"), "key record without p=");
  EXPECT_EQ(problem("p=QUJDR"), "key data corrupt");
}
