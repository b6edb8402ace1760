// io_pool: spare threads stand in for held ones and leave when they come
// back; run() waits for its threads, and says when one was left behind.
#include "net/io_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace portcullis {
namespace {

using namespace std::chrono_literals;

// Polls `done` for up to 5 s.
template <class F>
bool eventually(F done) {
  for (int i = 0; i < 500; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

// The pool comes to `n` running threads and stays there (no thread starts late).
void expect_running_stays(const io_pool& pool, unsigned n) {
  EXPECT_TRUE(eventually([&] { return pool.running() == n; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(pool.running(), n);
}

// A pool of `threads` (and up to `spares` spares) running a context with
// work, its run() on a thread of the test's; stop() ends it.
struct running_pool {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard = asio::make_work_guard(io);
  std::shared_ptr<io_pool> pool;
  std::future<bool> ran;
  running_pool(unsigned threads, unsigned spares) : pool(std::make_shared<io_pool>(io, threads, spares)) {
    ran = std::async(std::launch::async, [this] { return pool->run(1s); });
  }
  bool stop() {
    io.stop();
    return ran.get();
  }
};

TEST(IoPool, RunsItsThreadsUntilTheContextStops) {
  running_pool r(3, 4);
  auto& io = r.io;
  auto& pool = r.pool;
  ASSERT_TRUE(eventually([&] { return pool->running() == 3; }));
  // Handlers run on the pool's threads, which know their pool.
  std::promise<std::shared_ptr<io_pool>> seen;
  asio::post(io, [&] { seen.set_value(io_pool::current()); });
  EXPECT_EQ(seen.get_future().get(), pool);
  EXPECT_EQ(io_pool::current(), nullptr);  // not an I/O thread
  EXPECT_TRUE(r.stop());
  EXPECT_EQ(pool->running(), 0u);
}

TEST(IoPool, ASpareServesWhileTheOnlyThreadIsHeld) {
  running_pool r(1, 2);
  auto& io = r.io;
  auto& pool = r.pool;
  std::promise<void> let_go;
  auto released = let_go.get_future().share();
  std::atomic<bool> held{false};
  asio::post(io, [&] {
    held = true;
    released.wait();  // a hook that blocks its I/O thread
  });
  ASSERT_TRUE(eventually([&] { return held.load(); }));
  // Nothing else runs while the only thread is held...
  std::atomic<int> later{0};
  asio::post(io, [&] { ++later; });
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(later, 0);
  // ...until the pool is told, and a spare takes the queue.
  pool->hold();
  EXPECT_TRUE(eventually([&] { return later == 1; }));
  EXPECT_EQ(pool->running(), 2u);
  // The held thread comes back: the spare leaves once surplus for a second.
  let_go.set_value();
  pool->release();
  for (int i = 0; i < 3; ++i) asio::post(io, [&] { ++later; });
  EXPECT_TRUE(eventually([&] { return later == 4 && pool->running() == 1; }));
  EXPECT_TRUE(r.stop());
}

TEST(IoPool, SparesAreBounded) {
  running_pool r(1, 1);
  auto& pool = r.pool;
  ASSERT_TRUE(eventually([&] { return pool->running() == 1; }));
  pool->hold();
  pool->hold();  // a second held thread gets no second spare: max_spares is 1
  expect_running_stays(*pool, 2);
  EXPECT_TRUE(r.stop());
}

TEST(IoPool, ASpareLingersAndIsReused) {
  running_pool r(1, 2);
  auto& pool = r.pool;
  ASSERT_TRUE(eventually([&] { return pool->running() == 1; }));
  pool->hold();
  ASSERT_TRUE(eventually([&] { return pool->running() == 2; }));
  pool->release();
  pool->hold();  // a hook slow again soon after: the lingering spare takes it, no new thread
  expect_running_stays(*pool, 2);
  pool->release();
  EXPECT_TRUE(eventually([&] { return pool->running() == 1; }));  // after the linger
  EXPECT_TRUE(r.stop());
}

TEST(IoPool, AThreadStuckPastTheGraceIsLeftBehind) {
  // On the heap, freed only once the stuck thread is out of it.
  auto* io = new asio::io_context;
  auto pool = std::make_shared<io_pool>(*io, 1, 1);
  auto stuck = std::make_shared<std::promise<void>>();
  auto released = stuck->get_future().share();
  std::atomic<bool> in{false};
  // Posted before the pool runs: a context with no work yet would stop at once.
  asio::post(*io, [&in, released] {
    in = true;
    released.wait();
  });
  auto ran = std::async(std::launch::async, [&] { return pool->run(200ms); });
  ASSERT_TRUE(eventually([&] { return in.load(); }));
  pool->hold();
  ASSERT_TRUE(eventually([&] { return pool->running() == 2; }));
  io->stop();
  EXPECT_FALSE(ran.get());  // the spare ended; the held thread did not
  stuck->set_value();
  ASSERT_TRUE(eventually([&] { return pool->running() == 0; }));
  delete io;
}

}  // namespace
}  // namespace portcullis
