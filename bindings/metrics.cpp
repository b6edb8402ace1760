// pc.metrics (python/portcullis/metrics.py) and the engine's per-hook
// figures: the process's metric table, which the daemon's workers share
// (proxy/metrics). A bad name, label or bucket list is ValueError.
#include <pybind11/stl.h>

#include <stdexcept>

#include "bindings/core.hpp"
#include "metrics/metrics.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

namespace {

// One policy file's hook: its series found once, when the policy loads, so
// that a call costs the engine one call here and two atomic adds.
class hook_metrics {
 public:
  static constexpr std::string_view verdicts[] = {"none",     "accept",  "reject", "tempfail",
                                                  "discard",  "redirect", "rewrite", "error"};

  hook_metrics(std::string_view policy, std::string_view stage) : policy_(policy), hook_("on_" + std::string(stage)) {
    duration_ = metrics::get(metrics::family::hook_duration_seconds, {policy_, hook_});
  }

  // The common call, a hook that returned None ("none", index 0): no search.
  void observed_none(double seconds) { counted(seconds, 0); }

  void observed(double seconds, std::string_view verdict, bool timed_out) {
    std::size_t i = 0;
    while (i + 1 < std::size(verdicts) && verdicts[i] != verdict) ++i;  // (unknown: "error")
    counted(seconds, i);
    if (timed_out) metrics::count(metrics::family::hook_timeouts_total, {policy_, hook_});
  }

 private:
  void counted(double seconds, std::size_t verdict) {
    duration_.observe(seconds);
    auto& series = verdict_[verdict];
    if (!series) series = metrics::get(metrics::family::verdicts_total, {hook_, verdicts[verdict]});
    series.inc();
  }

  std::string policy_, hook_;
  metrics::series duration_;
  metrics::series verdict_[std::size(verdicts)];  // made at a verdict's first call (GIL held)
};

// `HookMetrics.none_observer`: observed_none(seconds) as a plain C function
// bound to a capsule that holds the hook's figures, called for every hook
// that returns None (most calls): a pybind11 method call with its argument
// conversions costs 2,900 instructions, this one 200.
using held_metrics = std::shared_ptr<hook_metrics>;

PyObject* observe_none(PyObject* capsule, PyObject* seconds) {
  const double s = PyFloat_AsDouble(seconds);
  if (s == -1.0 && PyErr_Occurred()) return nullptr;
  auto* held = static_cast<held_metrics*>(PyCapsule_GetPointer(capsule, nullptr));
  if (held == nullptr) return nullptr;
  (*held)->observed_none(s);
  Py_RETURN_NONE;
}

PyMethodDef observe_none_def = {"observed_none", observe_none, METH_O,
                                "observed_none(seconds): one call that returned None, and its duration."};

py::object none_observer(held_metrics self) {
  PyObject* capsule = PyCapsule_New(new held_metrics(std::move(self)), nullptr, [](PyObject* c) {
    delete static_cast<held_metrics*>(PyCapsule_GetPointer(c, nullptr));
  });
  if (capsule == nullptr) throw py::error_already_set();
  PyObject* function = PyCFunction_NewEx(&observe_none_def, capsule, nullptr);
  Py_DECREF(capsule);  // (the function holds it)
  if (function == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(function);
}

}  // namespace

namespace {

// The figures an observer made by none_observer holds; null for any other callable.
hook_metrics* figures_of(py::handle observer) {
  PyObject* o = observer.ptr();
  if (!PyCFunction_Check(o) || reinterpret_cast<PyCFunctionObject*>(o)->m_ml != &observe_none_def) return nullptr;
  auto* held = static_cast<held_metrics*>(PyCapsule_GetPointer(PyCFunction_GET_SELF(o), nullptr));
  if (held == nullptr) throw py::error_already_set();
  return held->get();
}

}  // namespace

bool observe_verdict(py::handle observer, double seconds, std::string_view verdict) {
  hook_metrics* figures = figures_of(observer);
  if (figures == nullptr) return false;
  figures->observed(seconds, verdict, false);
  return true;
}

void observe_none(py::handle observer, double seconds) {
  if (hook_metrics* figures = figures_of(observer)) {
    figures->observed_none(seconds);
    return;
  }
  observer(seconds);  // a hook without figures (on_unload's): a Python function
}

namespace {

metrics::kind kind_of(std::string_view k) {
  if (k == "counter") return metrics::kind::counter;
  if (k == "gauge") return metrics::kind::gauge;
  if (k == "histogram") return metrics::kind::histogram;
  throw py::value_error("metric type: want counter, gauge or histogram");
}

}  // namespace

void define_metrics(py::module_& m) {
  py::class_<metrics::series>(m, "MetricSeries", "One labelled series of a metric (pc.metrics).")
      .def("inc", &metrics::series::inc, py::arg("amount") = 1.0)
      .def("set", &metrics::series::set, py::arg("value"))
      .def("observe", &metrics::series::observe, py::arg("value"))
      .def_property_readonly("value", &metrics::series::value);
  m.def(
      "metrics_family",
      [](const std::string& name, const std::string& help, std::string_view kind, std::vector<std::string> labels,
         std::vector<double> buckets) {
        try {
          return metrics::process_metrics().family({name, help, kind_of(kind), std::move(labels), std::move(buckets)});
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("name"), py::arg("help"), py::arg("kind"), py::arg("labels"), py::arg("buckets"),
      "Registers a metric family (the same description again gives the same number); its number.");
  m.def(
      "metrics_series",
      [](std::uint32_t family, const std::vector<std::string>& values) {
        std::vector<std::string_view> views(values.begin(), values.end());
        try {
          return metrics::process_metrics().get(family, views);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("family"), py::arg("values"), "The series of a family with these label values.");
  py::class_<hook_metrics, held_metrics>(m, "HookMetrics", "A policy hook's figures ([metrics]).")
      .def(py::init<std::string_view, std::string_view>(), py::arg("policy"), py::arg("stage"))
      .def("observed", &hook_metrics::observed, py::arg("seconds"), py::arg("verdict"), py::arg("timed_out"),
           "One call: its duration, its verdict and whether it ran past policy.timeout.")
      .def_property_readonly("none_observer", &none_observer,
                             "A function of one argument, seconds: observed(seconds, 'none', False), fast.");
  m.def("metrics_exposition", &metrics::exposition, "Every metric in the Prometheus text format (for tests).");
}

}  // namespace portcullis::bindings
