// The executor a client session runs on: its strand, plus a way to run work
// on the same thread right after the strand is left.
//
// A plain policy hook must run outside its session's strand (so that a
// deadline answer can still resume the session while a slow hook runs on),
// yet on the thread that asked for it, with no hand-off. Posting it to the
// io_context does that, but Asio's scheduler then polls the reactor first
// (an epoll_wait system call per hook, for nothing when the session is the
// only one). A session_executor is the session's strand with one addition:
// when its outermost dispatch on a thread returns, the strand is released,
// and the thread runs what the session handed over with run_after_strand()
// there and then, before it goes back to the io_context.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include "asio.hpp"

namespace portcullis {

namespace after_strand {

struct task {
  virtual ~task() = default;
  virtual void run() = 0;
};

// (This thread's bookkeeping, in session_executor.cpp.)
bool in_dispatch();                  // some session_executor's dispatch runs on this thread
void push(std::unique_ptr<task> t);  // (in_dispatch() only)
void enter();                        // a dispatch starts
void leave();                        // it returned; the outermost one runs what was pushed
void abandon();                      // it threw: what was pushed waits for this thread's next one

}  // namespace after_strand

// `Inner`: the strand (or what Asio's require/prefer made of it), whose
// queries, requirements and preferences it forwards, staying a session_executor.
template <typename Inner>
class session_executor {
 public:
  explicit session_executor(Inner inner) : inner_(std::move(inner)) {}

  template <typename F>
  void execute(F&& f) const {
    after_strand::enter();
    try {
      inner_.execute(std::forward<F>(f));
    } catch (...) {
      after_strand::abandon();  // (no hook runs while an exception unwinds)
      throw;
    }
    after_strand::leave();
  }

  template <typename Property>
  auto query(const Property& p) const noexcept(noexcept(asio::query(std::declval<const Inner&>(), p)))
      -> decltype(asio::query(std::declval<const Inner&>(), p)) {
    return asio::query(inner_, p);
  }

  template <typename Property>
  auto require(const Property& p) const
      -> session_executor<std::decay_t<decltype(asio::require(std::declval<const Inner&>(), p))>> {
    return session_executor<std::decay_t<decltype(asio::require(inner_, p))>>(asio::require(inner_, p));
  }

  template <typename Property>
  auto prefer(const Property& p) const
      -> session_executor<std::decay_t<decltype(asio::prefer(std::declval<const Inner&>(), p))>> {
    return session_executor<std::decay_t<decltype(asio::prefer(inner_, p))>>(asio::prefer(inner_, p));
  }

  bool running_in_this_thread() const noexcept { return inner_.running_in_this_thread(); }
  const Inner& inner() const noexcept { return inner_; }

  friend bool operator==(const session_executor& a, const session_executor& b) noexcept {
    return a.inner_ == b.inner_;
  }
  friend bool operator!=(const session_executor& a, const session_executor& b) noexcept { return !(a == b); }

 private:
  Inner inner_;
};

using session_strand = asio::strand<asio::io_context::executor_type>;

// A new session's executor (its own strand of `io`).
inline session_executor<session_strand> make_session_executor(asio::io_context& io) {
  return session_executor<session_strand>(asio::make_strand(io));
}

namespace after_strand {

// `f` as a task: run at once if its session's strand is free by then, else
// posted to the io_context (the strand is still held further up this thread).
template <typename F>
class task_of final : public task {
 public:
  task_of(session_strand strand, F&& f) : strand_(std::move(strand)), f_(std::move(f)) {}
  void run() override {
    if (strand_.running_in_this_thread()) {
      asio::defer(strand_.get_inner_executor(), std::move(f_));
    } else {
      f_();
    }
  }

 private:
  session_strand strand_;
  F f_;
};

}  // namespace after_strand

// Has `f` run on this thread as soon as the session strand of `ex` (the
// session's coroutine executor) is left, before the thread polls for I/O.
// False, with `f` untouched, when that cannot be promised (`ex` is not a
// session's, or its strand was not entered by its own dispatch here): the
// caller posts `f` instead.
template <typename F>
bool run_after_strand(const asio::any_io_executor& ex, F& f) {
  const auto* session = ex.target<session_executor<session_strand>>();
  if (session == nullptr || !after_strand::in_dispatch() || !session->running_in_this_thread()) return false;
  after_strand::push(std::make_unique<after_strand::task_of<F>>(session->inner(), std::move(f)));
  return true;
}

}  // namespace portcullis
