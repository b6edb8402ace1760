// DMARC evaluation (RFC 7489) with real libopendmarc and libpsl, the DNS
// answers given by a table (the e2e tests use a real DNS server and compare
// with an independent implementation).
#include "checks/dmarc_evaluator.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "checks/message_fields.hpp"

using namespace portcullis;
using namespace portcullis::checks;
using kind = dmarc_result::kind;
using policy = dmarc_result::policy_kind;

namespace {

struct zone {
  std::map<std::string, std::vector<std::string>> txt;  // name -> TXT records
  std::map<std::string, dns::answer::status> trouble;  // name -> timeout or failure
  std::chrono::milliseconds trouble_takes{0};  // how long a lookup in trouble takes to fail
  mutable std::mutex asking;  // (several author domains are looked up at once)
  mutable std::vector<std::string> asked;

  dns::answer operator()(const std::string& name) const {
    {
      std::lock_guard lock(asking);
      asked.push_back(name);
    }
    dns::answer a;
    if (auto t = trouble.find(name); t != trouble.end()) {
      std::this_thread::sleep_for(trouble_takes);
      a.what = t->second;
      return a;
    }
    auto it = txt.find(name);
    if (it == txt.end()) {
      a.what = dns::answer::status::nxdomain;
      return a;
    }
    a.what = dns::answer::status::ok;
    for (const auto& r : it->second) a.records.push_back({r, 0});
    return a;
  }
};

spf_result spf(spf_result::kind k, std::string domain) {
  spf_result r;
  r.result = k;
  r.domain = std::move(domain);
  return r;
}

dkim_results dkim(dkim_signature::kind k, std::string domain) {
  dkim_signature s;
  s.result = k;
  s.domain = std::move(domain);
  s.selector = "s";
  return {s};
}

struct fixture {
  std::shared_ptr<zone> dns = std::make_shared<zone>();
  unsigned draw = 50;
  dmarc_evaluator evaluator{[z = dns](const std::string& n) { return (*z)(n); }, [this] { return draw; }};

  dmarc_result from(const std::string& value, const std::optional<spf_result>& s = std::nullopt,
                    const std::optional<dkim_results>& d = dkim_results{}) {
    return evaluator.evaluate({value}, s, d);
  }
};

}  // namespace

TEST(DmarcEvaluator, OrganizationalDomainsByThePublicSuffixList) {
  fixture f;
  EXPECT_EQ(f.evaluator.organizational_domain("mail.example.co.uk"), "example.co.uk");
  EXPECT_EQ(f.evaluator.organizational_domain("Example.COM"), "example.com");
  EXPECT_EQ(f.evaluator.organizational_domain("a.b.example.test"), "example.test");  // the "*" default rule
  EXPECT_EQ(f.evaluator.organizational_domain("co.uk"), "co.uk");                    // a public suffix is its own
}

TEST(DmarcEvaluator, PassBySpfOrDkimAlignment) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject"};
  auto r = f.from("a@example.test", spf(spf_result::kind::pass, "bounces.example.test"));
  EXPECT_EQ(r.result, kind::pass);
  EXPECT_TRUE(r.spf_aligned);
  EXPECT_FALSE(r.dkim_aligned);
  EXPECT_EQ(r.policy, policy::reject);
  EXPECT_EQ(r.disposition, policy::none);
  EXPECT_EQ(r.domain, "example.test");
  EXPECT_FALSE(r.org_record);

  r = f.from("a@example.test", spf(spf_result::kind::fail, "example.test"),
             dkim(dkim_signature::kind::pass, "Example.Test"));
  EXPECT_EQ(r.result, kind::pass);
  EXPECT_TRUE(r.dkim_aligned);
  EXPECT_FALSE(r.spf_aligned);
}

TEST(DmarcEvaluator, FailWhenNothingAlignedPasses) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=quarantine; rua=mailto:d@example.test"};
  // SPF passes for another organization; the DKIM pass is another's; the aligned one fails.
  auto r = f.from("a@example.test", spf(spf_result::kind::pass, "example.net"),
                  dkim_results{dkim(dkim_signature::kind::pass, "example.net")[0],
                               dkim(dkim_signature::kind::fail, "example.test")[0]});
  EXPECT_EQ(r.result, kind::fail);
  EXPECT_EQ(r.policy, policy::quarantine);
  EXPECT_EQ(r.disposition, policy::quarantine);
  // softfail and neutral are not pass.
  r = f.from("a@example.test", spf(spf_result::kind::softfail, "example.test"));
  EXPECT_EQ(r.result, kind::fail);
}

