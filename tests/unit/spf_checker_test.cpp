// The SPF checker (libspf2 on our resolver, behind our record validator)
// against a real DNS server on loopback, and on a table of answers. Run under
// ASan/UBSan too: the glue hands libspf2 buffers it frees, and takes back
// buffers it made.
#include "checks/spf_checker.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include <thread>

#include "checks/sender_checker.hpp"
#include "dns/resolver.hpp"
#include "unit/dns_server_process.hpp"

namespace portcullis::checks {
namespace {

using namespace std::chrono_literals;
using kind = spf_result::kind;

std::string huge_record() {
  std::string r = "v=spf1";
  for (int i = 0; i < 2500; ++i) r += " ip4:10." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ".1";
  return r + " -all";
}

// 127 macros (508 bytes compiled: within 4 of libspf2's 511) and then a
// literal: what made Debian's libspf2 1.2.10 write past its buffer
// (CVE-2023-42118), from an explanation at once, from a record term with a
// literal long enough to leave its 4 KiB buffer.
std::string macros_then_literal(std::size_t literal) {
  std::string s;
  for (int i = 0; i < 127; ++i) s += "%{d}";
  return s + ".a" + std::string(literal, 'a');
}

// Ten exists: terms of long names: about 700 bytes once compiled.
std::string wide_record() {
  std::string r = "v=spf1";
  for (int i = 0; i < 10; ++i) r += " exists:" + std::string(50, 'n') + std::to_string(i) + ".wide.example.test";
  return r + " -all";
}

std::string zones() {
  std::string many = "v=spf1";
  std::string hosts, ptrs;
  for (int i = 0; i < 11; ++i) {
    many += " a:h" + std::to_string(i) + ".many.example.test";
    hosts += ",\n  \"h" + std::to_string(i) + ".many.example.test\": [{\"A\": \"203.0.113.1\"}]";
    hosts += ",\n  \"p" + std::to_string(i) + ".example.org\": [{\"A\": \"192.0.2.55\"}]";
    ptrs += std::string(i ? ", " : "") + "{\"PTR\": \"p" + std::to_string(i) + ".example.org\"}";
  }
  hosts += ",\n  \"55.2.0.192.in-addr.arpa\": [" + ptrs + "]";
  return R"({
  "pass.example.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"}],
  "local.example.test": [{"TXT": "v=spf1 ip4:127.0.0.1 ip6:::1 -all"}],
  "fail.example.test": [{"TXT": "v=spf1 -all exp=why.fail.example.test"}],
  "why.fail.example.test": [{"TXT": "%{i} may not  send for %{d}"}],
  "badexp.example.test": [{"TXT": "v=spf1 -all exp=why.badexp.example.test"}],
  "why.badexp.example.test": [{"TXT": "broken %{z} macro"}],
  "soft.example.test": [{"TXT": "v=spf1 ~all"}],
  "all0.example.test": [{"TXT": "v=spf1 ip4:192.0.2.1/0 -all"}],
  "broken.example.test": [{"TXT": "v=spf1 ip4:192.0.2.256 -all"}],
  "slow.example.test": ["TIMEOUT"],
  "ptrs.example.test": [{"TXT": "v=spf1 ptr ?all"}],
  "helo.example.test": [{"TXT": "v=spf1 a -all"}, {"A": "192.0.2.20"}],
  "voids.example.test": [{"TXT": "v=spf1 a:n1.example.test a:n2.example.test a:n3.example.test -all"}],
  "huge.example.test": [{"TXT": ")" + huge_record() + R"("}],
  "wide.example.test": [{"TXT": ")" + wide_record() + R"("}],
  "longexp.example.test": [{"TXT": "v=spf1 -all exp=why.longexp.example.test"}],
  "why.longexp.example.test": [{"TXT": "Denied: )" + macros_then_literal(1) + R"("}],
  "longterm.example.test": [{"TXT": "v=spf1 exists:)" + macros_then_literal(3700) + R"( -all"}],
  "many.example.test": [{"TXT": ")" + many + R"( -all"}])" + hosts + "\n}";
}

