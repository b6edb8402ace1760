// DKIM verification (checks/dkim_verifier) of messages an independent
// implementation signed (dkimpy, every canonicalization), DNS answers from
// a table; then the same messages changed, and keys broken every way.
#include "checks/dkim_verifier.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "checks/message_fields.hpp"
#include "unit/txt_table.hpp"

namespace portcullis::checks {
namespace {

// RSA 1024 (the least RFC 8301 allows), made for these tests.
const std::string rsa_record =
    "v=DKIM1; k=rsa; "
    "p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDHZouu5BiBafJm1OfnAJAuPe4IfeSvG95yqC4NHUYbEhoGTtuqDYDGc0WPp7UCG+oqiM4FjE"
    "LeoIb/QEsIe1Cq21S31b9BvXPcJEejt999djOqLdjdwHniAuThuW3Ugxtbto/hqTxDvN5RPJlDHnug2FFjLntH8BzbG/TKr/lx9wIDAQAB";

// The message dkimpy signed (LF lines here), and its signatures.
const std::string message = R"MSG(From: Alice <alice@example.test>
To: Bob <bob@example.net>
Subject: DKIM  test
Date: Tue, 01 Dec 2026 12:00:00 +0000

Hello Bob,
  this message  is signed.


)MSG";
// dkimpy, c=relaxed/relaxed
const std::string relaxed_relaxed = R"MSG(DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;
 i=@example.test; q=dns/txt; s=rsa; t=1796190049; h=from : to : subject
 : date; bh=d7L045xzzGG6R1Ak6D4ZGdoqE+cJH4B6yKwCm6UVybI=;
 b=enWVkv3r9X4T16SkNsZM0fDA0vk0Aqy96CUwB/UBhcT1iZf9CFKUBgmuBt8UzrtwmFi9K
 EukKRuj0uH98Q/t2LcId2eC308XEvtuz/542V2xKMvPmacfYMYMVEvOk9Qun4LFpX04RFhH
 swBSEJMb/0QCvaNkfLuKTdr1l3wXOcw=
)MSG" + message;
// dkimpy, c=relaxed/simple
const std::string relaxed_simple = R"MSG(DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.test;
 i=@example.test; q=dns/txt; s=rsa; t=1796190049; h=from : to : subject
 : date; bh=cHoDFOT9C3wprsLyF/MjXo4oIS1ckusUMAjuPYgoErA=;
 b=CTu/K/iAK6wjT3LmoYUm9Q6zqLtr0R1UiFemtwQvOIZyJjQkYJrwPrIsPa5knDahsPuXS
 RwZzv+QlcPg4taomBYEhkT7mLy/QFewG4AgTLi0cIU/XSgC8pq/uq2AO8H/Pc2JtsmI46Zy
 geWKqqH5E/4w6JiMq8OP6ONov4IrMPc=
)MSG" + message;
// dkimpy, c=simple/relaxed
const std::string simple_relaxed = R"MSG(DKIM-Signature: v=1; a=rsa-sha256; c=simple/relaxed; d=example.test;
 i=@example.test; q=dns/txt; s=rsa; t=1796190049; h=from : to : subject
 : date; bh=d7L045xzzGG6R1Ak6D4ZGdoqE+cJH4B6yKwCm6UVybI=;
 b=DZv0Y8CJtmPNae4KYIl1FQj3JKFhdG6REUiORUP1jHqGEX7sc4WqpJvp+cD0Vb6zsWyrs
 wrO/Y6v+30ih6mDUock6vFbgYpHj1Ni+A8+7rI1I2JhhwpKA/dKFXgWwcf4r73NJaos9DFq
 hR4BeaeJGXQdfVvKF2Eapgj6+DePsdo=
)MSG" + message;
// dkimpy, c=simple/simple
const std::string simple_simple = R"MSG(DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=example.test;
 i=@example.test; q=dns/txt; s=rsa; t=1796190049; h=from : to : subject
 : date; bh=cHoDFOT9C3wprsLyF/MjXo4oIS1ckusUMAjuPYgoErA=;
 b=QmXOFcBdS6HPMP2wir8eSsUtHLHjPnF0O1obwWnHqceokUICvCavjpXd3H0oqDhcK7GZc
 jzqgg6T2FWwjxjWv4MclbLkX59OIbPMtAVKy6V/6Q3c/EcQM3w2Idy6P3yuIqouaxiOWZix
 H8XtM6veCoo7fZz8mtCFF5QZCLPIaVQ=
)MSG" + message;

