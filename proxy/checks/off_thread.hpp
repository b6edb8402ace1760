// Work that blocks (on DNS, on a spilled message's file) done on a pool, its
// result handed back on the awaiting coroutine's executor.
#pragma once

#include <pthread.h>

#include "asio.hpp"

namespace portcullis::checks {

// (g++ 12: every co_await is a statement of its own, with named locals for
// arguments and no temporary alive across it; see asio.hpp.)
// `thread_name` (at most 15 characters) names the pool's threads for top -H
// and perf, as the daemon's other threads are named.
template <class Result, class Work>
awaitable<Result> off_thread(asio::thread_pool& pool, const char* thread_name, const Work& work) {
  auto initiate = [&pool, thread_name, work](auto handler) mutable {
    auto guard = asio::make_work_guard(asio::get_associated_executor(handler));
    asio::post(pool, [handler = std::move(handler), guard = std::move(guard), thread_name, work = std::move(work)]() mutable {
      thread_local bool named = false;  // (a pool thread serves one pool)
      if (!named) {
        pthread_setname_np(pthread_self(), thread_name);
        named = true;
      }
      Result r = work();
      auto ex = guard.get_executor();
      asio::post(ex, [handler = std::move(handler), r = std::move(r)]() mutable { std::move(handler)(std::move(r)); });
      guard.reset();
    });
  };
  auto result = co_await asio::async_initiate<decltype(asio::use_awaitable), void(Result)>(initiate, asio::use_awaitable);
  co_return result;
}

}  // namespace portcullis::checks