class SpfChecker : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new testing::dns_server(zones()); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    dns::resolver_options o;
    o.nameserver = server_->endpoint();
    o.timeout = 500ms;
    resolver_ = std::make_shared<dns::resolver>(o);
    checker_ = std::make_unique<spf_checker>(resolver_, "mx.example.test");
  }
  spf_result check(const std::string& ip, const std::string& sender, const std::string& helo = "client.test") {
    const auto at = sender.find('@');
    smtp::address from = sender.empty() ? smtp::address{} : smtp::address{sender.substr(0, at), sender.substr(at + 1)};
    return checker_->check_now(asio::ip::make_address(ip), helo, from);
  }

  static testing::dns_server* server_;
  std::shared_ptr<dns::resolver> resolver_;
  std::unique_ptr<spf_checker> checker_;
};

testing::dns_server* SpfChecker::server_ = nullptr;

TEST_F(SpfChecker, GivesEachResult) {
  EXPECT_EQ(check("192.0.2.7", "a@pass.example.test").result, kind::pass);
  EXPECT_EQ(check("2001:db8::7", "a@pass.example.test").result, kind::pass);
  EXPECT_EQ(check("::ffff:192.0.2.7", "a@pass.example.test").result, kind::pass);
  EXPECT_EQ(check("198.51.100.1", "a@pass.example.test").result, kind::fail);
  EXPECT_EQ(check("198.51.100.1", "a@soft.example.test").result, kind::softfail);
  EXPECT_EQ(check("198.51.100.1", "a@nowhere.example.test").result, kind::none);
  EXPECT_EQ(check("198.51.100.1", "a@all0.example.test").result, kind::pass);  // ip4:x/0 matches everyone (libspf2 alone refuses it)
}

TEST_F(SpfChecker, ExplainsAFailWithTheDomainsTextOnly) {
  auto r = check("198.51.100.1", "a@fail.example.test");
  EXPECT_EQ(r.result, kind::fail);
  EXPECT_EQ(r.explanation, "198.51.100.1 may not  send for fail.example.test");
  auto bad = check("198.51.100.1", "a@badexp.example.test");
  EXPECT_EQ(bad.result, kind::fail);
  EXPECT_EQ(bad.explanation, "");  // a syntax error in the text: as if there were no exp= (RFC 7208 §6.2)
  EXPECT_EQ(check("198.51.100.1", "a@pass.example.test").explanation, "");  // no exp=, no default text
}

TEST_F(SpfChecker, ChecksTheHeloNameForTheNullSender) {
  auto r = check("192.0.2.20", "", "helo.example.test");
  EXPECT_EQ(r.result, kind::pass);
  EXPECT_TRUE(r.helo);
  EXPECT_EQ(r.domain, "helo.example.test");
  EXPECT_EQ(check("192.0.2.21", "", "helo.example.test").result, kind::fail);
  EXPECT_EQ(check("192.0.2.21", "", "[192.0.2.21]").result, kind::none);
}

TEST_F(SpfChecker, RefusesWhatRfc7208Refuses) {
  auto bad = check("198.51.100.1", "a@broken.example.test");
  EXPECT_EQ(bad.result, kind::permerror);
  EXPECT_NE(bad.problem.find("192.0.2.256"), std::string::npos) << bad.problem;
  EXPECT_EQ(check("198.51.100.1", "a@voids.example.test").result, kind::permerror);
  auto many = check("198.51.100.1", "a@many.example.test");
  EXPECT_EQ(many.result, kind::permerror) << many.problem;
}

TEST_F(SpfChecker, LooksAtTenPtrNamesAtMost) {
  // §4.6.4: the names past the tenth are ignored (libspf2 alone: permerror).
  auto r = check("192.0.2.55", "a@ptrs.example.test");
  EXPECT_EQ(r.result, kind::neutral) << r.problem;
}

TEST_F(SpfChecker, SaysSoWhenLibspf2CannotHoldARecord) {
  // libspf2 would drop the terms past its 511-byte limit and answer neutral.
  auto r = check("10.3.1.1", "a@wide.example.test");
  EXPECT_EQ(r.result, kind::permerror);
  EXPECT_NE(r.problem.find("too big for libspf2 (11 mechanisms"), std::string::npos) << r.problem;
}

TEST_F(SpfChecker, ARecordOfManyAddressesIsEvaluatedWhole) {
  // 2,500 ip4 terms, 20 KB compiled: libspf2 is given only those that hold the client.
  EXPECT_EQ(check("10.3.1.1", "a@huge.example.test").result, kind::pass);
  EXPECT_EQ(check("10.9.249.1", "a@huge.example.test").result, kind::pass);  // the last one
  EXPECT_EQ(check("10.3.1.2", "a@huge.example.test").result, kind::fail);
  EXPECT_EQ(check("2001:db8::1", "a@huge.example.test").result, kind::fail);
}