std::string verify(table& dns, const std::string& message_lf, unsigned max = 5, std::optional<std::int64_t> now = {}) {
  const dkim_verifier v(dns.lookup(), max);
  const auto results = v.verify_now(*message_store::wrap(std::make_shared<std::string>(crlf(message_lf))), now);
  std::string out;
  for (const auto& r : results) {
    if (!out.empty()) out += ',';
    out += to_string(r.result);  // (appended apart: GCC 12 warns, wrongly, of an overlapping copy in one expression)
    if (!r.problem.empty()) out += "(" + r.problem + ")";
  }
  return out;
}

TEST(DkimVerifier, DkimpySignaturesVerifyInEveryCanonicalization) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  EXPECT_EQ(verify(dns, simple_simple), "pass");
  EXPECT_EQ(verify(dns, simple_relaxed), "pass");
  EXPECT_EQ(verify(dns, relaxed_simple), "pass");
  EXPECT_EQ(verify(dns, relaxed_relaxed), "pass");
}

TEST(DkimVerifier, ChangesBreakWhatTheCanonicalizationKeeps) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  const auto respaced = [](std::string m) { return m.replace(m.find("this message"), 12, "this   message"); };
  EXPECT_EQ(verify(dns, respaced(simple_simple)), "fail(body hash did not verify)");
  EXPECT_EQ(verify(dns, respaced(relaxed_relaxed)), "pass");
  const auto recased = [](std::string m) { return m.replace(m.find("Subject:"), 8, "SUBJECT:"); };
  EXPECT_EQ(verify(dns, recased(simple_simple)), "fail(signature verification failed)");
  EXPECT_EQ(verify(dns, recased(relaxed_simple)), "pass");
  EXPECT_EQ(verify(dns, simple_simple + "\n\n"), "pass");  // empty lines at the end do not count
}

TEST(DkimVerifier, KeyTroubleAndItsResults) {
  table dns;
  EXPECT_EQ(verify(dns, relaxed_simple), "permerror(key not found in DNS)");
  dns.trouble("rsa._domainkey.example.test", dns::answer::status::timeout);
  EXPECT_EQ(verify(dns, relaxed_simple), "temperror(key DNS query failed)");
  dns.trouble("rsa._domainkey.example.test", dns::answer::status::failure);
  EXPECT_EQ(verify(dns, relaxed_simple), "temperror(key DNS query failed)");
  dns.trouble("rsa._domainkey.example.test", dns::answer::status::ok);  // NODATA
  EXPECT_EQ(verify(dns, relaxed_simple), "permerror(key not found in DNS)");
  dns.txt("rsa._domainkey.example.test", rsa_record);
  dns.answers["rsa._domainkey.example.test"].records.push_back({rsa_record});
  EXPECT_EQ(verify(dns, relaxed_simple), "permerror(multiple keys found)");
  dns.txt("rsa._domainkey.example.test", "v=DKIM1; p=");
  EXPECT_EQ(verify(dns, relaxed_simple), "permerror(key revoked)");
  dns.txt("rsa._domainkey.example.test", "v=DKIM1; p=QUJDRA==");
  EXPECT_EQ(verify(dns, relaxed_simple), "permerror(unable to apply public key)");
  dns.txt("rsa._domainkey.example.test", "v=DKIM1; k=ed25519; p=" + rsa_record.substr(rsa_record.find("p=") + 2));
  EXPECT_EQ(verify(dns, relaxed_simple), "permerror(signature-key type mismatch)");
}