// An aligned check that failed on DNS may pass when tried again: temperror,
// with the record's policy known (a policy defers, 451, rather than
// refusing for good or letting a message of a p=reject domain through).
TEST(DmarcEvaluator, TemperrorWhenAnAlignedCheckFailedOnDns) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject"};
  auto r = f.from("a@example.test", spf(spf_result::kind::temperror, "bounces.example.test"));
  EXPECT_EQ(r.result, kind::temperror);
  EXPECT_EQ(r.policy, policy::reject);
  EXPECT_EQ(r.disposition, policy::none);
  r = f.from("a@example.test", spf(spf_result::kind::fail, "example.test"),
             dkim(dkim_signature::kind::temperror, "example.test"));
  EXPECT_EQ(r.result, kind::temperror);
  // An aligned pass decides; a temperror of another organization's is no matter.
  r = f.from("a@example.test", spf(spf_result::kind::temperror, "example.test"),
             dkim(dkim_signature::kind::pass, "example.test"));
  EXPECT_EQ(r.result, kind::pass);
  r = f.from("a@example.test", spf(spf_result::kind::temperror, "example.net"));
  EXPECT_EQ(r.result, kind::fail);
}

TEST(DmarcEvaluator, StrictAlignmentWantsTheSameName) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject; adkim=s; aspf=s"};
  auto r = f.from("a@example.test", spf(spf_result::kind::pass, "bounces.example.test"),
                  dkim(dkim_signature::kind::pass, "mail.example.test"));
  EXPECT_EQ(r.result, kind::fail);
  r = f.from("a@example.test", spf(spf_result::kind::pass, "EXAMPLE.test"));
  EXPECT_EQ(r.result, kind::pass);
}

TEST(DmarcEvaluator, APublicSuffixAlignsWithNothing) {
  fixture f;
  f.dns->txt["_dmarc.example.co.uk"] = {"v=DMARC1; p=reject"};
  // libopendmarc's own check would align d=co.uk with example.co.uk (a prefix of the reversed name).
  auto r = f.from("a@example.co.uk", std::nullopt, dkim(dkim_signature::kind::pass, "co.uk"));
  EXPECT_EQ(r.result, kind::fail);
  r = f.from("a@example.co.uk", std::nullopt, dkim(dkim_signature::kind::pass, "other.co.uk"));
  EXPECT_EQ(r.result, kind::fail);
  r = f.from("a@example.co.uk", std::nullopt, dkim(dkim_signature::kind::pass, "mail.example.co.uk"));
  EXPECT_EQ(r.result, kind::pass);
}

TEST(DmarcEvaluator, TheOrganizationalDomainsRecordAndItsSubdomainPolicy) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=none; sp=reject"};
  auto r = f.from("a@news.example.test", spf(spf_result::kind::fail, "news.example.test"));
  EXPECT_EQ(r.result, kind::fail);
  EXPECT_TRUE(r.org_record);
  EXPECT_EQ(r.org_domain, "example.test");
  EXPECT_EQ(r.policy, policy::reject);
  EXPECT_EQ(f.dns->asked, (std::vector<std::string>{"_dmarc.news.example.test", "_dmarc.example.test"}));
  // Without sp=, p= holds for subdomains too; the From domain's own record wins over the org's.
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=quarantine"};
  EXPECT_EQ(f.from("a@news.example.test").policy, policy::quarantine);
  f.dns->txt["_dmarc.news.example.test"] = {"v=DMARC1; p=none; sp=reject"};
  r = f.from("a@news.example.test");
  EXPECT_EQ(r.policy, policy::none);
  EXPECT_FALSE(r.org_record);
}

TEST(DmarcEvaluator, PctSamplesTheMessagesThePolicyIsFor) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject; pct=20"};
  f.draw = 19;
  auto r = f.from("a@example.test");
  EXPECT_EQ(r.pct, 20u);
  EXPECT_EQ(r.disposition, policy::reject);
  f.draw = 20;  // left out: one step milder (§6.6.4)
  EXPECT_EQ(f.from("a@example.test").disposition, policy::quarantine);
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=quarantine; pct=0"};
  f.draw = 0;
  EXPECT_EQ(f.from("a@example.test").disposition, policy::none);
}

