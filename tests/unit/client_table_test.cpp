// The table the worker processes share: connection limits per address and
// in all, failed logins over a window, a dead worker's counts, a full table,
// and two real processes counting in one mapping.
#include "session/client_table.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

using namespace std::chrono_literals;
using admission = client_table::admission;

asio::ip::address ip(const std::string& s) { return asio::ip::make_address(s); }

TEST(ClientTable, ConnectionLimitsHoldAcrossWorkers) {
  client_table t(2);
  const auto a = ip("192.0.2.1");
  EXPECT_EQ(t.admit(0, a, 2, 100), admission::admitted);
  EXPECT_EQ(t.admit(1, a, 2, 100), admission::admitted);
  // The third, whichever worker takes it.
  EXPECT_EQ(t.admit(0, a, 2, 100), admission::too_many_from_client);
  EXPECT_EQ(t.admit(1, a, 2, 100), admission::too_many_from_client);
  EXPECT_EQ(t.connections(a), 2u);
  EXPECT_EQ(t.admit(1, ip("192.0.2.2"), 2, 100), admission::admitted);  // another address
  t.release(1, a);
  EXPECT_EQ(t.admit(0, a, 2, 100), admission::admitted);
  EXPECT_EQ(t.connections(), 3u);
}

TEST(ClientTable, TotalLimitHoldsAcrossWorkers) {
  client_table t(3);
  EXPECT_EQ(t.admit(0, ip("192.0.2.1"), 10, 2), admission::admitted);
  EXPECT_EQ(t.admit(1, ip("192.0.2.2"), 10, 2), admission::admitted);
  EXPECT_EQ(t.admit(2, ip("192.0.2.3"), 10, 2), admission::too_many_connections);
  t.release(0, ip("192.0.2.1"));
  EXPECT_EQ(t.admit(2, ip("192.0.2.3"), 10, 2), admission::admitted);
}

TEST(ClientTable, IPv4AndItsMappedFormAreOneClient) {
  client_table t(1);
  EXPECT_EQ(t.admit(0, ip("192.0.2.1"), 1, 100), admission::admitted);
  EXPECT_EQ(t.admit(0, ip("::ffff:192.0.2.1"), 1, 100), admission::too_many_from_client);
  EXPECT_EQ(t.admit(0, ip("2001:db8::1"), 1, 100), admission::admitted);
}

TEST(ClientTable, ADeadWorkersConnectionsAreForgotten) {
  client_table t(2);
  const auto a = ip("192.0.2.1");
  EXPECT_EQ(t.admit(0, a, 2, 100), admission::admitted);
  EXPECT_EQ(t.admit(1, a, 2, 100), admission::admitted);
  t.set_ready(1);
  EXPECT_TRUE(t.ready(1));
  t.forget_worker(1);  // the supervisor reaped it
  EXPECT_FALSE(t.ready(1));
  EXPECT_EQ(t.connections(a), 1u);
  EXPECT_EQ(t.connections(), 1u);
  EXPECT_EQ(t.admit(1, a, 2, 100), admission::admitted);
  t.release(0, a);  // worker 0's connection ends as usual
  EXPECT_EQ(t.connections(a), 1u);
}

TEST(ClientTable, FailuresCountWithinTheWindowAndNeverLess) {
  client_table t(1);
  const auto a = ip("192.0.2.1");
  const auto t0 = client_table::clock::time_point(1000s);
  const auto window = 600s;
  for (int i = 0; i < 3; ++i) t.record_failure(a, window, t0 + i * 1s);
  EXPECT_TRUE(t.over_failure_limit(a, 3, window, t0 + 3s));
  EXPECT_FALSE(t.over_failure_limit(a, 4, window, t0 + 3s));
  EXPECT_FALSE(t.over_failure_limit(ip("192.0.2.2"), 1, window, t0 + 3s));
  // Still counted at the end of the window (a slice may count a little longer, never shorter).
  EXPECT_TRUE(t.over_failure_limit(a, 3, window, t0 + 2s + window - 1ms));
  // Gone one slice after the window.
  const auto slice = window / (failure_slices - 1);
  EXPECT_FALSE(t.over_failure_limit(a, 1, window, t0 + 2s + window + slice + 1s));
  // A slice reused a window later starts from zero.
  t.record_failure(a, window, t0 + 2 * window + 2 * slice);
  EXPECT_TRUE(t.over_failure_limit(a, 1, window, t0 + 2 * window + 2 * slice));
  EXPECT_FALSE(t.over_failure_limit(a, 2, window, t0 + 2 * window + 2 * slice));
}

TEST(ClientTable, FailuresSpreadOverTheWindowAllCount) {
  client_table t(1);
  const auto a = ip("2001:db8::7");
  const auto t0 = client_table::clock::time_point(5000s);
  for (int i = 0; i < 10; ++i) t.record_failure(a, 100s, t0 + i * 10s);  // one per slice and more
  EXPECT_TRUE(t.over_failure_limit(a, 10, 100s, t0 + 95s));
  EXPECT_FALSE(t.over_failure_limit(a, 10, 100s, t0 + 115s));  // the first ones went
}