// The keys of several signatures are asked for together: one after the
// other, five whose keys never answered held a check thread five [dns]
// timeouts. (Unless told not to: an attempt from cached answers only.)
TEST(DkimVerifier, TheKeysOfSeveralSignaturesAreAskedForTogether) {
  std::mutex m;
  int now = 0, most = 0;
  const txt_lookup slow = [&](const std::string&) {
    {
      std::lock_guard lock(m);
      most = std::max(most, ++now);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // (so that the lookups overlap)
    std::lock_guard lock(m);
    --now;
    dns::answer a;
    a.what = dns::answer::status::timeout;
    return a;
  };
  std::string signed_by_five;
  for (const char* s : {"s1", "s2", "s3", "s4", "s5"})
    signed_by_five += std::string("DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=") + s +
                      "; h=from; bh=AAAA; b=AAAA\n";
  const auto in = message_store::wrap(std::make_shared<std::string>(crlf(signed_by_five + message)));
  dkim_verifier v(slow, 5);
  auto results = v.verify_now(*in);
  ASSERT_EQ(results.size(), 5u);
  for (const auto& r : results) EXPECT_EQ(r.result, dkim_signature::kind::temperror);
  EXPECT_EQ(most, 5);
  most = 0;
  v.set_lookups_together(look_up_in_turn);
  results = v.verify_now(*in);
  EXPECT_EQ(most, 1);
}

TEST(DkimVerifier, TimesAreCheckedAgainstTheClock) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  // (the fixtures carry t=1796190049 and no x=)
  EXPECT_EQ(verify(dns, relaxed_simple, 5, 1796190049 - 3600), "permerror(signature timestamp in the future)");
  EXPECT_EQ(verify(dns, relaxed_simple, 5, 1796190049 - 60), "pass");
}

TEST(DkimVerifier, SignaturesPastTheLimitAreNotEvaluated) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  const std::string field = relaxed_simple.substr(0, relaxed_simple.find("From:"));
  EXPECT_EQ(verify(dns, field + field + relaxed_simple, 2),
            "pass,pass,neutral(1 more signature not evaluated (limit 2))");
  EXPECT_EQ(verify(dns, field + "Received: by x\n" + relaxed_simple, 5), "pass,pass");  // signed fields above: fine
}

// Past the limit, the signatures that may align with the From domain are
// evaluated first: a list's or forwarder's signatures on top no longer push
// out the author's, which DMARC needs (it was never evaluated, and DMARC
// failed for mail that passes elsewhere). The results stay in header order.
TEST(DkimVerifier, PastTheLimitSignaturesThatMayAlignGoFirst) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  std::string lists;
  for (int i = 0; i < 3; ++i) lists += "DKIM-Signature: v=1; a=rsa-sha256; d=list.test; s=s\n";
  const auto message = std::make_shared<std::string>(crlf(lists + relaxed_simple));
  const auto summary = [&](const dkim_verifier& v) {
    std::string out;
    for (const auto& r : v.verify_now(*message_store::wrap(message))) {
      if (!out.empty()) out += ',';
      out += to_string(r.result);  // (appended apart: GCC 12's false overlapping-copy warning)
      out += ":" + r.domain;
    }
    return out;
  };
  EXPECT_EQ(summary(dkim_verifier(dns.lookup(), 2)), "permerror:list.test,pass:example.test,neutral:");
  EXPECT_EQ(summary(dkim_verifier(dns.lookup(), 1)), "pass:example.test,neutral:");
  EXPECT_EQ(summary(dkim_verifier(dns.lookup(), 4)), "permerror:list.test,permerror:list.test,permerror:list.test,pass:example.test");
  // With the organizational domains (DMARC's), a signer of the author's
  // organization counts as aligned wherever it stands: first come first.
  const auto one_organization = [](std::string_view) { return std::string("example.test"); };
  EXPECT_EQ(summary(dkim_verifier(dns.lookup(), 1, one_organization)), "permerror:list.test,neutral:");
  // A parent or a subdomain of the author's domain may align too.
  const auto sub = std::make_shared<std::string>(crlf("DKIM-Signature: v=1; d=mail.example.test; s=s\n" + lists + relaxed_simple));
  const auto results = dkim_verifier(dns.lookup(), 2).verify_now(*message_store::wrap(sub));
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].domain, "mail.example.test");
  EXPECT_EQ(results[1].domain, "example.test");
  EXPECT_EQ(results[2].problem, "3 more signatures not evaluated (limit 2)");
}

// However many signatures a sender writes, the results (and what follows
// them: a log line, a metric, an Authentication-Results entry and a policy
// object each) are at most the limit and one entry counting the rest, with
// no name: each of 20,000 was one before.
TEST(DkimVerifier, SignaturesPastTheLimitAreOneEntry) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  std::string many;
  for (int i = 0; i < 20000; ++i) many += "DKIM-Signature: d=a.test; s=s\n";
  const dkim_verifier v(dns.lookup(), 2);
  const auto results = v.verify_now(*message_store::wrap(std::make_shared<std::string>(crlf(many + relaxed_simple))));
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].result, dkim_signature::kind::permerror);
  EXPECT_EQ(results[0].domain, "a.test");
  EXPECT_EQ(results[2].result, dkim_signature::kind::neutral);
  EXPECT_EQ(results[2].domain, "");
  EXPECT_EQ(results[2].selector, "");
  EXPECT_EQ(results[2].problem, "19999 more signatures not evaluated (limit 2)");
}

