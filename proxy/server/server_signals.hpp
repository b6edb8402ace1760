// The signals a server handles: HUP (reload), TERM and INT (stop). Blocked
// from start-up until the server has its handler (a worker is forked with
// them blocked; one process blocks them in main), so that one arriving while
// policies import is acted on, not fatal; ignored once the server lets go of
// them (~server_signal_queue), so that one arriving while it exits does not kill it.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <array>

#include "asio.hpp"

namespace portcullis {

inline constexpr std::array<int, 3> server_signals = {SIGHUP, SIGTERM, SIGINT};

// Adds server_signals to `set`.
inline void add_server_signals(sigset_t& set) {
  for (const int sig : server_signals) sigaddset(&set, sig);
}

// Blocks (SIG_BLOCK) or lets in (SIG_UNBLOCK) server_signals for the calling
// thread, and so for the threads it starts from then on.
inline void mask_server_signals(int how) {
  sigset_t set;
  sigemptyset(&set);
  add_server_signals(set);
  pthread_sigmask(how, &set, nullptr);
}

// server_signals for an io_context: a handler, on whichever thread the
// kernel picks, writes the signal's number to a pipe the context reads. What
// asio::signal_set does, but let go of by ignoring them in one step:
// signal_set puts their default action back, and a TERM in the instant
// before they were ignored (systemd signals every process of the unit, the
// supervisor forwards its own) killed a worker in the middle of its exit.
// One per process.
class server_signal_queue {
 public:
  explicit server_signal_queue(asio::io_context& io);
  // From then on server_signals are ignored (and one pending is dropped).
  ~server_signal_queue();
  server_signal_queue(const server_signal_queue&) = delete;
  server_signal_queue& operator=(const server_signal_queue&) = delete;

  // The next signal caught, in the order they came (one of server_signals).
  awaitable<int> next();

 private:
  asio::posix::stream_descriptor read_end_;
  unsigned char caught_ = 0;
};

}  // namespace portcullis
