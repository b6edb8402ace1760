// pc.store's memory backend: values, counters, time to live (with a clock
// the test moves), eviction when full, bounds, and one table shared by
// processes forked after it was made (the daemon's workers).
#include "store/shared_kv.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <optional>
#include <string>

namespace portcullis {
namespace {

using namespace std::chrono_literals;
using status = shared_kv::status;

const shared_kv::clock::time_point t0 = shared_kv::clock::time_point(1000h);

// "k12": appended, not "k" + std::to_string(12) (g++ 12 warns, wrongly, -Wrestrict, at that operator+).
std::string numbered(const char* prefix, std::size_t n) {
  std::string out = prefix;
  out += std::to_string(n);
  return out;
}

std::int64_t incr(shared_kv& kv, std::string_view key, std::int64_t by = 1,
                  std::optional<shared_kv::clock::duration> ttl = std::nullopt, shared_kv::clock::time_point now = t0) {
  std::int64_t n = 0;
  EXPECT_EQ(kv.incr(key, by, ttl, n, now), status::ok);
  return n;
}

TEST(SharedKv, ValuesCountersAndDeletion) {
  shared_kv kv(1024);
  EXPECT_EQ(kv.get("a", t0), std::nullopt);
  EXPECT_EQ(kv.set("a", "hello", std::nullopt, t0), status::ok);
  EXPECT_EQ(kv.get("a", t0), "hello");
  EXPECT_EQ(kv.set("a", "", std::nullopt, t0), status::ok);  // an empty value is a value
  EXPECT_EQ(kv.get("a", t0), "");
  EXPECT_EQ(incr(kv, "n"), 1);
  EXPECT_EQ(incr(kv, "n", 41), 42);
  EXPECT_EQ(incr(kv, "n", -50), -8);
  EXPECT_EQ(kv.get("n", t0), "-8");
  std::int64_t out = 0;
  EXPECT_EQ(kv.incr("a", 1, std::nullopt, out, t0), status::not_integer);
  kv.set("big", "9223372036854775807", std::nullopt, t0);
  EXPECT_EQ(kv.incr("big", 1, std::nullopt, out, t0), status::overflow);
  EXPECT_TRUE(kv.erase("n", t0));
  EXPECT_FALSE(kv.erase("n", t0));
  EXPECT_EQ(incr(kv, "n"), 1);
  // Keys differ by every byte, including a trailing NUL.
  kv.set(std::string_view("k\0", 2), "nul", std::nullopt, t0);
  kv.set("k", "plain", std::nullopt, t0);
  EXPECT_EQ(kv.get(std::string_view("k\0", 2), t0), "nul");
  EXPECT_EQ(kv.get("k", t0), "plain");
}

TEST(SharedKv, TimeToLive) {
  shared_kv kv(1024);
  kv.set("s", "v", 10s, t0);
  EXPECT_EQ(kv.get("s", t0 + 9s), "v");
  EXPECT_EQ(kv.get("s", t0 + 10s), std::nullopt);
  EXPECT_EQ(incr(kv, "c", 1, 60s), 1);
  EXPECT_EQ(incr(kv, "c", 1, 3600s, t0 + 30s), 2);  // keeps its expiry, as Redis's INCR
  EXPECT_EQ(kv.get("c", t0 + 59s), "2");
  EXPECT_EQ(kv.get("c", t0 + 60s), std::nullopt);
  EXPECT_EQ(incr(kv, "c", 1, 60s, t0 + 60s), 1);  // a new window
  kv.set("s", "again", std::nullopt, t0 + 20s);  // set replaces the expiry too
  EXPECT_EQ(kv.get("s", t0 + 1000h), "again");
}

TEST(SharedKv, Bounds) {
  shared_kv kv(1024);
  const std::string key(shared_kv_max_key, 'k'), value(shared_kv_max_value, 'v');
  EXPECT_EQ(kv.set(key, value, std::nullopt, t0), status::ok);
  EXPECT_EQ(kv.get(key, t0), value);
  EXPECT_EQ(kv.set(key + "k", "v", std::nullopt, t0), status::too_long);
  EXPECT_EQ(kv.set("k", value + "v", std::nullopt, t0), status::too_long);
  EXPECT_EQ(kv.set("", "v", std::nullopt, t0), status::too_long);
  EXPECT_EQ(kv.get(key + "k", t0), std::nullopt);
}

TEST(SharedKv, WhenFullTheSoonestToExpireGivesWayNeverAKeptOne) {
  shared_kv kv(shared_kv_probe / shared_kv_slots_per_key);  // every key probes every slot
  for (std::size_t i = 0; i < shared_kv_probe; ++i)
    ASSERT_EQ(kv.set("forever" + std::to_string(i), "v", std::nullopt, t0), status::ok);
  EXPECT_EQ(kv.set("one more", "v", 10s, t0), status::full);
  std::int64_t out = 0;
  EXPECT_EQ(kv.incr("counter", 1, 10s, out, t0), status::full);
  EXPECT_EQ(kv.get("forever0", t0), "v");
  kv.erase("forever3", t0);
  kv.erase("forever7", t0);
  EXPECT_EQ(kv.set("soon", "1", 10s, t0), status::ok);
  EXPECT_EQ(kv.set("later", "2", 20s, t0), status::ok);
  EXPECT_EQ(kv.set("newest", "3", 30s, t0), status::ok);  // takes the slot of "soon"
  EXPECT_EQ(kv.get("soon", t0), std::nullopt);
  EXPECT_EQ(kv.get("later", t0), "2");
  EXPECT_EQ(kv.get("newest", t0), "3");
  EXPECT_EQ(kv.set("after", "4", std::nullopt, t0 + 25s), status::ok);  // "later" expired: its slot is free
  EXPECT_EQ(kv.get("after", t0 + 25s), "4");
}

// The capacity holds: the default table takes that many keys without a time
// to live (a 32-slot probe over one slot per key refused about the 32,000th of
// 65,536), and that many with one, none of them given up while live.
TEST(SharedKv, ItHoldsItsCapacityInKeys) {
  for (const bool with_ttl : {false, true}) {
    SCOPED_TRACE(with_ttl);
    shared_kv kv(shared_kv_default_entries);
    const std::optional<shared_kv::clock::duration> ttl = with_ttl ? std::optional(3600s) : std::nullopt;
    for (std::size_t i = 0; i < shared_kv_default_entries; ++i)
      ASSERT_EQ(kv.set(numbered("key", i), "v", ttl, t0), status::ok) << i;
    std::size_t live = 0;
    for (std::size_t i = 0; i < shared_kv_default_entries; ++i) live += kv.get(numbered("key", i), t0).has_value();
    EXPECT_EQ(live, shared_kv_default_entries);
  }
}

// A freed slot (erased, expired) does not end a search: keys stored past it are found.
TEST(SharedKv, KeysPastAFreedSlotAreFound) {
  shared_kv kv(shared_kv_probe / shared_kv_slots_per_key);  // every slot taken below: runs overlap
  for (std::size_t i = 0; i < shared_kv_probe; ++i)
    ASSERT_EQ(kv.set(numbered("k", i), std::to_string(i), i % 2 ? std::optional(5s) : std::nullopt, t0),
              status::ok);
  for (std::size_t i = 0; i < shared_kv_probe; i += 4) kv.erase(numbered("k", i), t0);  // freed
  const auto later = t0 + 10s;  // the odd ones expired: freed too
  for (std::size_t i = 2; i < shared_kv_probe; i += 4) EXPECT_EQ(kv.get(numbered("k", i), later), std::to_string(i));
  EXPECT_EQ(kv.set("new", "n", std::nullopt, later), status::ok);  // takes a freed slot
  for (std::size_t i = 2; i < shared_kv_probe; i += 4) EXPECT_EQ(kv.get(numbered("k", i), later), std::to_string(i));
}

TEST(SharedKv, ProcessesForkedAfterItShareIt) {
  shared_kv kv(4096);
  incr(kv, "shared", 1, std::nullopt, shared_kv::clock::now());
  constexpr int children = 4, each = 2000;
  for (int c = 0; c < children; ++c) {
    if (fork() == 0) {
      std::int64_t n = 0;
      bool ok = true;
      for (int i = 0; i < each; ++i) ok = ok && kv.incr("shared", 1, std::nullopt, n) == status::ok;
      ok = ok && kv.set("child" + std::to_string(c), "here", std::nullopt) == status::ok;
      _exit(ok ? 0 : 1);
    }
  }
  for (int i = 0; i < each; ++i) incr(kv, "shared", 1, std::nullopt, shared_kv::clock::now());
  for (int c = 0; c < children; ++c) {
    int status_code = 0;
    ASSERT_GT(wait(&status_code), 0);
    EXPECT_TRUE(WIFEXITED(status_code) && WEXITSTATUS(status_code) == 0);
  }
  EXPECT_EQ(kv.get("shared"), std::to_string(1 + (children + 1) * each));
  for (int c = 0; c < children; ++c) EXPECT_EQ(kv.get("child" + std::to_string(c)), "here");
}

// A worker killed while it writes (it holds the lock: the next process gets
// EOWNERDEAD) leaves the key whole or gone, at each of the update's stores:
// never a counter's new digits with its old length (99 + 1 read as "10",
// which the next incr made 11), nor a value cut or run on.
int die_after_store = 0;

void die_if_due(int store) {
  if (store == die_after_store) _exit(0);
}

// `update` run by a child process that dies right after the update's
// `store`-th store, holding the lock; then `then` in this process, on the same
// table (its lock taken as EOWNERDEAD).
void dying_at(int store, const std::function<void(shared_kv&)>& before, const std::function<void(shared_kv&)>& update,
              const std::function<void(shared_kv&)>& then) {
  shared_kv kv(1024);
  before(kv);
  const pid_t child = fork();
  if (child == 0) {
    die_after_store = store;
    shared_kv::after_store_for_tests = die_if_due;
    update(kv);
    _exit(1);  // (past its last store)
  }
  int status_code = 0;
  ASSERT_EQ(waitpid(child, &status_code, 0), child);
  ASSERT_TRUE(WIFEXITED(status_code));
  then(kv);
}

TEST(SharedKv, AWorkerDyingMidUpdateLeavesTheKeyWholeOrGone) {
  const auto nothing = [](shared_kv&) {};
  const auto plus_one = [](shared_kv& kv) { incr(kv, "c"); };
  int gone = 0;
  for (int store = 1; store <= 6; ++store) {
    SCOPED_TRACE(store);
    // A counter counted in place: 100, or gone; the next incr counts on from there.
    dying_at(store, [](shared_kv& kv) { kv.set("c", "99", std::nullopt, t0); }, plus_one, [&](shared_kv& kv) {
      const auto c = kv.get("c", t0);
      EXPECT_TRUE(c == std::nullopt || c == "100") << *c;
      gone += c == std::nullopt;
      EXPECT_EQ(incr(kv, "c"), c ? 101 : 1);
    });
    // A counter made: 1, or none.
    dying_at(store, nothing, plus_one, [](shared_kv& kv) {
      const auto c = kv.get("c", t0);
      EXPECT_TRUE(c == std::nullopt || c == "1") << *c;
    });
    // A shorter value over a longer one: the new one whole, or none.
    dying_at(store, [](shared_kv& kv) { kv.set("c", "a longer value", std::nullopt, t0); },
             [](shared_kv& kv) { kv.set("c", "short", std::nullopt, t0); },
             [](shared_kv& kv) {
               const auto c = kv.get("c", t0);
               EXPECT_TRUE(c == std::nullopt || c == "short") << *c;
             });
  }
  EXPECT_EQ(gone, 4);  // (a write's 5 stores: gone after each but the last; there is no 6th)
}

TEST(SharedKv, TheProcessTableIsMadeOnceAndKept) {
  make_process_kv(2048);
  shared_kv& a = process_kv();
  make_process_kv(4096);  // too late: the first one stays (workers already share it)
  EXPECT_EQ(&process_kv(), &a);
  EXPECT_EQ(a.capacity(), 2048u);
}

}  // namespace
}  // namespace portcullis
