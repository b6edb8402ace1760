// session_executor: work handed over with run_after_strand runs on the same
// thread as soon as the session's strand is left, before anything queued on
// the io_context, and never inside the strand.
#include "net/session_executor.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

using executor = session_executor<session_strand>;

// The initiation of an operation whose work runs after the strand (as python_policy::run hands
// over a hook) and which completes through the coroutine's executor (as a job's completion does).
struct after_strand_op {
  asio::any_io_executor ex;
  std::vector<std::string>& log;
  bool* handed_over;
  template <typename Handler>
  void operator()(Handler handler) {
    auto work = [ex = ex, &log = log, session = ex.target<executor>()->inner(),
                 handler = std::move(handler)]() mutable {
      log.push_back(session.running_in_this_thread() ? "task in strand" : "task outside strand");
      asio::dispatch(ex, [handler = std::move(handler)]() mutable { std::move(handler)(); });
    };
    *handed_over = run_after_strand(ex, work);
    if (!*handed_over) asio::defer(static_cast<asio::io_context&>(asio::query(ex, asio::execution::context)), std::move(work));
  }
};

TEST(SessionExecutor, RunsHandedOverWorkOnLeavingTheStrandBeforeQueuedHandlers) {
  asio::io_context io;
  const executor ex = make_session_executor(io);
  std::vector<std::string> log;
  bool handed_over = false;
  std::thread::id session_thread, resumed_thread;
  asio::co_spawn(
      ex,
      [&]() -> awaitable<void> {
        auto self = co_await asio::this_coro::executor;
        // A session goes on from I/O completions, which dispatch to it (co_spawn's first step is posted).
        asio::steady_timer io_done(self);
        io_done.expires_after(std::chrono::milliseconds(1));
        co_await io_done.async_wait(asio::use_awaitable);
        session_thread = std::this_thread::get_id();
        // Queued on the context before the work is handed over: the work runs before it all the same.
        asio::post(io, [&] { log.push_back("queued handler"); });
        // (A named initiation: g++ 12 miscompiles a temporary alive across co_await, see proxy/asio.hpp.)
        after_strand_op initiation{self, log, &handed_over};
        co_await asio::async_initiate<const asio::use_awaitable_t<>, void()>(initiation, asio::use_awaitable);
        resumed_thread = std::this_thread::get_id();
        log.push_back("resumed");
      },
      asio::detached);
  io.run();
  EXPECT_TRUE(handed_over);
  EXPECT_EQ(log, (std::vector<std::string>{"task outside strand", "resumed", "queued handler"}));
  EXPECT_EQ(session_thread, resumed_thread);
}

TEST(SessionExecutor, OutsideASessionDispatchNothingIsHandedOver) {
  asio::io_context io;
  const executor ex = make_session_executor(io);
  int ran = 0;
  auto f = [&ran] { ++ran; };
  // Not on a session's strand at all.
  EXPECT_FALSE(run_after_strand(asio::any_io_executor(ex), f));
  // A plain strand (not a session's): posted to, its handler cannot hand over either.
  asio::post(ex.inner(), [&] { EXPECT_FALSE(run_after_strand(asio::any_io_executor(ex), f)); });
  // Another executor type in the any_io_executor.
  asio::post(io, [&] { EXPECT_FALSE(run_after_strand(asio::any_io_executor(io.get_executor()), f)); });
  io.run();
  f();
  EXPECT_EQ(ran, 1);  // f was left as it was, and still runs
}

TEST(SessionExecutor, WorkHandedOverWhileTheStrandIsHeldFurtherUpIsPosted) {
  asio::io_context io;
  const executor ex = make_session_executor(io);
  std::vector<std::string> log;
  // The strand entered by the context directly (a posted handler), then a
  // session dispatch inside it: the dispatch's end does not leave the strand.
  asio::post(ex.inner(), [&] {
    ex.execute([&] {
      auto work = [&] {
        log.push_back(ex.running_in_this_thread() ? "task in strand" : "task outside strand");
      };
      EXPECT_TRUE(run_after_strand(asio::any_io_executor(ex), work));
    });
    log.push_back("strand handler ends");
  });
  io.run();
  EXPECT_EQ(log, (std::vector<std::string>{"strand handler ends", "task outside strand"}));
}

TEST(SessionExecutor, WorkHandedOverByWorkRunsAfterItNotInsideIt) {
  asio::io_context io;
  const executor ex = make_session_executor(io);
  std::vector<std::string> log;
  asio::post(io, [&] {
    ex.execute([&] {
      auto second = [&] { log.push_back("second"); };
      auto first = [&, second]() mutable {
        // The next step resumes the session, which hands over more work.
        ex.execute([&] { EXPECT_TRUE(run_after_strand(asio::any_io_executor(ex), second)); });
        log.push_back("first ends");
      };
      EXPECT_TRUE(run_after_strand(asio::any_io_executor(ex), first));
    });
  });
  io.run();
  EXPECT_EQ(log, (std::vector<std::string>{"first ends", "second"}));
}

TEST(SessionExecutor, WorkHandedOverAfterOneThatThrewIsDroppedNotRunLater) {
  asio::io_context io;
  const executor ex = make_session_executor(io);
  std::vector<std::string> log;
  asio::post(io, [&] {
    EXPECT_THROW(ex.execute([&] {
      auto throws = [] { throw std::runtime_error("task failed"); };
      auto after = [&] { log.push_back("after the one that threw"); };
      EXPECT_TRUE(run_after_strand(asio::any_io_executor(ex), throws));
      EXPECT_TRUE(run_after_strand(asio::any_io_executor(ex), after));
    }),
                 std::runtime_error);
    // The next dispatch's own work runs, and only it.
    ex.execute([&] {
      auto next = [&] { log.push_back("next dispatch's"); };
      EXPECT_TRUE(run_after_strand(asio::any_io_executor(ex), next));
    });
  });
  io.run();
  EXPECT_EQ(log, (std::vector<std::string>{"next dispatch's"}));
}

TEST(SessionExecutor, IsAnIoExecutorForSocketsAndTimers) {
  asio::io_context io;
  const executor ex = make_session_executor(io);
  asio::steady_timer timer(ex);  // (an any_io_executor inside)
  bool fired = false;
  bool in_strand = false;
  timer.expires_after(std::chrono::milliseconds(1));
  timer.async_wait([&](boost::system::error_code ec) {
    fired = !ec;
    in_strand = ex.running_in_this_thread();
  });
  io.run();
  EXPECT_TRUE(fired);
  EXPECT_TRUE(in_strand);
  EXPECT_EQ(&asio::query(asio::any_io_executor(ex), asio::execution::context), &io);
}

}  // namespace
}  // namespace portcullis
