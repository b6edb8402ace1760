// The functions of the `_portcullis_core` Python module that are the same in
// the daemon (embedded) and in plain Python (the extension module that
// policy unit tests import): the validators, so both enforce one set of rules.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string_view>

#include "smtp/address.hpp"

namespace portcullis::bindings {

// "local@domain" parsed and checked by the daemon's own rules, or ValueError.
smtp::address checked_mailbox(std::string_view text, bool utf8);

void define_core(pybind11::module_& m);
// The policy protocol's classes (bindings/protocol.cpp); define_core calls it.
void define_protocol(pybind11::module_& m);
// pc.store's memory backend (bindings/store.cpp); define_core calls it.
void define_store(pybind11::module_& m);
// pc.dns's lookups (bindings/dns.cpp); define_core calls it.
void define_dns(pybind11::module_& m);
// pc.metrics and the hooks' figures (bindings/metrics.cpp); define_core calls it.
void define_metrics(pybind11::module_& m);
// `_core.Attribute`, the stage runner's attribute cache, for tests (bindings/attribute.cpp); define_core calls it.
void define_attribute(pybind11::module_& m);
// The policy objects a job is bound to, made in C (bindings/job_objects.cpp); define_core calls it.
void define_job_objects(pybind11::module_& m);
// The engine's stage runner (bindings/stage_runner.cpp); define_core calls it.
void define_stage_runner(pybind11::module_& m);
// How the policy loop starts a job's task (bindings/job_tasks.cpp); define_core calls it.
void define_job_tasks(pybind11::module_& m);
// `observer(seconds)` for a Hook's observed_none: a HookMetrics' none_observer
// is counted right here, with no Python call.
void observe_none(pybind11::handle observer, double seconds);
// The same observer (a hook's `observed_none`) counting a call that gave `verdict`; false, and
// nothing counted, for an observer that is not one of ours (Python counts that call).
bool observe_verdict(pybind11::handle observer, double seconds, std::string_view verdict);

}  // namespace portcullis::bindings

namespace portcullis::dns {
class resolver;
struct resolver_options;
}

namespace portcullis::bindings {

// The deadline of the plain hook this thread runs, in time.monotonic()'s
// seconds (pc.dns.resolve_sync waits no longer: the hook is abandoned then,
// and its thread should come back to the pool). Set for the scope's life.
class hook_deadline_scope {
 public:
  explicit hook_deadline_scope(double deadline);
  ~hook_deadline_scope();
  hook_deadline_scope(const hook_deadline_scope&) = delete;
  hook_deadline_scope& operator=(const hook_deadline_scope&) = delete;

 private:
  double previous_;
};

// The daemon's resolver for pc.dns (null: one of pc.dns's own, made on first use).
void set_resolver(std::shared_ptr<dns::resolver> resolver);
// pc.dns makes its own resolver with these at its next lookup (the daemon's [dns], without checks).
void set_resolver_options(const dns::resolver_options& options);

}  // namespace portcullis::bindings
