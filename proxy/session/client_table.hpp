// What the worker processes (server.workers) share about client addresses,
// so that limits per address hold across all of them, not N times over:
// open connections (server.max_connections_per_client, and
// server.max_connections in all) and failed AUTH attempts
// (auth.max_failures_per_client within auth.failure_window). Also the
// session counter that keeps session ids unique across workers.
//
// It lives in one anonymous shared mapping (MAP_SHARED|MAP_ANONYMOUS) made
// before fork and inherited by every worker; with one process it is simply
// private memory. One process-shared *robust* mutex guards it: a worker
// killed while holding it leaves it to the next locker (EOWNERDEAD), and
// every update is a single store, so what it leaves behind is consistent.
//
// Connections are counted per worker (one counter per worker and address):
// the supervisor zeroes a dead worker's counters when it reaps it, so the
// connections of a crashed worker never stay counted.
//
// A fixed-size open-addressing hash of addresses (seeded per run, so a
// client cannot pick colliding addresses): an address is looked for among
// client_table_probe slots from its hash (up to the first never used: an
// address is never placed past one). When none of those slots is free,
// an address that only has failed logins on record (the oldest-expiring
// one) gives its slot up; when all of them hold open connections, the new
// connection is refused (admission::table_full: 421 4.7.0) and a failed
// login is not recorded. That takes client_table_capacity addresses with
// open connections at once, far more than server.max_connections allows by
// default.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "asio.hpp"

namespace portcullis {

class shared_mapping;

// A failed login counted ahead of a password check (client_table::reserve_failure),
// to be taken back if the check succeeds. Empty: nothing was counted.
struct failure_reservation {
  std::size_t slice = static_cast<std::size_t>(-1);
  std::int64_t slice_number = 0;  // which slice of time it was counted in (now / slice length)
  std::int64_t slice_ms = 0;
};

inline constexpr std::size_t client_table_capacity = 16384;  // addresses held at once, at least
// Twice as many slots as addresses, and a long probe: at half load a run of
// client_table_probe taken slots is all but impossible (about e^-12 a slot
// for linear probing), so the table takes its capacity in addresses, where
// one slot per address and a short probe refused the 10,000th.
inline constexpr std::size_t client_table_slots_per_address = 2;
inline constexpr std::size_t client_table_probe = 64;  // slots looked at for one address, at most
// A failure window is counted in this many slices (sliding, in steps of a
// slice): a failure counts for at least failure_window and at most one
// slice (failure_window / (slices - 1)) longer; never less.
inline constexpr std::size_t failure_slices = 16;

class client_table {
 public:
  using clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC: one clock for every process
  enum class admission { admitted, too_many_connections, too_many_from_client, table_full };

  // Room for `workers` processes (worker numbers 0 .. workers-1).
  explicit client_table(unsigned workers, std::size_t capacity = client_table_capacity);
  ~client_table();
  client_table(const client_table&) = delete;
  client_table& operator=(const client_table&) = delete;

  unsigned workers() const { return workers_; }

  // A new connection from `client` on `worker`, unless the daemon has
  // `total_limit` connections, or `client` has `per_client_limit`.
  admission admit(unsigned worker, const asio::ip::address& client, std::size_t per_client_limit,
                  std::size_t total_limit);
  // The end of a connection admit() let in.
  void release(unsigned worker, const asio::ip::address& client);
  // Open connections from `client` (every worker), and in all.
  std::size_t connections(const asio::ip::address& client);
  std::size_t connections();

  void record_failure(const asio::ip::address& client, clock::duration window, clock::time_point now = clock::now());
  // Has `client` failed `limit` times within `window`?
  bool over_failure_limit(const asio::ip::address& client, std::size_t limit, clock::duration window,
                          clock::time_point now = clock::now());

  // Atomically (one lock, so parallel sessions in any worker cannot each
  // pass the check before any of them records): unless `client` has failed
  // `limit` times within `window`, count one more failure now and say where,
  // so that a login that then succeeds can take it back; nullopt when over
  // the limit. A login is counted before its (slow) password check: a check
  // in flight counts against the limit.
  std::optional<failure_reservation> reserve_failure(const asio::ip::address& client, std::size_t limit,
                                                     clock::duration window, clock::time_point now = clock::now());
  // The login reserved did not fail: one failure fewer (if its slice still holds it).
  void cancel_failure(const asio::ip::address& client, const failure_reservation& r);

  // The supervisor, once `worker` is reaped: none of its connections is open any more.
  void forget_worker(unsigned worker);
  // A worker says it is listening (the supervisor tells a worker that fails
  // at start-up from one that crashed later); forget_worker clears it.
  void set_ready(unsigned worker);
  bool ready(unsigned worker) const;
  // A worker has finished a reload (applied or refused): the supervisor
  // waits for every worker's count to move before telling systemd it is
  // ready, and says how many refused it.
  void count_reload(unsigned worker, bool accepted);
  std::uint32_t reloads(unsigned worker) const;
  std::uint32_t refused_reloads(unsigned worker) const;

  // A number no other call in any worker returns (for session ids).
  std::uint64_t next_session_number();
  // Drawn once per run, the same in every worker.
  std::uint64_t session_seed() const;

 private:
  struct header;
  struct worker_slot;
  struct entry;
  class lock;

  // Under the lock: the slot of `client`, or npos; with `create`, a slot is
  // made for it if one can be (see the top of this file).
  std::size_t find(const std::uint8_t (&key)[16], bool create, std::int64_t now_ms);
  std::size_t open_connections(std::size_t slot) const;
  // Under the lock: failures of `e` within the window; one more at `now`.
  static std::size_t failures_within(const entry& e, std::int64_t now_ms, std::int64_t window_ms);
  static failure_reservation add_failure(entry& e, std::int64_t now_ms, std::int64_t window_ms);
  std::uint32_t& count(unsigned worker, std::size_t slot) const;

  unsigned workers_;
  std::size_t slots_;  // client_table_slots_per_address a capacity's address
  std::size_t bytes_ = 0;
  std::unique_ptr<shared_mapping> map_;
  header* header_ = nullptr;
  worker_slot* worker_slots_ = nullptr;
  entry* entries_ = nullptr;
  std::uint32_t* counts_ = nullptr;  // [workers][slots]
};

}  // namespace portcullis