TEST(DmarcEvaluator, NoneWithoutOneRecord) {
  fixture f;
  auto r = f.from("a@example.test");
  EXPECT_EQ(r.result, kind::none);
  EXPECT_EQ(r.policy, policy::unspecified);
  // Other TXT records at the name are not DMARC records; "v=DMARC1" must come first, in capitals.
  f.dns->txt["_dmarc.example.test"] = {"v=spf1 -all", "p=reject; v=DMARC1", "v=dmarc1; p=reject"};
  EXPECT_EQ(f.from("a@example.test").result, kind::none);
  // Two DMARC records: no DMARC processing (§6.6.3 step 5), and no org fallback.
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject", "v = DMARC1 ; p=none"};
  r = f.from("a@example.test");
  EXPECT_EQ(r.result, kind::none);
  EXPECT_NE(r.problem.find("several"), std::string::npos);
}

TEST(DmarcEvaluator, TemperrorWhenThePolicyCannotBeFetched) {
  fixture f;
  f.dns->trouble["_dmarc.example.test"] = dns::answer::status::timeout;
  EXPECT_EQ(f.from("a@example.test", spf(spf_result::kind::pass, "example.test")).result, kind::temperror);
  f.dns->trouble["_dmarc.example.test"] = dns::answer::status::failure;
  EXPECT_EQ(f.from("a@sub.example.test").result, kind::temperror);  // at the org domain
}

// RFC 7489 §6.3 and §6.6.3 step 6: a record's mistakes go for the defaults
// (a pct=150 or adkim=x made the record permerror, and p=reject was not
// enforced); without a valid p= (or with an invalid sp=) it is p=none when it
// asks for reports, else no DMARC at all.
TEST(DmarcEvaluator, ABrokenRecordGoesForItsDefaults) {
  fixture f;
  const auto of = [&](const std::string& record) {
    f.dns->txt["_dmarc.example.test"] = {record};
    return f.from("a@example.test");
  };
  for (const char* record : {"v=DMARC1; rua=mailto:d@example.test", "v=DMARC1; p=bogus; rua=mailto:d@example.test",
                             "v=DMARC1; p=reject; sp=bad; rua=mailto:d@example.test"}) {
    const auto r = of(record);
    EXPECT_EQ(r.result, kind::fail) << record;
    EXPECT_EQ(r.policy, policy::none) << record;
  }
  for (const char* record : {"v=DMARC1; adkim=r", "v=DMARC1; p=bogus", "v=DMARC1; p=reject; sp=bad",
                             "v=DMARC1; p=reject; sp=bad; rua=nothing"}) {
    const auto r = of(record);
    EXPECT_EQ(r.result, kind::none) << record;
    EXPECT_NE(r.problem.find("no valid p="), std::string::npos) << r.problem;
  }
  for (const char* record : {"v=DMARC1; p=reject; pct=abc", "v=DMARC1; p=reject; pct=150", "v=DMARC1; p=reject; adkim=x",
                             "v=DMARC1; p=reject; aspf=; fo=zzz; rf=nope; ri=x; ruf=bad", "v=DMARC1;p=REJECT;pct=100"}) {
    const auto r = of(record);
    EXPECT_EQ(r.result, kind::fail) << record;
    EXPECT_EQ(r.policy, policy::reject) << record;
    EXPECT_EQ(r.pct, 100u) << record;
    EXPECT_EQ(r.disposition, policy::reject) << record;
  }
  EXPECT_EQ(of("v=DMARC1; p=reject; pct=0").disposition, policy::quarantine);  // (a valid pct= still counts)
}