// Text a domain's owner writes never reaches libspf2's compiler when it is
// too long for it (libspf2_max_macro_string): each of these smashed the
// stack of the process that checked (the worker, and every session on it).
TEST_F(SpfChecker, NoMacroStringTooLongForLibspf2GoesToIt) {
  const auto exp = check("198.51.100.1", "a@longexp.example.test");
  EXPECT_EQ(exp.result, kind::fail);
  EXPECT_EQ(exp.explanation, "");  // as if there were no exp=
  const auto term = check("198.51.100.1", "a@longterm.example.test");
  EXPECT_EQ(term.result, kind::permerror);
  EXPECT_NE(term.problem.find("has a term with macros of 4217 characters, too long for libspf2 (at most 200)"),
            std::string::npos)
      << term.problem;
}

TEST_F(SpfChecker, ADnsTimeoutIsATemperror) {
  auto r = check("198.51.100.1", "a@slow.example.test");
  EXPECT_EQ(r.result, kind::temperror) << r.problem;
}

// The budget holds for the whole check: a lookup under way when it ends
// stops waiting there, not at [dns] timeout (here 20 s against a 1 s
// budget: the bound below is 10 times the budget, far from both).
TEST_F(SpfChecker, ALookupStopsWaitingAtTheEndOfTheBudget) {
  dns::resolver_options o;
  o.nameserver = server_->endpoint();
  o.timeout = 20000ms;
  spf_limits limits;
  limits.budget = 1000ms;
  const spf_checker slow(std::make_shared<dns::resolver>(o), "mx.example.test", {}, limits);
  const auto start = std::chrono::steady_clock::now();
  const auto r = slow.check_now(asio::ip::make_address("192.0.2.1"), "client.test", smtp::address{"a", "slow.example.test"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(r.result, kind::temperror);
  EXPECT_EQ(r.problem, "the check took longer than 1 s");
}

// A loopback client is checked as any other: libspf2's own entry point
// passes it unasked ("localhost is always allowed"), and a client of this
// host was never checked at all, even with no spf_skip_networks.
TEST_F(SpfChecker, ChecksLoopbackClientsAsAnyOther) {
  spf_checker bare(resolver_, "mx.example.test", {});
  for (const char* client : {"127.0.0.1", "127.0.0.2", "::1"}) {
    const auto r = bare.check_now(asio::ip::make_address(client), "h.test", smtp::address{"a", "pass.example.test"});
    EXPECT_EQ(r.result, kind::fail) << client << ": " << r.problem;
  }
  for (const char* client : {"127.0.0.1", "::1"}) {
    const auto r = bare.check_now(asio::ip::make_address(client), "h.test", smtp::address{"a", "local.example.test"});
    EXPECT_EQ(r.result, kind::pass) << client << ": " << r.problem;
  }
  EXPECT_EQ(bare.check_now(asio::ip::make_address("127.0.0.2"), "h.test", smtp::address{"a", "local.example.test"}).result,
            kind::fail);
  spf_checker skipping(resolver_, "mx.example.test", {"127.0.0.0/8"});
  const auto r = skipping.check_now(asio::ip::make_address("127.0.0.1"), "h.test", smtp::address{"a", "pass.example.test"});
  EXPECT_EQ(r.result, kind::none);
  EXPECT_EQ(r.problem, "not checked: the client is in [checks] spf_skip_networks");
}

TEST_F(SpfChecker, DoesNotCheckTheNetworksItIsToldToSkip) {
  spf_checker skipping(resolver_, "mx.example.test", {"198.51.100.0/24"});
  auto r = skipping.check_now(asio::ip::make_address("198.51.100.1"), "h.test", smtp::address{"a", "pass.example.test"});
  EXPECT_EQ(r.result, kind::none);
  EXPECT_EQ(r.problem, "not checked: the client is in [checks] spf_skip_networks");
  EXPECT_EQ(skipping.check_now(asio::ip::make_address("192.0.2.7"), "h.test", smtp::address{"a", "pass.example.test"}).result,
            kind::pass);
}

TEST_F(SpfChecker, RunsOnTheCheckersThreadsForCoroutines) {
  sender_checker_settings settings;
  settings.spf = true;
  settings.receiver = "mx.example.test";
  settings.threads = 2;
  sender_checker checks(resolver_, settings);
  asio::io_context io;
  std::vector<spf_result> got;
  std::set<std::thread::id> ran_on;
  for (int i = 0; i < 6; ++i) {
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
          const smtp::address from{"a", "pass.example.test"};
          const auto client = asio::ip::make_address("192.0.2.7");
          const std::string helo = "client.test";
          auto r = co_await checks.spf(client, helo, from);
          ran_on.insert(std::this_thread::get_id());  // back on this io_context's thread
          got.push_back(std::move(r));
        },
        asio::detached);
  }
  io.run();
  ASSERT_EQ(got.size(), 6u);
  for (const auto& r : got) EXPECT_EQ(r.result, kind::pass);
  EXPECT_EQ(ran_on, std::set<std::thread::id>{std::this_thread::get_id()});
}