// A login is counted before its password check, atomically with the limit:
// attempts in flight count, and one that succeeds is taken back.
TEST(ClientTable, ReservedFailuresCountAgainstTheLimitUntilTakenBack) {
  client_table t(1);
  const auto a = ip("192.0.2.1");
  const auto t0 = client_table::clock::time_point(1000s);
  std::vector<failure_reservation> in_flight;
  for (int i = 0; i < 3; ++i) {
    auto r = t.reserve_failure(a, 3, 600s, t0);
    ASSERT_TRUE(r) << i;
    in_flight.push_back(*r);
  }
  EXPECT_FALSE(t.reserve_failure(a, 3, 600s, t0));  // three in flight: a fourth waits for none of them
  EXPECT_TRUE(t.over_failure_limit(a, 3, 600s, t0));
  t.cancel_failure(a, in_flight[0]);  // that one logged in
  EXPECT_FALSE(t.over_failure_limit(a, 3, 600s, t0 + 1s));
  EXPECT_TRUE(t.over_failure_limit(a, 2, 600s, t0 + 1s));
  EXPECT_TRUE(t.reserve_failure(a, 3, 600s, t0 + 1s));
  EXPECT_FALSE(t.reserve_failure(a, 3, 600s, t0 + 1s));
  // Successes never use the limit up.
  const auto b = ip("192.0.2.2");
  for (int i = 0; i < 10; ++i) {
    auto r = t.reserve_failure(b, 2, 600s, t0 + i * 1s);
    ASSERT_TRUE(r) << i;
    t.cancel_failure(b, *r);
  }
  EXPECT_FALSE(t.over_failure_limit(b, 1, 600s, t0 + 10s));
  // A reservation whose slice has been reused since is not taken back from newer failures.
  const auto c = ip("192.0.2.3");
  auto old = t.reserve_failure(c, 5, 600s, t0);
  ASSERT_TRUE(old);
  t.record_failure(c, 600s, t0 + 2 * 600s + 600s / (failure_slices - 1) * failure_slices);
  t.cancel_failure(c, *old);
  EXPECT_TRUE(t.over_failure_limit(c, 1, 600s, t0 + 2 * 600s + 600s / (failure_slices - 1) * failure_slices));
}

// Threads racing for the last places: exactly `limit` get one.
TEST(ClientTable, ReservationsInParallelNeverPassTheLimit) {
  client_table t(1);
  const auto a = ip("192.0.2.9");
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i)
    threads.emplace_back([&] {
      for (int j = 0; j < 50; ++j)
        if (t.reserve_failure(a, 10, 600s)) ++granted;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(granted.load(), 10);
}

// A table of 4 slots: connected clients fill it, then a new one is refused;
// a client with only failed logins gives its slot up.
TEST(ClientTable, AFullTableRefusesAndEvictsFailuresFirst) {
  client_table t(1, 2);  // 4 slots: every address probes every one
  const auto now = client_table::clock::now();
  t.record_failure(ip("198.51.100.9"), 600s, now);
  for (int i = 1; i <= 4; ++i)
    EXPECT_EQ(t.admit(0, ip("192.0.2." + std::to_string(i)), 5, 100), admission::admitted) << i;
  EXPECT_FALSE(t.over_failure_limit(ip("198.51.100.9"), 1, 600s, now));  // evicted for a connection
  EXPECT_EQ(t.admit(0, ip("192.0.2.5"), 5, 100), admission::table_full);
  t.record_failure(ip("192.0.2.6"), 600s, now);  // no room: not recorded, and no harm
  EXPECT_FALSE(t.over_failure_limit(ip("192.0.2.6"), 1, 600s, now));
  // The ones in the table still count and release as usual.
  EXPECT_EQ(t.admit(0, ip("192.0.2.1"), 5, 100), admission::admitted);
  EXPECT_EQ(t.connections(ip("192.0.2.1")), 2u);
  t.release(0, ip("192.0.2.4"));
  EXPECT_EQ(t.admit(0, ip("192.0.2.5"), 5, 100), admission::admitted);  // its slot is free again
}

// The documented capacity holds: that many addresses with connections at once
// (one slot per address and a 32-slot probe refused about the 10,000th of 16,384).
TEST(ClientTable, ItHoldsItsCapacityInAddresses) {
  client_table t(2, client_table_capacity);
  for (std::size_t i = 0; i < client_table_capacity; ++i) {
    const auto a = asio::ip::make_address_v6(asio::ip::address_v6::bytes_type{
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, static_cast<unsigned char>(i >> 8),
        static_cast<unsigned char>(i)});
    ASSERT_EQ(t.admit(static_cast<unsigned>(i % 2), a, 5, 1000000), admission::admitted) << i;
  }
  EXPECT_EQ(t.connections(ip("2001:db8::1")), 1u);
  EXPECT_EQ(t.connections(ip("2001:db8::3fff")), 1u);
}

TEST(ClientTable, SessionNumbersAreUniqueAcrossProcesses) {
  client_table t(2);
  const auto first = t.next_session_number();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Worker 1 in another process: a connection, a failure, a number.
    const bool ok = t.admit(1, ip("192.0.2.1"), 1, 100) == admission::admitted && t.next_session_number() == first + 1;
    t.record_failure(ip("192.0.2.1"), 600s);
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(t.next_session_number(), first + 2);
  EXPECT_EQ(t.admit(0, ip("192.0.2.1"), 1, 100), admission::too_many_from_client);  // the child's connection
  EXPECT_TRUE(t.over_failure_limit(ip("192.0.2.1"), 1, 600s));
  t.forget_worker(1);  // it died without releasing
  EXPECT_EQ(t.admit(0, ip("192.0.2.1"), 1, 100), admission::admitted);
}

}  // namespace
}  // namespace portcullis