TEST(DmarcEvaluator, PermerrorForNoUsableFromDomain) {
  fixture f;

  // No domain to evaluate: the From's fault, not a record's.
  const auto unusable = [&](const std::vector<std::string>& from_values) {
    const auto asked = f.dns->asked.size();
    const auto u = f.evaluator.evaluate(from_values, std::nullopt, std::nullopt);
    EXPECT_EQ(f.dns->asked.size(), asked);  // nothing looked up
    return u.result == kind::permerror && u.unusable_from && u.domain.empty() && u.from_domains.get().empty()
               ? u.problem
               : "usable: " + std::string(to_string(u.result)) + " " + u.domain;
  };
  EXPECT_EQ(unusable({}), "no From field");
  EXPECT_EQ(unusable({"not an address"}), "the From field is not a list of mailboxes");
  EXPECT_EQ(unusable({"a@[192.0.2.1]"}), "a From domain is an address literal");
  EXPECT_EQ(unusable({"undisclosed-recipients:;"}), "the From field is not a list of mailboxes");
  // One mailbox that does not parse hides the others' domains: the whole From is unusable.
  EXPECT_EQ(unusable({"PayPal <service@paypal.test> ("}), "the From field is not a list of mailboxes");
  EXPECT_EQ(unusable({"\"PayPal\" <service@paypal.test> x"}), "the From field is not a list of mailboxes");
  EXPECT_EQ(unusable({"a@example.test", "junk"}), "the From field is not a list of mailboxes");
  EXPECT_EQ(unusable({"a@example.test, b@[192.0.2.1]"}), "a From domain is an address literal");
  EXPECT_EQ(unusable({"a@example.test.."}), "the From field is not a list of mailboxes");
  // Several mailboxes of one domain are that domain.
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject"};
  const auto r = f.from("a@example.test, B <b@EXAMPLE.test>");
  EXPECT_EQ(r.result, kind::fail);
  EXPECT_EQ(r.from_domains.get(), std::vector<std::string>{"example.test"});
}

// RFC 7489 §6.6.1: a From naming several domains has each evaluated, and the
// strictest failure wins. Refused as permerror, which policies leave alone,
// it let a p=reject domain's forgery through by naming one more mailbox, or
// adding a second From field.
TEST(DmarcEvaluator, EveryAuthorDomainIsEvaluatedAndTheStrictestFailureReported) {
  fixture f;
  f.dns->txt["_dmarc.paypal.test"] = {"v=DMARC1; p=reject"};
  f.dns->txt["_dmarc.evil.test"] = {"v=DMARC1; p=none"};
  f.dns->txt["_dmarc.mild.test"] = {"v=DMARC1; p=quarantine"};
  const auto evil_spf = spf(spf_result::kind::pass, "evil.test");
  for (const std::vector<std::string>& from : std::vector<std::vector<std::string>>{
           {"PayPal <service@paypal.test>, <x@evil.test>"},
           {"<x@evil.test>, PayPal <service@paypal.test>"},
           {"PayPal <service@paypal.test>", "x@evil.test"},
           {"x@evil.test", "Team: a@mild.test, service@paypal.test;"},
       }) {
    const auto r = f.evaluator.evaluate(from, evil_spf, dkim_results{});
    EXPECT_EQ(r.result, kind::fail) << from[0];
    EXPECT_EQ(r.domain, "paypal.test") << from[0];
    EXPECT_EQ(r.policy, policy::reject) << from[0];
    EXPECT_EQ(r.disposition, policy::reject) << from[0];
    EXPECT_FALSE(r.unusable_from);
  }
  auto r = f.evaluator.evaluate({"x@evil.test", "y@mild.test, z@evil.test"}, evil_spf, dkim_results{});
  EXPECT_EQ(r.domain, "mild.test");
  EXPECT_EQ(r.policy, policy::quarantine);
  EXPECT_EQ(r.from_domains.get(), (std::vector<std::string>{"evil.test", "mild.test"}));
  // A p=none failure asks for nothing: a domain whose policy could not be fetched (it may ask for
  // reject) comes before it; a failure that asks for something, after it.
  f.dns->trouble["_dmarc.slow.test"] = dns::answer::status::timeout;
  r = f.evaluator.evaluate({"a@nothing.test, b@slow.test"}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::temperror);  // (nothing.test has no record)
  f.dns->txt["_dmarc.nothing.test"] = {"v=DMARC1; p=none"};
  r = f.evaluator.evaluate({"a@nothing.test, b@slow.test"}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::temperror);
  EXPECT_EQ(r.domain, "slow.test");
  r = f.evaluator.evaluate({"a@slow.test, b@paypal.test"}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::fail);
  EXPECT_EQ(r.domain, "paypal.test");
  // pct= sampled one out: the other, whose disposition stands, is stricter; equals: the first.
  f.dns->txt["_dmarc.sampled.test"] = {"v=DMARC1; p=reject; pct=10"};
  f.draw = 50;
  r = f.evaluator.evaluate({"a@sampled.test, b@mild.test"}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.domain, "sampled.test");  // dis=quarantine as mild.test's, p=reject
  EXPECT_EQ(r.disposition, policy::quarantine);
  r = f.evaluator.evaluate({"a@sampled.test, b@paypal.test"}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.domain, "paypal.test");
  // Pass only when every author domain passes.
  r = f.evaluator.evaluate({"a@evil.test"}, evil_spf, dkim_results{});
  EXPECT_EQ(r.result, kind::pass);
  r = f.evaluator.evaluate({"a@evil.test, b@nothing.test"}, evil_spf, dkim(dkim_signature::kind::pass, "nothing.test"));
  EXPECT_EQ(r.result, kind::pass);
  r = f.evaluator.evaluate({"a@evil.test, b@norecord.test"}, evil_spf, dkim_results{});
  EXPECT_EQ(r.result, kind::none);
  EXPECT_EQ(r.domain, "norecord.test");
}