// The same checker on a table of answers (spf_checker::dns_lookup), as the
// fuzzer runs it: names not in the table are NXDOMAIN.
using answer_table = std::map<std::pair<std::string, dns::rr_type>, std::vector<std::string>>;

spf_checker::dns_lookup from_table(answer_table table, std::vector<std::string>* asked) {
  return [table = std::move(table), asked](const std::string& name, dns::rr_type type,
                                           std::chrono::steady_clock::time_point) {
    asked->push_back(name);
    dns::answer a;
    a.what = dns::answer::status::nxdomain;
    if (const auto found = table.find({name, type}); found != table.end()) {
      a.what = dns::answer::status::ok;
      for (const auto& value : found->second) a.records.push_back({value});
    }
    return a;
  };
}

TEST(SpfCheckerOnATable, AsksTheLookupItIsGiven) {
  std::vector<std::string> asked;
  const spf_checker checker(from_table({{{"example.test", dns::rr_type::txt}, {"v=spf1 include:_spf.example.test -all"}},
                                        {{"_spf.example.test", dns::rr_type::txt}, {"v=spf1 a:h.example.test ~all"}},
                                        {{"h.example.test", dns::rr_type::a}, {"192.0.2.7"}}},
                                       &asked),
                            "mx.example.test");
  const auto r = checker.check_now(asio::ip::make_address("192.0.2.7"), "h.test", smtp::address{"a", "example.test"});
  EXPECT_EQ(r.result, kind::pass) << r.problem;
  EXPECT_EQ(asked, (std::vector<std::string>{"example.test", "_spf.example.test", "h.example.test"}));
}

// The explanation reaches a reply: one printable ASCII line, after its
// macros too (an SMTPUTF8 sender's local part is 8-bit), else none.
TEST(SpfCheckerOnATable, AnExplanationThatExpandsToEightBitTextIsDropped) {
  std::vector<std::string> asked;
  const spf_checker checker(from_table({{{"example.test", dns::rr_type::txt}, {"v=spf1 -all exp=why.test"}},
                                        {{"why.test", dns::rr_type::txt}, {"%{l} may not send"}}},
                                       &asked),
                            "mx.example.test");
  const auto client = asio::ip::make_address("192.0.2.7");
  EXPECT_EQ(checker.check_now(client, "h.test", smtp::address{"ann", "example.test"}).explanation, "ann may not send");
  const auto utf8 = checker.check_now(client, "h.test", smtp::address{"\xc3\xbc", "example.test"});
  EXPECT_EQ(utf8.result, kind::fail);
  EXPECT_EQ(utf8.explanation, "");
}

