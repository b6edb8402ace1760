// The embedded Python interpreter, on a thread of its own.
//
// Sessions hand it jobs (one per hook stage) through a mutex-guarded queue
// and an eventfd; they never take the GIL. The policy thread runs
// `portcullis._engine.run_host`, an asyncio loop that reads the eventfd,
// takes the jobs, runs the hooks and hands each result back through
// `_portcullis_core.complete`. See docs/policy-engine.md for the protocol.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "smtp/address.hpp"

namespace portcullis {

// One hook stage's input, as plain C++ values (built on an I/O thread).
struct policy_job {
  std::string stage;  // connect helo auth mail rcpt data disconnect
  // connection
  std::string session_id, client_ip, helo;
  unsigned short client_port = 0;
  bool tls = false;
  std::string tls_version, tls_cipher;
  std::optional<std::string> auth_user;
  // transaction (mail, rcpt, data)
  bool has_tx = false;
  std::string tx_id, sender;
  std::vector<smtp::esmtp_param> sender_params;
  std::vector<std::string> recipients;
  // stage arguments
  std::string hostname;                          // helo
  std::string mechanism, username, password;     // auth
  std::string rcpt;                              // rcpt
  std::vector<smtp::esmtp_param> rcpt_params;    // rcpt
  const std::string* message = nullptr;          // data: the session's buffer, stable while it waits
};

// A hook stage's outcome, as plain C++ values (converted on the policy thread).
struct policy_result {
  std::optional<std::string> error;  // a hook failed; the traceback (already logged by Python)
  std::string verdict;               // "" (none), accept reject tempfail discard redirect
  int code = 0;
  std::string status;
  std::optional<std::string> text;
  std::vector<std::string> addresses;  // redirect
  std::optional<bool> auth;
  std::optional<std::string> sender;
  std::optional<std::vector<std::string>> recipients;
  std::optional<std::string> message;
};

class python_engine {
 public:
  using completion = std::function<void(policy_result)>;

  // Starts the interpreter and loads the policies of `cfg`; throws
  // std::runtime_error with the Python traceback when they do not load.
  explicit python_engine(const config& cfg);
  ~python_engine();
  python_engine(const python_engine&) = delete;
  python_engine& operator=(const python_engine&) = delete;

  // Queues a job. `done` runs on the policy thread exactly once: it must only
  // hand the result over (post to the session's strand), never block.
  void submit(policy_job job, completion done);

  // Reloads the policies of `cfg` (SIGHUP): sessions in progress keep the old
  // code. `done` gets the error, if any (the old policies then stay).
  void reload(const config& cfg, std::function<void(std::optional<std::string>)> done);

  // For the embedded module (policy thread, GIL held).
  struct queued {
    std::uint64_t id;
    policy_job job;
    std::optional<std::vector<std::string>> reload_files;  // set: a reload job
    std::string reload_config;
    double reload_timeout = 0;
    std::string reload_on_error;
    unsigned reload_threads = 0;
  };
  std::vector<queued> take_jobs();
  void complete(std::uint64_t id, policy_result result);
  bool stopping() const;
  void loaded(std::optional<std::string> error);

 private:
  void thread_main(std::vector<std::string> files, std::string config_path, double timeout, std::string on_error,
                   unsigned threads);
  void wake();
  void stop();  // idempotent: leaves the loop and ends (or lets go of) the thread

  int wakeup_fd_ = -1;
  mutable std::mutex mutex_;
  std::deque<queued> queue_;
  std::map<std::uint64_t, completion> waiting_;
  std::map<std::uint64_t, std::function<void(std::optional<std::string>)>> reloads_;
  std::uint64_t next_id_ = 1;
  bool stopping_ = false;
  // start-up handshake: the thread reports whether the policies loaded
  std::condition_variable loaded_cv_;
  bool load_reported_ = false;
  bool thread_done_ = false;
  std::optional<std::string> load_error_;
  std::thread thread_;
};

}  // namespace portcullis
