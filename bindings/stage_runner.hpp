// `_core.StageRunner`: a stage job's hooks called from C++ (the daemon's hot
// path, a call per hook stage): plain hooks for `EngineHost.run_plain`, and
// the first steps of async ones for `_JobRunner.start` (most never wait).
//
// It does what the engine's Python path does for the common case, with no
// Python frame of its own: binds the job to its session (a new session is
// Python's to make; the transaction, addresses and message are made in C by
// `_core.JobObjects`, which the Python path uses too),
// calls the hooks in file order, counts the ones that return None, and
// answers "next" when all did and the transaction is as the daemon sent it.
// A hook's final verdict (accept, reject, tempfail, discard, redirect),
// allowed at the stage and in time (an async hook's: in its first step),
// from a hook that left the transaction as it was, it applies too, as
// _StageRun.decide and finish do; and header fields added on top at
// on_data, the envelope kept, go back alone as _StageRun._with_rewrites
// sends them.
// Anything else goes to Python at the point it arises, with what the hooks
// before it saw: a hook's other value or exception (`EngineHost._resume_plain`),
// a changed envelope or message (the same, with no hook left), and the auth
// stage, whose booleans only Python reads (`EngineHost._run_plain_slow`).
// So an invalid verdict, an error, a timeout and a rewrite take one path in Python.
// On the loop, what is left goes on in a task: a hook that waits, a value
// (`EngineHost._resume_async`), an auth stage or a job it cannot bind (`_drive`).
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/job_objects.hpp"
#include "bindings/py_ref.hpp"
#include "policy/policy_job.hpp"

namespace portcullis::bindings {

class stage_runner {
 public:
  // The host's session table and running-hook table, the engine's helpers
  // (functions taking the host first, so the runner holds no host), and the
  // `_core.JobObjects` that makes a job's objects.
  stage_runner(pybind11::dict sessions, pybind11::dict running, pybind11::object scope, pybind11::object leave_loop,
               pybind11::object objects, pybind11::object upstream_reply,
               pybind11::object resume, pybind11::object slow, pybind11::object resume_async,
               pybind11::object drive, pybind11::object verdict_type, pybind11::dict positive_replies);

  // Runs one stage job on the calling thread, GIL held: a `_core.Result` or
  // None. `job_object` is the job's Python object, or null; the Python path
  // then takes `*owned` into one (the reference `job` stays valid).
  // `loop` (or null): the policy loop, running here (its thread, or one
  // that holds its turn), for async hooks; a coroutine comes back then for
  // what is left to run.
  pybind11::object run(pybind11::handle host, const policy_job& job, pybind11::handle job_object, policy_job_ptr* owned,
                       pybind11::handle loop = {});
  // EngineHost._new_session: a session bound to the engine of `generation`
  // (0: the current one), in the session table, counted on its engine; and
  // _end_session: out of the table, its engine's count down (a retired
  // engine is closed with its last session). Under the host's `_lock`.
  pybind11::object new_session(pybind11::handle host, policy_generation generation, pybind11::handle connection);
  void end_session(pybind11::handle host, pybind11::handle session);
  // EngineHost.forget: each of these sessions (ended, with no on_disconnect
  // hook to end them) out of the table, as end_session does; ids not in it are skipped.
  void forget(pybind11::handle host, const std::vector<std::string>& session_ids);
  // A loop job's first steps (`run` on the loop), or the whole job in Python for a test's stand-in.
  pybind11::object run_async(pybind11::handle host, pybind11::handle job_object, pybind11::handle loop);
  // The whole job in Python (EngineHost._run_plain_slow, or on the loop `_drive`'s coroutine).
  pybind11::object run_in_python(pybind11::handle host, pybind11::handle job_object, pybind11::handle loop);

 private:
  py_ref sessions_, running_, scope_, leave_loop_, objects_, upstream_reply_, resume_, slow_,
      resume_async_, drive_;
  py_ref verdict_type_, positive_replies_;  // _verdicts.Verdict, and _engine.STAGE_POSITIVE_REPLY (see decided)
  const job_objects* make_;  // objects_'s C++ side
};

}  // namespace portcullis::bindings
