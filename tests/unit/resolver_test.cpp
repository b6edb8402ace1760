// The resolver against a real DNS server on loopback (tests/dns/dns_server.py,
// dnslib, UDP and TCP), started by the test for its zones and stopped after.
#include "dns/resolver.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "unit/dns_server_process.hpp"

namespace portcullis::dns {
namespace {

using namespace std::chrono_literals;
using testing::dns_server;

const std::string long_text(3000, 'x');

const std::string zones = R"({
  "mail.example.test": [{"A": "192.0.2.10"}, {"AAAA": "2001:db8::10"}, {"TXT": "v=spf1 -all"}],
  "example.test": [{"MX": [20, "mx2.example.test"]}, {"MX": [10, "mx1.example.test"]},
                   {"TXT": ["v=spf1 ", "ip4:192.0.2.0/24 ", "-all"]}],
  "long.example.test": [{"TXT": ")" + long_text + R"("}],
  "10.2.0.192.in-addr.arpa": [{"PTR": "mail.example.test"}],
  "1.0.0.127.in-addr.arpa": [{"PTR": "loop.example.test"}],
  "localhost": [{"A": "192.0.2.99"}],
  "slow.example.test": ["TIMEOUT"],
  "after.example.test": [{"A": "192.0.2.11"}]
})";

resolver_options options_for(const dns_server& server, std::chrono::milliseconds timeout = 1000ms) {
  resolver_options o;
  o.nameserver = server.endpoint();
  o.timeout = timeout;
  return o;
}

// One server for the tests that leave it running (starting one takes a moment).
class Resolver : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { shared_ = new dns_server(zones); }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  static dns_server* shared_;
};

dns_server* Resolver::shared_ = nullptr;

std::vector<std::string> values(const answer& a) {
  std::vector<std::string> out;
  for (const auto& r : a.records) out.push_back(r.value);
  return out;
}

TEST_F(Resolver, AnswersEachTypeFromTheNameserver) {
  resolver r(options_for(*shared_));
  auto a = r.lookup_sync("mail.example.test", rr_type::a);
  ASSERT_TRUE(a.ok()) << a.error;
  EXPECT_EQ(values(a), std::vector<std::string>{"192.0.2.10"});
  EXPECT_GT(a.ttl, 0u);
  EXPECT_EQ(values(r.lookup_sync("mail.example.test", rr_type::aaaa)), std::vector<std::string>{"2001:db8::10"});
  auto mx = r.lookup_sync("example.test", rr_type::mx);
  ASSERT_EQ(mx.records.size(), 2u);
  EXPECT_EQ(mx.records[0].preference, 10);  // lowest preference first
  EXPECT_EQ(mx.records[0].value, "mx1.example.test");
  EXPECT_EQ(mx.records[1].value, "mx2.example.test");
  // A TXT record's character-strings are joined without a separator (RFC 7208 §3.3).
  EXPECT_EQ(values(r.lookup_sync("example.test", rr_type::txt)),
            std::vector<std::string>{"v=spf1 ip4:192.0.2.0/24 -all"});
  EXPECT_EQ(values(r.lookup_sync("10.2.0.192.in-addr.arpa", rr_type::ptr)),
            std::vector<std::string>{"mail.example.test"});
}

// The zones unbound answers itself by default go to the nameserver as any
// other: a PTR of 127.0.0.1 was unbound's "localhost", whatever the zone
// said (a policy's reverse lookup of a loopback client saw no record of it).
TEST_F(Resolver, AsksTheNameserverAboutLoopbackAndLocalhostToo) {
  resolver r(options_for(*shared_));
  EXPECT_EQ(values(r.lookup_sync("1.0.0.127.in-addr.arpa", rr_type::ptr)), std::vector<std::string>{"loop.example.test"});
  EXPECT_EQ(r.lookup_sync("2.0.0.127.in-addr.arpa", rr_type::ptr).what, answer::status::nxdomain);
  EXPECT_EQ(values(r.lookup_sync("localhost", rr_type::a)), std::vector<std::string>{"192.0.2.99"});
}

TEST_F(Resolver, TellsNoSuchNameFromNoSuchRecord) {
  resolver r(options_for(*shared_));
  auto nx = r.lookup_sync("nothing.example.test", rr_type::a);
  EXPECT_EQ(nx.what, answer::status::nxdomain);
  EXPECT_TRUE(nx.is_void());
  auto nodata = r.lookup_sync("example.test", rr_type::a);
  EXPECT_EQ(nodata.what, answer::status::ok);
  EXPECT_TRUE(nodata.records.empty());
  EXPECT_TRUE(nodata.is_void());
}