TEST(DmarcEvaluator, AuthorDomainsAreBounded) {
  fixture f;
  std::string eight;
  for (int i = 0; i < 8; ++i) eight += (i ? ", a@d" : "a@d") + std::to_string(i) + ".test";
  const std::string nine = eight + ", b@d0.test, a@d8.test";
  auto r = f.from(eight);
  EXPECT_FALSE(r.unusable_from);
  EXPECT_EQ(r.from_domains.get().size(), max_author_domains);
  f.dns->asked.clear();
  r = f.from(nine);
  EXPECT_TRUE(r.unusable_from);
  EXPECT_EQ(r.problem, "the From field names more than 8 domains");
  EXPECT_TRUE(f.dns->asked.empty());
  // Distinct domains are counted, not mailboxes: one domain named in every form is one.
  r = f.evaluator.evaluate({"a@xn--exmple-cua.test, b@EXÄMPLE.test", "c@exämple.test., d@XN--EXMPLE-CUA.TEST"},
                           std::nullopt, dkim_results{});
  EXPECT_EQ(r.from_domains.get(), std::vector<std::string>{"xn--exmple-cua.test"});
}

// "paypal.test." is the DNS name paypal.test written absolute (RFC 1034
// §3.1), and mail readers show it as paypal.test: its policy holds. (Taken
// for no mailbox list, it made the forgery's DMARC permerror.)
TEST(DmarcEvaluator, ARootDotIsTheSameDomain) {
  fixture f;
  f.dns->txt["_dmarc.paypal.test"] = {"v=DMARC1; p=reject"};
  for (const char* from : {"service@paypal.test.", "PayPal <service@PayPal.Test.>", "service@paypal.test. (PayPal)",
                           "a@paypal.test., b@paypal.test.", "\"x.\" <service@paypal.test.>"}) {
    const auto r = f.from(from, spf(spf_result::kind::pass, "evil.test"));
    EXPECT_EQ(r.result, kind::fail) << from << ": " << r.problem;
    EXPECT_EQ(r.domain, "paypal.test") << from;
    EXPECT_EQ(r.policy, policy::reject) << from;
  }
  // Aligned as the same name, too.
  EXPECT_EQ(f.from("service@paypal.test.", spf(spf_result::kind::pass, "paypal.test")).result, kind::pass);
  // Only the one root dot: a dot in a quoted local part or a comment stays where it is.
  EXPECT_EQ(f.from("\"a.\"@paypal.test (b.)").domain, "paypal.test");
}

// Past max_checked_header bytes of header section, the From fields are not
// all known (one could come after): unusable.
TEST(DmarcEvaluator, AFromPastTheHeaderCapIsUnusable) {
  fixture f;
  f.dns->txt["_dmarc.paypal.test"] = {"v=DMARC1; p=reject"};
  const std::string head = "From: x@evil.test\r\nX-Pad: " + std::string(max_checked_header, 'a') + "\r\n";
  auto r = f.evaluator.evaluate_now(*message_store::wrap(std::make_shared<std::string>(
                                        head + "From: service@paypal.test\r\n\r\nbody\r\n")),
                                    std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::permerror);
  EXPECT_TRUE(r.unusable_from);
  EXPECT_EQ(r.problem, "the header section is larger than 1024 KiB: its From fields are not read");
  r = f.evaluator.evaluate_now(*message_store::wrap(std::make_shared<std::string>(
                                   "From: service@paypal.test\r\n\r\n" + std::string(2 * max_checked_header, 'b'))),
                               std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::fail);  // a large body is no matter
  EXPECT_EQ(r.domain, "paypal.test");
}

