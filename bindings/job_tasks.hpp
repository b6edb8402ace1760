// The policy loop's job starter (bindings/job_tasks.cpp), as the daemon calls it.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "policy/policy_job.hpp"

namespace portcullis::bindings {

// Whether `o` is a `_core.JobStarter` (what `_JobRunner` hands the daemon for `run_here`).
bool is_job_starter(pybind11::handle o);

// The starter's `run_here` for a job the daemon holds (taken from `job`; no
// Python object is made for it unless its hooks hand it to Python): the
// job's result, or whether the loop's thread must look. GIL and the loop's
// turn held; raises pybind11::error_already_set.
pybind11::object run_loop_job_here(pybind11::handle starter, std::uint64_t job_id, policy_job_ptr& job);

// The loop whose tasks this thread steps (`_core.Stepping().loop`: set by
// `_engine._enter_loop`, dropped by `_leave_loop`), or null; borrowed, GIL held.
PyObject* stepping_loop();

}  // namespace portcullis::bindings