// An a/0 or mx/0 term matches any address of a name that has one: the name
// is marked for the DNS layer. A client once forged "pass" with a HELO
// ending in the fixed marker ("a:%{h}" then matched its own address), and a
// record naming the marker did too: the marker is a secret of each check now.
TEST(SpfCheckerOnATable, NoNameTheClientOrARecordChoosesPassesForAnyAddress) {
  const std::string forged_helo = "realhost.example.test.any-address.portcullis.invalid";
  for (const std::string term : {"a:%{h}", "mx:%{h}", "exists:%{h}", "a:realhost.example.test.any-address.portcullis.invalid"}) {
    std::vector<std::string> asked;
    const spf_checker checker(from_table({{{"example.test", dns::rr_type::txt}, {"v=spf1 " + term + " -all"}},
                                          {{"realhost.example.test", dns::rr_type::a}, {"203.0.113.50"}},
                                          {{"realhost.example.test", dns::rr_type::mx}, {"realhost.example.test"}}},
                                         &asked),
                              "mx.example.test");
    const auto r = checker.check_now(asio::ip::make_address("198.51.100.66"), forged_helo, smtp::address{"a", "example.test"});
    EXPECT_EQ(r.result, kind::fail) << term << ": " << r.problem;
    // The name was asked for as it is (it names nothing), not stripped to realhost.example.test.
    EXPECT_EQ(std::count(asked.begin(), asked.end(), "realhost.example.test"), 0) << term;
  }
  // The real thing still works: a/0 takes any address of a name that has one.
  std::vector<std::string> asked;
  const spf_checker any(from_table({{{"example.test", dns::rr_type::txt}, {"v=spf1 a:realhost.example.test/0 -all"}},
                                    {{"realhost.example.test", dns::rr_type::a}, {"203.0.113.50"}}},
                                   &asked),
                        "mx.example.test");
  EXPECT_EQ(any.check_now(asio::ip::make_address("198.51.100.66"), "h.test", smtp::address{"a", "example.test"}).result,
            kind::pass);
}

// Found by fuzz_spf_evaluation: libspf2 1.2.10 (spf_expand.c,
// SPF_record_expand_data, "truncate, from the right hand side") drops the
// first character of a macro's value when its DIGIT transformer asks for as
// many labels as the value has or more: %{d2} of "example.test" expands to
// "xample.test", %{l1} of "postmaster" to "ostmaster"; RFC 7208 §7.3 keeps
// every label. The DNS layer drops such a DIGIT, knowing the values
// (spf_macros_for_values); in an explanation too. And libspf2 refuses a
// DIGIT above 128: %{d200} was %{d128} for it, and hit the same bug.
TEST(SpfCheckerOnATable, KeepsEveryLabelWhenAMacroAsksForAsManyOrMore) {
  std::vector<std::string> asked;
  for (const std::string macro : {"%{d200}", "%{d2}"}) {
    asked.clear();
    const spf_checker checker(
        from_table({{{"example.test", dns::rr_type::txt}, {"v=spf1 exists:" + macro + ".list.test -all"}},
                    {{"example.test.list.test", dns::rr_type::a}, {"127.0.0.2"}}},
                   &asked),
        "mx.example.test");
    const auto r = checker.check_now(asio::ip::make_address("192.0.2.7"), "h.test", smtp::address{"a", "example.test"});
    EXPECT_EQ(r.result, kind::pass) << macro << ": " << r.problem;
    EXPECT_EQ(asked, (std::vector<std::string>{"example.test", "example.test.list.test"})) << macro;
  }

  // Fewer labels than the value has: libspf2 keeps the right ones itself; the local part and the explanation too.
  asked.clear();
  const spf_checker more(
      from_table({{{"a.b.example.test", dns::rr_type::txt}, {"v=spf1 exists:%{d2}.%{l1r-}.list.test -all exp=why.test"}},
                  {{"why.test", dns::rr_type::txt}, {"%{d1} and %{d9} refuse %{l1}"}}},
                 &asked),
      "mx.example.test");
  const auto f = more.check_now(asio::ip::make_address("192.0.2.7"), "h.test", smtp::address{"post-master", "a.b.example.test"});
  EXPECT_EQ(f.result, kind::fail) << f.problem;
  EXPECT_EQ(asked, (std::vector<std::string>{"a.b.example.test", "example.test.post.list.test", "why.test"}));
  EXPECT_EQ(f.explanation, "test and a.b.example.test refuse post-master");
}


