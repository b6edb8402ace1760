// The signals a server handles: HUP (reload), TERM and INT (stop). Blocked
// from start-up until the server has its handler (a worker is forked with
// them blocked; one process blocks them in main), so that one arriving while
// policies import is acted on, not fatal; ignored once the server lets go of
// them (~server), so that one arriving while it exits does not kill it.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <array>

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

}  // namespace portcullis
