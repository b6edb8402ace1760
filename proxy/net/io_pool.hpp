// The threads that run the daemon's io_context.
//
// A plain policy hook runs on the I/O thread that takes its job (no hand-off
// to another thread, no wake-up: a no-op hook costs a function call). Such a
// hook may block (a slow lookup, a hung one): the policy engine then says so
// with hold(), and a spare thread runs the context in the held one's place,
// so other sessions never wait for a hook; once the hook returns, release()
// lets one thread go again (after a second, so often-slow hooks reuse it).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "asio.hpp"

namespace portcullis {

class io_pool : public std::enable_shared_from_this<io_pool> {
 public:
  // `threads` run the context; up to `max_spares` more stand in for held ones.
  io_pool(asio::io_context& io, unsigned threads, unsigned max_spares);

  // Runs the context on the pool's threads (the caller only waits) until it
  // stops, then gives threads still in a hook `grace` to come back. Returns
  // false if one did not: it may still return into the context, so the
  // caller must leave without destroying it.
  bool run(std::chrono::steady_clock::duration grace);

  // The pool the calling thread runs for; null off the I/O threads.
  static std::shared_ptr<io_pool> current();

  // One of the pool's threads is held in a slow hook: a spare takes its
  // place (up to max_spares). Any thread may call these.
  void hold();
  // A held thread came back: a spare leaves once it has been surplus for a second.
  void release();

  // Threads now running the context, spares included (for tests and logs).
  unsigned running() const;

 private:
  void start_thread(bool spare);  // (under mutex_)
  void thread_main(bool spare);
  bool spare_may_leave();
  void join_finished(std::unique_lock<std::mutex>& lock);  // (run()'s thread)

  asio::io_context& io_;
  const unsigned threads_;
  const unsigned max_spares_;
  mutable std::mutex mutex_;
  std::condition_variable ended_;
  unsigned alive_ = 0;   // threads started and not ended
  unsigned held_ = 0;    // threads held in slow hooks
  unsigned spares_ = 0;  // spare threads alive
  bool stopped_ = false;  // a thread left the context for good
  std::map<std::thread::id, std::thread> started_;  // not joined yet
  std::vector<std::thread::id> finished_;           // ended, to join
  std::optional<std::chrono::steady_clock::time_point> surplus_since_;  // more spares than held threads
};

}  // namespace portcullis