TEST_F(Resolver, ReadsAnAnswerTooBigForUdpOverTcp) {
  resolver r(options_for(*shared_));
  auto a = r.lookup_sync("long.example.test", rr_type::txt);
  ASSERT_TRUE(a.ok()) << a.error;
  EXPECT_EQ(values(a), std::vector<std::string>{long_text});
}

TEST_F(Resolver, AnswersMalformedNamesWithoutAsking) {
  resolver r(options_for(*shared_));
  for (std::string name : {std::string(64, 'a') + ".example.test", std::string("a..example.test"), std::string(""),
                           std::string(300, 'a'), std::string(".")}) {
    EXPECT_EQ(r.lookup_sync(name, rr_type::txt).what, answer::status::nxdomain) << name;
  }
  EXPECT_TRUE(valid_query_name("example.test."));
  EXPECT_FALSE(valid_query_name(std::string("a\0b.test", 8)));
}

TEST_F(Resolver, ATimeoutIsAnAnswerAndTheNameserverStaysInUse) {
  resolver r(options_for(*shared_, 300ms));
  const auto start = std::chrono::steady_clock::now();
  auto slow = r.lookup_sync("slow.example.test", rr_type::txt);
  EXPECT_EQ(slow.what, answer::status::timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  auto after = r.lookup_sync("after.example.test", rr_type::a);
  ASSERT_TRUE(after.ok()) << after.error;
  EXPECT_EQ(values(after), std::vector<std::string>{"192.0.2.11"});
}

TEST_F(Resolver, CachesAnswersForTheirTtl) {
  dns_server server(zones);
  resolver r(options_for(server, 300ms));
  ASSERT_TRUE(r.lookup_sync("mail.example.test", rr_type::a).ok());
  ASSERT_EQ(r.lookup_sync("nothing.example.test", rr_type::a).what, answer::status::nxdomain);
  server.stop();  // from now on only the cache answers
  auto cached = r.lookup_sync("mail.example.test", rr_type::a);
  ASSERT_TRUE(cached.ok()) << cached.error;
  EXPECT_EQ(values(cached), std::vector<std::string>{"192.0.2.10"});
  EXPECT_EQ(r.lookup_sync("nothing.example.test", rr_type::a).what, answer::status::nxdomain);  // RFC 2308
  EXPECT_EQ(r.lookup_sync("after.example.test", rr_type::a).what, answer::status::timeout);
}

// RFC 2308 §5: a negative answer without an SOA SHOULD NOT be cached.
// libunbound reports a TTL of 32768 s for it and keeps it 5 s; kept for
// that TTL, a record published a minute later would stay unseen for 9 hours.
TEST_F(Resolver, DoesNotKeepNegativeAnswersWithoutAnSoa) {
  dns_server server(zones, -1, false);
  resolver r(options_for(server, 300ms));
  const auto nx = r.lookup_sync("nothing.example.test", rr_type::a);
  ASSERT_EQ(nx.what, answer::status::nxdomain);
  EXPECT_EQ(nx.ttl, 0u);
  const auto nodata = r.lookup_sync("example.test", rr_type::a);
  ASSERT_TRUE(nodata.ok()) << nodata.error;
  ASSERT_TRUE(nodata.records.empty());
  EXPECT_EQ(nodata.ttl, 0u);
  EXPECT_FALSE(r.cached("nothing.example.test", rr_type::a).has_value());
  EXPECT_FALSE(r.cached("example.test", rr_type::a).has_value());
  ASSERT_TRUE(r.lookup_sync("mail.example.test", rr_type::a).ok());
  server.stop();  // from now on only a cache answers
  std::this_thread::sleep_for(6500ms);  // (past libunbound's 5 s, in whole seconds)
  EXPECT_EQ(r.lookup_sync("nothing.example.test", rr_type::a).what, answer::status::timeout);
  EXPECT_EQ(r.lookup_sync("example.test", rr_type::a).what, answer::status::timeout);
  EXPECT_TRUE(r.lookup_sync("mail.example.test", rr_type::a).ok());  // a positive answer is kept
}

// TTLs are capped as unbound caps them: a day, an hour for negative answers.
TEST_F(Resolver, CapsTheTtlsItKeepsAnswersFor) {
  dns_server server(zones, 7 * 86400);  // records, and the SOA that makes negative answers cacheable
  resolver r(options_for(server));
  const auto a = r.lookup_sync("mail.example.test", rr_type::a);
  ASSERT_TRUE(a.ok()) << a.error;
  EXPECT_LE(a.ttl, 86400u);
  EXPECT_GT(a.ttl, 86000u);
  const auto nx = r.lookup_sync("nothing.example.test", rr_type::a);
  ASSERT_EQ(nx.what, answer::status::nxdomain);
  EXPECT_LE(nx.ttl, 3600u);
  EXPECT_GT(nx.ttl, 3500u);
  const auto kept = r.cached("nothing.example.test", rr_type::a);  // with an SOA: kept
  ASSERT_TRUE(kept.has_value());
  EXPECT_LE(kept->ttl, 3600u);
}

TEST_F(Resolver, CachedAnswersOnlyWhatIsRememberedAndNeverQueries) {
  resolver r(options_for(*shared_));
  EXPECT_FALSE(r.cached("after.example.test", rr_type::a).has_value());  // never asked: nothing
  EXPECT_FALSE(r.cached("after.example.test", rr_type::a).has_value());
  ASSERT_TRUE(r.lookup_sync("after.example.test", rr_type::a).ok());
  const auto known = r.cached("after.example.test", rr_type::a);
  ASSERT_TRUE(known.has_value());
  EXPECT_EQ(values(*known), std::vector<std::string>{"192.0.2.11"});
  EXPECT_FALSE(r.cached("after.example.test", rr_type::txt).has_value());  // another type is another question
  // A name that cannot exist needs no query: NXDOMAIN at once.
  const auto bad = r.cached(std::string(70, 'x') + ".example.test", rr_type::txt);
  ASSERT_TRUE(bad.has_value());
  EXPECT_EQ(bad->what, answer::status::nxdomain);
}

TEST_F(Resolver, CachedAnswersAgeAndExpire) {
  dns_server server(zones, 2);  // every record's TTL: 2 s
  resolver r(options_for(server, 300ms));
  const auto first = r.lookup_sync("Mail.Example.Test.", rr_type::a);
  ASSERT_TRUE(first.ok()) << first.error;
  EXPECT_LE(first.ttl, 2u);
  server.stop();
  std::this_thread::sleep_for(1100ms);
  const auto again = r.lookup_sync("mail.example.test", rr_type::a);  // the same name in other spelling
  ASSERT_TRUE(again.ok()) << again.error;
  EXPECT_EQ(values(again), std::vector<std::string>{"192.0.2.10"});
  EXPECT_LE(again.ttl, 1u);  // what is left of it
  std::this_thread::sleep_for(2000ms);  // (libunbound counts whole seconds: give it one more)
  EXPECT_EQ(r.lookup_sync("mail.example.test", rr_type::a).what, answer::status::timeout);  // expired everywhere
}

TEST_F(Resolver, DeliversToCoroutinesOnTheirExecutor) {
  resolver r(options_for(*shared_));
  asio::io_context io;
  std::vector<std::string> got;
  std::thread::id on;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto a = co_await r.async_lookup("mail.example.test", rr_type::a, asio::use_awaitable);
        on = std::this_thread::get_id();
        got = values(a);
      },
      asio::detached);
  io.run();
  EXPECT_EQ(got, std::vector<std::string>{"192.0.2.10"});
  EXPECT_EQ(on, std::this_thread::get_id());
}