// The lookups of all the author domains share one time budget.
TEST(DmarcEvaluator, TheLookupsShareABudget) {
  auto dns = std::make_shared<zone>();
  dns->txt["_dmarc.paypal.test"] = {"v=DMARC1; p=reject"};
  const dmarc_evaluator spent{[dns](const std::string& n) { return (*dns)(n); }, [] { return 0u; },
                              std::chrono::milliseconds(-1)};
  const auto r = spent.evaluate({"a@paypal.test"}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::temperror);
  EXPECT_EQ(r.problem, "_dmarc.paypal.test: not looked up: the lookups took over 0 s in all");
  EXPECT_TRUE(dns->asked.empty());
}

// A From padded with domains whose DNS never answers does not use up the real
// author's time: every domain's records are looked up at once, first.
TEST(DmarcEvaluator, SlowDomainsInTheFromDoNotHideAnother) {
  auto dns = std::make_shared<zone>();
  dns->txt["_dmarc.paypal.test"] = {"v=DMARC1; p=reject"};
  dns->trouble_takes = std::chrono::milliseconds(300);
  std::string from;
  for (int i = 1; i <= 6; ++i) {
    std::string slow = "s";  // (appended: g++ 12 warns, wrongly, at "s" + std::to_string(i))
    slow += std::to_string(i);
    slow += ".evil.test";
    dns->trouble["_dmarc." + slow] = dns::answer::status::timeout;
    from += "x@";
    from += slow;
    from += ", ";
  }
  from += "CEO <ceo@paypal.test>";
  // One after the other, the six slow domains took 6 x 2 x 300 ms, past the 1 s budget.
  const dmarc_evaluator evaluator{[dns](const std::string& n) { return (*dns)(n); }, [] { return 0u; },
                                  std::chrono::milliseconds(1000)};
  const auto r = evaluator.evaluate({from}, std::nullopt, dkim_results{});
  EXPECT_EQ(r.result, kind::fail) << r.problem;
  EXPECT_EQ(r.domain, "paypal.test");
  EXPECT_EQ(r.policy, policy::reject);
}

// arc_aligned: the newest ARC set's results (a chain that passed) report a
// pass aligned with each failing From domain, by its record's alignment.
TEST(DmarcEvaluator, WhatTheNewestSealerFoundIsAligned) {
  fixture f;
  f.dns->txt["_dmarc.example.test"] = {"v=DMARC1; p=reject"};
  f.dns->txt["_dmarc.strict.test"] = {"v=DMARC1; p=reject; adkim=s; aspf=s"};
  const auto aligned = [&](const std::string& from, std::vector<reported_pass> passes) {
    const auto r = f.evaluator.evaluate({from}, std::nullopt, dkim_results{}, passes);
    EXPECT_EQ(r.result, kind::fail) << from;
    return r.arc_aligned;
  };
  EXPECT_TRUE(aligned("a@example.test", {{"dkim", "example.test"}}));
  EXPECT_TRUE(aligned("a@example.test", {{"dkim", "mail.example.test"}}));  // relaxed
  EXPECT_TRUE(aligned("a@news.example.test", {{"spf", "bounces.example.test"}}));
  EXPECT_TRUE(aligned("a@example.test", {{"dmarc", "example.test"}}));
  EXPECT_TRUE(aligned("a@example.test", {{"dkim", "evil.test"}, {"dmarc", "EXAMPLE.test."}}));
  EXPECT_FALSE(aligned("a@example.test", {}));
  EXPECT_FALSE(aligned("a@example.test", {{"dkim", "evil.test"}, {"spf", "example.net"}}));
  EXPECT_FALSE(aligned("a@example.test", {{"dmarc", "news.example.test"}}));  // a DMARC pass is for its domain
  EXPECT_FALSE(aligned("a@example.test", {{"arc", "example.test"}}));
  EXPECT_FALSE(aligned("a@strict.test", {{"dkim", "mail.strict.test"}}));
  EXPECT_TRUE(aligned("a@strict.test", {{"dkim", "strict.test"}}));
  // With several failing From domains, each must be vouched for.
  auto r = f.evaluator.evaluate({"a@example.test, b@strict.test"}, std::nullopt, dkim_results{},
                                {{"dkim", "example.test"}});
  EXPECT_FALSE(r.arc_aligned);
  r = f.evaluator.evaluate({"a@example.test, b@strict.test"}, std::nullopt, dkim_results{},
                           {{"dkim", "example.test"}, {"spf", "strict.test"}});
  EXPECT_TRUE(r.arc_aligned);
  // Only a failure is vouched for.
  r = f.evaluator.evaluate({"a@example.test"}, spf(spf_result::kind::pass, "example.test"), dkim_results{},
                           {{"dkim", "example.test"}});
  EXPECT_EQ(r.result, kind::pass);
  EXPECT_FALSE(r.arc_aligned);
}