// A message whose header section is `header_size` bytes (its empty line
// included): the signed message with a padding field, then its body.
std::string with_header_of(std::size_t header_size) {
  const std::string signed_message = crlf(relaxed_simple);
  const auto body = signed_message.find("\r\n\r\n") + 2;  // the empty line's start
  const std::string pad_start = "X-Pad: ";
  const std::size_t pad = header_size - (body + 2) - pad_start.size() - 2;
  return signed_message.substr(0, body) + pad_start + std::string(pad, 'a') + "\r\n" + signed_message.substr(body);
}

std::shared_ptr<const message_store> spilled(const std::string& bytes) {
  auto m = std::make_shared<message_store>(std::make_shared<message_memory>(0),
                                           spill_settings{0, std::filesystem::path(::testing::TempDir())});
  EXPECT_TRUE(m->append(bytes) && m->seal());
  EXPECT_TRUE(m->spilled());
  return m;
}

// The header section is read, and kept, up to max_checked_header bytes: a
// message past them is not verified (a sender sent 38 MiB of it four times
// at once: each copy was held in memory, outside the message memory
// budget, several times over), in memory or spilled (read in pieces).
TEST(DkimVerifier, AHeaderSectionPastTheCapIsNotRead) {
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  const dkim_verifier v(dns.lookup(), 5);
  const auto summary = [&](const message_store& m) {
    std::string out;
    for (const auto& r : v.verify_now(m)) out += std::string(to_string(r.result)) + ":" + r.domain + "(" + r.problem + ")";
    return out;
  };
  const auto at_cap = with_header_of(max_checked_header), past_cap = with_header_of(max_checked_header + 1);
  ASSERT_EQ(past_cap.find("\r\n\r\n") + 4, max_checked_header + 1);
  EXPECT_EQ(summary(*message_store::wrap(std::make_shared<std::string>(at_cap))), "pass:example.test()");
  EXPECT_EQ(summary(*spilled(at_cap)), "pass:example.test()");
  const std::string too_large = "permerror:(header section too large (over 1024 KiB): not verified)";
  EXPECT_EQ(summary(*message_store::wrap(std::make_shared<std::string>(past_cap))), too_large);
  EXPECT_EQ(summary(*spilled(past_cap)), too_large);
  EXPECT_EQ(summary(*spilled(past_cap + std::string(3 * max_checked_header, 'b'))), too_large);
  // A message that is all header fields, and ends within the cap, is read whole.
  const std::string head_only = with_header_of(max_checked_header).substr(0, max_checked_header - 2);
  EXPECT_EQ(summary(*spilled(head_only)), "fail:example.test(body hash did not verify)");
}

TEST(DkimVerifier, AKeyChangedInDnsIsANewKey) {
  // The parsed-key cache is keyed by the record's key, not by its name.
  table dns;
  dns.txt("rsa._domainkey.example.test", rsa_record);
  const dkim_verifier v(dns.lookup(), 5);
  const auto once = [&] {
    return v.verify_now(*message_store::wrap(std::make_shared<std::string>(crlf(relaxed_simple))))[0].result;
  };
  EXPECT_EQ(once(), dkim_signature::kind::pass);
  dns.txt("rsa._domainkey.example.test",
          "v=DKIM1; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMEtodjnu4evz1P4ENGIC7S/f0/HZW96qkGwLrpf66sfZxNd4Utvs2Uq43t8Btz"
          "A7j+RkOVB2MtRi829mxPUuwECAwEAAQ==");
  EXPECT_EQ(v.verify_now(*message_store::wrap(std::make_shared<std::string>(crlf(relaxed_simple))))[0].problem,
            "signing key too small");  // (a 512-bit key, RFC 8301)
  dns.txt("rsa._domainkey.example.test", rsa_record);
  EXPECT_EQ(once(), dkim_signature::kind::pass);
}

}  // namespace
}  // namespace portcullis::checks