TEST_F(Resolver, ServesManyThreadsAtOnce) {
  resolver r(options_for(*shared_));
  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto a = r.lookup_sync(i % 2 ? "mail.example.test" : "after.example.test", rr_type::a);
        if (a.ok() && a.records.size() == 1) ++right;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(right.load(), 400);
}

TEST_F(Resolver, AnswersLookupsStillRunningWhenItStops) {
  std::atomic<int> answered{0};
  answer last;
  {
    resolver r(options_for(*shared_, 5000ms));
    for (int i = 0; i < 3; ++i) {
      r.lookup("slow.example.test", rr_type::txt, [&](answer a) {
        last = std::move(a);
        ++answered;
      });
    }
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(answered.load(), 3);
  EXPECT_EQ(last.what, answer::status::failure);
  EXPECT_EQ(last.error, "the resolver stopped");
}

TEST_F(Resolver, KnowsTheTypesPoliciesName) {
  EXPECT_EQ(rr_type_named("txt"), rr_type::txt);
  EXPECT_EQ(rr_type_named("AAAA"), rr_type::aaaa);
  EXPECT_EQ(rr_type_named("SRV"), std::nullopt);
  EXPECT_EQ(to_string(rr_type::mx), "MX");
}

}  // namespace
}  // namespace portcullis::dns
