#include "net/io_pool.hpp"

#include <pthread.h>

#include <thread>

namespace portcullis {

namespace {
thread_local io_pool* this_threads_pool = nullptr;
// An idle spare looks this often whether it may leave.
constexpr auto spare_check = std::chrono::milliseconds(100);
// How long spares stay once there are more than held threads.
constexpr auto spare_linger = std::chrono::seconds(1);
}  // namespace

io_pool::io_pool(asio::io_context& io, unsigned threads, unsigned max_spares)
    : io_(io), threads_(std::max(1u, threads)), max_spares_(max_spares) {}

std::shared_ptr<io_pool> io_pool::current() {
  return this_threads_pool ? this_threads_pool->shared_from_this() : nullptr;
}

bool io_pool::run(std::chrono::steady_clock::duration grace) {
  std::unique_lock lock(mutex_);
  for (unsigned i = 0; i < threads_; ++i) start_thread(false);
  // Joins spares as they leave; a pool thread leaves run() for good only once
  // the context stopped (or ran out of work).
  for (;;) {
    ended_.wait(lock, [this] { return stopped_ || !finished_.empty(); });
    join_finished(lock);
    if (stopped_) break;
  }
  const auto until = std::chrono::steady_clock::now() + grace;
  while (!started_.empty() && ended_.wait_until(lock, until, [this] { return !finished_.empty(); }))
    join_finished(lock);
  if (started_.empty()) return true;
  for (auto& [id, thread] : started_) thread.detach();  // held in a hook: left behind
  started_.clear();
  return false;
}

void io_pool::join_finished(std::unique_lock<std::mutex>& lock) {
  std::vector<std::thread> done;
  for (const auto id : std::exchange(finished_, {})) {
    done.push_back(std::move(started_.at(id)));
    started_.erase(id);
  }
  lock.unlock();
  // Joined, not only counted: a thread's exit still runs its thread-local
  // destructors (OpenSSL's among them), which must be over before exit().
  for (auto& thread : done) thread.join();
  lock.lock();
}

void io_pool::start_thread(bool spare) {
  ++alive_;
  if (spare) ++spares_;
  std::thread thread([self = shared_from_this(), spare] { self->thread_main(spare); });
  const auto id = thread.get_id();
  started_.emplace(id, std::move(thread));  // (its end waits for mutex_, held here)
}

void io_pool::thread_main(bool spare) {
  pthread_setname_np(pthread_self(), spare ? "pc-io-spare" : "pc-io");
  this_threads_pool = this;
  bool counted_out = false;
  if (spare) {
    // One handler at a time (or a short wait), to leave soon after the held thread is back.
    for (;;) {
      io_.run_one_for(spare_check);
      if (io_.stopped()) break;
      if ((counted_out = spare_may_leave())) break;
    }
  } else {
    io_.run();
  }
  std::lock_guard lock(mutex_);
  if (spare && !counted_out) --spares_;
  if (!counted_out) stopped_ = true;  // run() returns once the context stopped (or has no work left)
  --alive_;
  finished_.push_back(std::this_thread::get_id());
  ended_.notify_all();
}

bool io_pool::spare_may_leave() {
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (spares_ <= held_) {
    surplus_since_.reset();
    return false;
  }
  // A surplus spare lingers a while: hooks that are often slow reuse it
  // instead of starting a thread each.
  if (!surplus_since_) surplus_since_ = now;
  if (now - *surplus_since_ < spare_linger) return false;
  surplus_since_.reset();
  --spares_;
  return true;
}

void io_pool::hold() {
  std::lock_guard lock(mutex_);
  ++held_;
  if (spares_ < held_ && spares_ < max_spares_ && !io_.stopped()) start_thread(true);
}

void io_pool::release() {
  std::lock_guard lock(mutex_);
  if (held_ > 0) --held_;
}

unsigned io_pool::running() const {
  std::lock_guard lock(mutex_);
  return alive_;
}

}  // namespace portcullis