// RFC 7208 §4.3: an internationalized domain is checked as A-labels (an
// SMTPUTF8 sender, or HELO name, in U-labels); one that does not convert is
// malformed: "none", without a lookup. As UTF-8 it found no record: none.
TEST(SpfCheckerOnATable, ChecksAnInternationalizedDomainAsALabels) {
  std::vector<std::string> asked;
  const spf_checker checker(
      from_table({{{"xn--exmple-cua.test", dns::rr_type::txt}, {"v=spf1 ip4:192.0.2.0/24 -all exp=why.test"}},
                  {{"why.test", dns::rr_type::txt}, {"%{d} refuses %{s} (helo %{h})"}}},
                 &asked),
      "mx.example.test");
  const auto pass = checker.check_now(asio::ip::make_address("192.0.2.7"), "h.test", smtp::address{"a", "exämple.test"});
  EXPECT_EQ(pass.result, kind::pass) << pass.problem;
  EXPECT_EQ(pass.domain, "xn--exmple-cua.test");  // what DMARC aligns with
  EXPECT_EQ(asked, (std::vector<std::string>{"xn--exmple-cua.test"}));

  const auto fail = checker.check_now(asio::ip::make_address("198.51.100.1"), "hélo.test", smtp::address{"a", "EXÄMPLE.test"});
  EXPECT_EQ(fail.result, kind::fail) << fail.problem;
  EXPECT_EQ(fail.explanation, "xn--exmple-cua.test refuses a@xn--exmple-cua.test (helo xn--hlo-bma.test)");

  // The null sender: the HELO name, converted the same.
  const auto helo = checker.check_now(asio::ip::make_address("192.0.2.7"), "exämple.test", smtp::address{});
  EXPECT_EQ(helo.result, kind::pass) << helo.problem;
  EXPECT_TRUE(helo.helo);
  EXPECT_EQ(helo.domain, "xn--exmple-cua.test");

  asked.clear();
  const auto bad = checker.check_now(asio::ip::make_address("192.0.2.7"), "h.test", smtp::address{"a", "ex♥mple.test"});
  EXPECT_EQ(bad.result, kind::none);
  EXPECT_NE(bad.problem.find("IDNA2008"), std::string::npos) << bad.problem;
  EXPECT_TRUE(asked.empty());
}

// RFC 7208 §4.6.4 counts the terms that query DNS (include, a, mx, ptr,
// exists, redirect), not the lookups the %{p} macro makes: libspf2 made
// them through the DNS layer, whose PTR query counted as an 11th term.
// And §6.2: the explanation never changes the result, %{p} in it included.
TEST(SpfCheckerOnATable, ThePMacroIsNoTermInTheRecordOrTheExplanation) {
  std::string ten = "v=spf1";
  answer_table table{{{"7.2.0.192.in-addr.arpa", dns::rr_type::ptr}, {"other.client.test", "mail.client.test"}},
                     {{"mail.client.test", dns::rr_type::a}, {"192.0.2.7"}},
                     {{"why.test", dns::rr_type::txt}, {"%{i} (%{p}) may not send for %{d}"}}};
  for (int i = 0; i < 9; ++i) {
    // (Appended, not "h" + std::to_string(i): g++ 12's -Warray-bounds misfires on the sum.)
    std::string host = "h";
    host.append(std::to_string(i)).append(".example.test");
    ten.append(" a:").append(host);
    table[{host, dns::rr_type::a}] = {"203.0.113.1"};
  }
  table[{"p.example.test", dns::rr_type::txt}] = {ten + " exists:%{p}.allow.test -all"};
  table[{"mail.client.test.allow.test", dns::rr_type::a}] = {"127.0.0.2"};
  table[{"e.example.test", dns::rr_type::txt}] = {ten + " a:h9.example.test -all exp=why.test"};
  table[{"h9.example.test", dns::rr_type::a}] = {"203.0.113.1"};
  std::vector<std::string> asked;
  const spf_checker checker(from_table(table, &asked), "mx.example.test");
  const auto client = asio::ip::make_address("192.0.2.7");

  // Ten terms, the last exists:%{p}: the validated name is the second PTR name.
  const auto p = checker.check_now(client, "h.test", smtp::address{"a", "p.example.test"});
  EXPECT_EQ(p.result, kind::pass) << p.problem;
  EXPECT_EQ(asked.back(), "mail.client.test.allow.test");

  // Ten terms and a fail: %{p} in the explanation leaves it a fail.
  const auto e = checker.check_now(client, "h.test", smtp::address{"a", "e.example.test"});
  EXPECT_EQ(e.result, kind::fail) << e.problem;
  EXPECT_EQ(e.explanation, "192.0.2.7 (mail.client.test) may not send for e.example.test");

  // No validated name: "unknown" (§7.3).
  const auto stranger = checker.check_now(asio::ip::make_address("192.0.2.8"), "h.test", smtp::address{"a", "e.example.test"});
  EXPECT_EQ(stranger.result, kind::fail) << stranger.problem;
  EXPECT_EQ(stranger.explanation, "192.0.2.8 (unknown) may not send for e.example.test");

  // An eleventh term is still one too many (§4.6.4), and a ptr mechanism still a term.
  table[{"p11.example.test", dns::rr_type::txt}] = {ten + " a:h9.example.test exists:%{p}.allow.test -all"};
  table[{"ptr.example.test", dns::rr_type::txt}] = {ten + " a:h9.example.test ptr -all"};
  const spf_checker again(from_table(table, &asked), "mx.example.test");
  EXPECT_EQ(again.check_now(client, "h.test", smtp::address{"a", "p11.example.test"}).result, kind::permerror);
  EXPECT_EQ(again.check_now(client, "h.test", smtp::address{"a", "ptr.example.test"}).result, kind::permerror);
}