// RFC 7489 §6.6.3, RFC 8616 §4-5: an internationalized From domain (an
// SMTPUTF8 message) is looked up and aligned as A-labels, the form SPF and
// DKIM name domains in; as UTF-8 it found no record, and p=reject was lost.
TEST(DmarcEvaluator, AnInternationalizedFromDomainIsLookedUpAndAlignedAsALabels) {
  fixture f;
  f.dns->txt["_dmarc.xn--exmple-cua.test"] = {"v=DMARC1; p=reject"};
  auto r = f.from("a@exämple.test", spf(spf_result::kind::pass, "xn--exmple-cua.test"));
  EXPECT_EQ(r.result, kind::pass) << r.problem;
  EXPECT_TRUE(r.spf_aligned);
  EXPECT_EQ(r.policy, policy::reject);
  EXPECT_EQ(r.domain, "xn--exmple-cua.test");  // reported as A-labels (tx.dmarc, header.from=)
  EXPECT_EQ(f.dns->asked.back(), "_dmarc.xn--exmple-cua.test");

  // Nothing aligned: the domain's p=reject holds.
  r = f.from("Ä <a@EXÄMPLE.test>", spf(spf_result::kind::pass, "example.net"));
  EXPECT_EQ(r.result, kind::fail) << r.problem;
  EXPECT_EQ(r.disposition, policy::reject);

  // A DKIM d= in U-labels aligns with an A-label From domain, and back.
  r = f.from("a@xn--exmple-cua.test", std::nullopt, dkim(dkim_signature::kind::pass, "exämple.test"));
  EXPECT_TRUE(r.dkim_aligned);
  EXPECT_EQ(r.result, kind::pass);

  // A subdomain finds its organizational domain's record, relaxed alignment by A-labels.
  r = f.from("a@post.exämple.test", spf(spf_result::kind::pass, "xn--exmple-cua.test"));
  EXPECT_EQ(r.org_domain, "xn--exmple-cua.test");
  EXPECT_TRUE(r.org_record);
  EXPECT_EQ(r.result, kind::pass);

  // A name IDNA2008 refuses is no usable From domain.
  const auto asked = f.dns->asked.size();
  r = f.from("a@ex♥mple.test");
  EXPECT_EQ(r.result, kind::permerror);
  EXPECT_EQ(f.dns->asked.size(), asked);  // nothing looked up
}

TEST(DmarcEvaluator, HostileRecordsAndFromFields) {
  fixture f;
  // A 40 KB tag, thousands of report addresses, a long list of tags: parsed (or refused) without harm.
  f.dns->txt["_dmarc.big.test"] = {"v=DMARC1; p=reject; rua=mailto:" + std::string(40000, 'a') + "@big.test"};
  auto r = f.from("a@big.test");
  EXPECT_TRUE(r.result == kind::fail || r.result == kind::permerror) << to_string(r.result);
  std::string many = "v=DMARC1; p=quarantine; rua=";
  for (int i = 0; i < 3000; ++i) many += "mailto:r" + std::to_string(i) + "@many.test,";
  many += "mailto:last@many.test";
  f.dns->txt["_dmarc.many.test"] = {many};
  r = f.from("a@many.test");
  EXPECT_TRUE(r.result == kind::fail || r.result == kind::permerror) << to_string(r.result);
  std::string tags = "v=DMARC1; p=none";
  for (int i = 0; i < 5000; ++i) tags += "; x" + std::to_string(i) + "=y";
  f.dns->txt["_dmarc.tags.test"] = {tags};
  EXPECT_EQ(f.from("a@tags.test").policy, policy::none);
  // A From field of 100,000 mailboxes of one domain, and one of 64 KB of nested comments.
  std::string list;
  for (int i = 0; i < 100000; ++i) list += (i ? ", u" : "u") + std::to_string(i) + "@tags.test";
  EXPECT_EQ(f.from(list).domain, "tags.test");
  EXPECT_EQ(f.from(std::string(32768, '(') + std::string(32768, ')') + "a@tags.test").domain, "tags.test");
  EXPECT_EQ(f.from(std::string(65536, '(')).result, kind::permerror);
}
