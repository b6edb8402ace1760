// The embedded Python interpreter, and the threads that run hooks in it.
//
// Sessions hand it jobs (one per hook stage); they never take the GIL. A job
// whose stage has a plain hook goes to a pool of policy workers, C++ threads
// that take the GIL, run the stage's hooks in place and hand the result back
// (no event loop, no second thread hop). A job whose hooks are all `async
// def` goes to the policy thread, which runs `portcullis._engine.run_host`,
// an asyncio loop woken by an eventfd; reloads go there too. See
// docs/policy-engine.md for the protocol and the threads.
//
// The interpreter is started once per process (CPython cannot be started
// twice) and never finalised; an engine is one policy thread in it. So an
// engine may be made again after one failed to load or was destroyed.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "policy/policy_job.hpp"

namespace portcullis {

// Starts the embedded interpreter if no engine has yet (the ARC engine runs
// dkimpy in it with or without policies); the GIL is left released.
void start_python_interpreter();

class python_engine {
 public:
  using job_id = std::uint64_t;
  using completion = std::function<void(policy_result&&)>;  // (by reference: a result is moved a dozen times on its way)

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

  // Where a job runs: the calling I/O thread itself when no other thread
  // runs Python, else a policy worker (every hook of the stage is plain); a
  // policy worker (plain and async hooks: it waits for the async ones); the
  // event loop (every hook of the stage is `async def`): its task is started
  // on the calling I/O thread when the loop waits and no other thread runs
  // Python, and goes on on the loop's thread if a hook waits.
  enum class route { in_place, worker, loop };

  // Queues a job, or runs it at once (route::in_place, and route::loop's
  // first step, called on an I/O thread of an io_pool, outside any strand:
  // the hook may block, and the monitor then has the pool start a spare
  // thread). `done` runs exactly
  // once, on a policy thread (or on the caller's, when the engine has
  // stopped or ran it in place): with the job's result, or, once
  // `deadline` passes, with an error saying what became of it (a job still
  // queued is dropped and never runs; a plain hook running is left to its
  // worker, and the loop logs where it stands; an async job is cancelled).
  // A late result is discarded. `hook_timeout` (policy.timeout) is for that
  // message. `done` must only hand the result over (post to the session's
  // strand), never block.
  void submit(policy_job_ptr job, route where, std::chrono::steady_clock::time_point deadline,
              std::chrono::seconds hook_timeout, completion done);

  // Whether the calling thread is in a `done` called by the job's own I/O
  // thread right after running it in place: an io_context thread outside any
  // strand, with no lock held, so `done` may resume the session right there
  // instead of queueing its continuation.
  static bool completing_in_place();

  // Python may drop what it keeps for the session (its Connection, its
  // data): the session ended and its policies have no on_disconnect hook.
  // No job and no wake-up: the next thread to run Python does it.
  void forget(std::string session_id);

  // The hooks each stage of `generation` has (all zero once it is released).
  generation_hooks hooks(policy_generation generation) const;

  // Reloads the policies of `cfg` (SIGHUP): sessions in progress keep the old
  // code. `done` gets the error (the old policies then stay), or the new
  // generation's number.
  using reload_done = std::function<void(std::optional<std::string> error, policy_generation loaded)>;
  void reload(const config& cfg, reload_done done);
  // The generation the constructor loaded.
  policy_generation first_generation() const { return first_generation_; }
  // The daemon will bind no more sessions to `generation` (its settings moved
  // on): Python drops those policies once their last session ends.
  void release(policy_generation generation);

  // Whether the policy thread ended without being asked to (a fault in the
  // engine itself): every hook fails from then on, so the worker has been
  // told to stop (SIGTERM to itself) and exits non-zero, to be restarted.
  bool died() const;

  struct channel;  // shared by the engine and its policy thread (python_engine.cpp)

 private:
  void stop();  // idempotent: leaves the loop and ends (or lets go of) the thread

  std::shared_ptr<channel> channel_;
  std::thread thread_;  // the event loop's; the workers are detached and own their share of the channel
  policy_generation first_generation_ = 0;
};

}  // namespace portcullis