// §7.3: of several validated names, %{p} is the checked domain itself, else
// one of its subdomains, else any: each record's own domain (an include's too).
TEST(SpfCheckerOnATable, ThePMacroPrefersTheNameUnderTheDomainBeingChecked) {
  answer_table table{
      {{"10.2.0.192.in-addr.arpa", dns::rr_type::ptr}, {"aaa.other.test", "mail.pdom.test", "pdom.test", "x.inc.test"}},
      {{"aaa.other.test", dns::rr_type::a}, {"192.0.2.10"}},
      {{"mail.pdom.test", dns::rr_type::a}, {"192.0.2.10"}},
      {{"pdom.test", dns::rr_type::a}, {"192.0.2.10"}},
      {{"x.inc.test", dns::rr_type::a}, {"192.0.2.10"}},
      {{"pdom.test", dns::rr_type::txt}, {"v=spf1 exists:%{p}.allow.test -all"}},
      {{"pdom.test.allow.test", dns::rr_type::a}, {"127.0.0.2"}},
      {{"outer.test", dns::rr_type::txt}, {"v=spf1 include:inc.test -all"}},
      {{"inc.test", dns::rr_type::txt}, {"v=spf1 exists:%{p}.allow.test -all"}},
      {{"x.inc.test.allow.test", dns::rr_type::a}, {"127.0.0.2"}},
      {{"nomatch.test", dns::rr_type::txt}, {"v=spf1 exists:%{p}.allow.test -all"}},
      {{"aaa.other.test.allow.test", dns::rr_type::a}, {"127.0.0.2"}},
  };
  std::vector<std::string> asked;
  const spf_checker checker(from_table(table, &asked), "mx.example.test");
  const auto client = asio::ip::make_address("192.0.2.10");
  const auto check = [&](const char* domain) {
    asked.clear();
    const auto r = checker.check_now(client, "h.test", smtp::address{"a", domain});
    EXPECT_EQ(r.result, kind::pass) << domain << ": " << r.problem;
    return asked.back();
  };
  EXPECT_EQ(check("pdom.test"), "pdom.test.allow.test");          // the domain itself, before mail.pdom.test
  EXPECT_EQ(check("outer.test"), "x.inc.test.allow.test");        // a subdomain of the include's domain, in its record
  EXPECT_EQ(check("nomatch.test"), "aaa.other.test.allow.test");  // none under it: the first
}

// libspf2's server is kept per thread (checks/spf_checker.cpp): checkers
// that take turns on one thread (a reload's, say) each check with their own
// receiver (%{r}) and limits.
TEST(SpfCheckerOnATable, CheckersTakingTurnsOnAThreadKeepTheirOwnSettings) {
  std::vector<std::string> asked;
  const auto table = from_table({{{"example.test", dns::rr_type::txt},
                                  {"v=spf1 include:one.example.test include:two.example.test -all exp=why.test"}},
                                 {{"one.example.test", dns::rr_type::txt}, {"v=spf1 -all"}},
                                 {{"two.example.test", dns::rr_type::txt}, {"v=spf1 -all"}},
                                 {{"why.test", dns::rr_type::txt}, {"%{r} says no"}}},
                                &asked);
  spf_limits one_term;
  one_term.dns_terms = 1;
  const spf_checker first(table, "mx.first.test");
  const spf_checker second(table, "mx.second.test", {}, one_term);
  const auto client = asio::ip::make_address("192.0.2.7");
  const smtp::address sender{"a", "example.test"};
  for (int round = 0; round < 2; ++round) {
    const auto f = first.check_now(client, "h.test", sender);
    EXPECT_EQ(f.result, kind::fail) << f.problem;
    EXPECT_EQ(f.explanation, "mx.first.test says no");
    const auto s = second.check_now(client, "h.test", sender);
    EXPECT_EQ(s.result, kind::permerror) << s.problem;  // two includes, one DNS term allowed
  }
}

}  // namespace
}  // namespace portcullis::checks
