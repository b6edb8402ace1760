// The embedded Python interpreter, and the policy thread that runs hooks in it.
//
// Sessions hand it jobs (one per hook stage) through a mutex-guarded queue
// and an eventfd; they never take the GIL. The policy thread runs
// `portcullis._engine.run_host`, an asyncio loop that reads the eventfd,
// takes the jobs, runs the hooks and hands each result back. See
// docs/policy-engine.md for the protocol and the threads.
//
// The interpreter is started once per process (CPython cannot be started
// twice) and never finalised; an engine is one policy thread in it. So an
// engine may be made again after one failed to load or was destroyed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "smtp/address.hpp"
#include "store/message_store.hpp"

namespace portcullis {

// A loaded set of policies (one per successful load or reload, counting up).
// The daemon's settings snapshot and its sessions' Python policies are tied
// by this number, so a session never mixes two reloads.
using policy_generation = std::uint64_t;

// One hook stage's input, as plain C++ values (built on an I/O thread).
struct policy_job {
  std::string stage;  // connect helo auth mail rcpt data disconnect; release (a generation)
  policy_generation generation = 0;  // the policies to bind a new session to; 0: the current ones
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
  bool smtputf8 = false;   // MAIL ... SMTPUTF8 (RFC 6531): headers may be UTF-8 (RFC 6532)
  bool body_8bit = false;  // MAIL ... BODY=8BITMIME (RFC 6152)
  // stage arguments
  std::string hostname;                          // helo
  std::string mechanism, username, password;     // auth
  std::string rcpt;                              // rcpt
  std::vector<smtp::esmtp_param> rcpt_params;    // rcpt
  // data: the message, shared with the session (no copy). The job owns it:
  // the session may stop waiting (and drop its own reference) before the
  // policy thread takes the job.
  std::shared_ptr<const message_store> message;
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
  policy_generation generation = 0;  // reload: the generation loaded
};

class python_engine {
 public:
  using job_id = std::uint64_t;
  using completion = std::function<void(policy_result)>;

  // Starts the interpreter (the first time in the process), starts the
  // policy thread and loads the policies of `cfg` (none is fine); throws
  // std::runtime_error with the Python traceback when they do not load. The
  // engine is then stopped and gone, and another may be made later (a
  // SIGHUP onto a fixed config).
  explicit python_engine(const config& cfg);
  // Stops the policy thread: jobs still running are cancelled and answered
  // with an error. A thread stuck in C code (a hook that never returns to
  // Python) is left behind after a few seconds; it owns what it may still
  // touch (see engine_channel in the .cpp), so it can finish whenever.
  ~python_engine();
  python_engine(const python_engine&) = delete;
  python_engine& operator=(const python_engine&) = delete;

  // Queues a job and returns its id. `done` runs exactly once, on the policy
  // thread (or on the caller's, when the engine has stopped), unless the job
  // is abandoned first: it must only hand the result over (post to the
  // session's strand), never block.
  job_id submit(policy_job job, completion done);

  // The submitter stopped waiting for `id` (its deadline passed): a job still
  // queued is dropped and never runs; one Python already took is cancelled
  // and its result discarded. After this `done` is not called, unless it was
  // already being called (a result that raced the deadline). Unknown or
  // finished ids are ignored.
  void abandon(job_id id);

  // Reloads the policies of `cfg` (SIGHUP): sessions in progress keep the old
  // code. `done` gets the error, if any (the old policies then stay).
  // `done` gets the error, or the new generation's number.
  using reload_done = std::function<void(std::optional<std::string> error, policy_generation loaded)>;
  void reload(const config& cfg, reload_done done);
  // The generation the constructor loaded.
  policy_generation first_generation() const { return first_generation_; }
  // The daemon will bind no more sessions to `generation` (its settings moved
  // on): Python drops those policies once their last session ends.
  void release(policy_generation generation);

  struct channel;  // shared by the engine and its policy thread (python_engine.cpp)

 private:
  void stop();  // idempotent: leaves the loop and ends (or lets go of) the thread

  std::shared_ptr<channel> channel_;
  std::thread thread_;
  policy_generation first_generation_ = 0;
};

}  // namespace portcullis
