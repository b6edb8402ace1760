// pc.store's memory backend: a small key-value store in shared memory, so
// that every worker process (server.workers) sees the same counters and
// values. Keys up to 200 bytes, values up to 256 (text; counters are
// decimal integers, as in Redis), each with an optional time to live.
//
// A fixed-size open-addressing hash (seeded per run, so a client cannot
// pick colliding keys) of twice as many slots as the capacity in keys: a key
// is looked for among shared_kv_probe slots from its hash, up to the first
// never used. A new key takes a free or expired slot there; failing that,
// the one that expires soonest; when every slot there lives forever, the
// write is refused (`full`), never an existing key dropped silently. At the
// capacity, half the slots are taken, where a run of shared_kv_probe taken
// ones is all but impossible (about e^-24 a slot for linear probing): the
// table holds its capacity, and only past it do keys give way or get refused.
// One robust mutex guards it (store/shared_memory.hpp); operations are a
// few hundred nanoseconds, so it is held that long. A worker may die holding
// it (SIGKILL, a crash): every update frees its slot first and makes it live
// last, so the next process to lock finds the slot whole or free (the key
// gone), never half written (a counter's new digits with its old length).
//
// The daemon makes the process's table before its workers fork
// (make_process_kv); anything else that asks (the extension module, the
// unit tests) gets a private one of the default size on first use.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace portcullis {

class shared_mapping;

inline constexpr std::size_t shared_kv_max_key = 200;
inline constexpr std::size_t shared_kv_max_value = 256;
inline constexpr std::size_t shared_kv_probe = 128;
inline constexpr std::size_t shared_kv_slots_per_key = 2;
inline constexpr std::size_t shared_kv_default_entries = 65536;

class shared_kv {
 public:
  using clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC: one clock for every process
  enum class status { ok, too_long, full, not_integer, overflow };

  explicit shared_kv(std::size_t capacity = shared_kv_default_entries);
  ~shared_kv();
  shared_kv(const shared_kv&) = delete;
  shared_kv& operator=(const shared_kv&) = delete;

  std::optional<std::string> get(std::string_view key, clock::time_point now = clock::now());
  // `ttl`: none, the key lives until deleted (or evicted when full of expiring keys).
  status set(std::string_view key, std::string_view value, std::optional<clock::duration> ttl,
             clock::time_point now = clock::now());
  // Adds `by` to the integer at `key` (a missing key counts as 0 and gets
  // `ttl`; an existing one keeps its expiry) and gives the new value.
  // not_integer: the value is not a decimal int64 as Redis's INCR reads one
  // (no sign but "-", no leading zero, not "-0").
  status incr(std::string_view key, std::int64_t by, std::optional<clock::duration> ttl, std::int64_t& result,
              clock::time_point now = clock::now());
  bool erase(std::string_view key, clock::time_point now = clock::now());
  std::size_t capacity() const { return capacity_; }

  // For the tests: called after each store of an update with its number
  // (1, 2, ...), so that a test can end the process exactly there.
  static inline void (*after_store_for_tests)(int store) = nullptr;

 private:
  struct header;
  struct entry;
  // Under the lock: the slot holding `key`, or (with `create`) the slot it may take; npos for none.
  std::size_t find(std::string_view key, bool create, std::int64_t now_ms);
  // Under the lock: `slot` made `key` = `value`, living until `expires_ms`, in the order above.
  void write(std::size_t slot, std::string_view key, std::string_view value, std::int64_t expires_ms);

  std::size_t capacity_;
  std::size_t slots_;  // shared_kv_slots_per_key a key of the capacity
  std::unique_ptr<shared_mapping> map_;
  header* header_ = nullptr;
  entry* entries_ = nullptr;
};

// The process's table: the daemon's, shared with its workers, once
// make_process_kv ran (before fork); else a private one made on first use.
shared_kv& process_kv();
void make_process_kv(std::size_t capacity);

}  // namespace portcullis
