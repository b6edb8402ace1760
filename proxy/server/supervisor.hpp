// With server.workers > 1, the parent process: it forks the workers, each
// a whole server with its own interpreter and listening sockets
// (SO_REUSEPORT), restarts one that dies (a crash costs its clients their
// connections, never a message: see README "Workers"), passes SIGHUP on
// once the config checks out, and on SIGTERM/SIGINT lets every worker drain
// and exits 0 when they all stopped cleanly.
//
// It forks before any thread or interpreter exists in this process (fork
// copies only the calling thread: a lock another thread held would stay
// locked in the child), and it never starts one itself: no Asio, no Python;
// signals are taken with sigtimedwait.
//
// It is the main process systemd watches (Type=notify): it says READY=1 once
// every worker serves, RELOADING=1 / READY=1 around a SIGHUP (READY once each
// worker has finished its reload), STOPPING=1; workers say nothing.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "session/client_table.hpp"

namespace portcullis {

class supervisor {
 public:
  // What a worker process runs (it returns the worker's exit code).
  using worker_main = std::function<int(unsigned worker, std::shared_ptr<const config> cfg)>;

  supervisor(std::shared_ptr<const config> cfg, client_table& clients, worker_main run_worker);
  // Until every worker has stopped after SIGTERM/SIGINT, or one of the first
  // workers could not start. Returns the exit code.
  int run();

 private:
  using clock = std::chrono::steady_clock;
  struct worker {
    pid_t pid = 0;
    bool first = true;  // of the workers started with the daemon
    clock::time_point started;
    clock::time_point restart_at;
    clock::duration delay{0};  // the back-off after the last crash
  };

  void start(unsigned w);
  void reap(pid_t theirs = 0);  // `theirs`: a child another waits for (a reload's check)
  void reload();
  void stop(int sig);
  std::size_t running() const;
  std::size_t serving() const;  // running and ready
  // Tells systemd what changed in the workers' readiness (service_notifier.hpp).
  void report_readiness();
  std::string status() const;

  std::shared_ptr<const config> cfg_;
  client_table& clients_;
  worker_main run_worker_;
  std::vector<worker> workers_;
  sigset_t handled_{};
  sigset_t before_{};  // the signal mask a worker gets back
  bool stopping_ = false;
  bool failed_ = false;  // a first worker could not start, or a worker stopped unclean: exit 1
  clock::time_point kill_at_{};
  // systemd was told READY=1 once every first worker served.
  std::string listening_;  // the addresses, for STATUS=
  bool started_ = false;
  std::size_t ready_told_ = 0;  // workers serving as of the last STATUS=
  // A reload passed to the workers, until each has said it finished (client_table::reloads).
  struct reload_wait {
    unsigned worker;
    pid_t pid;
    std::uint32_t reloads_before;
    std::uint32_t refused_before;
  };
  bool reloading_ = false;
  std::vector<reload_wait> reload_waits_;
  clock::time_point reload_deadline_{};
};

}  // namespace portcullis
