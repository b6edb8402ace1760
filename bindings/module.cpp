// `_portcullis_core` as an extension module, for plain Python (policy unit
// tests, `portcullis.testing`). The daemon embeds the same functions under
// the same name, plus the job plumbing (proxy/policy/python_engine.cpp).
#include <iostream>

#include "bindings/core.hpp"
#include "log_text.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_portcullis_core, m) {
  portcullis::bindings::define_core(m);
  m.attr("embedded") = false;
  m.def(
      "log",
      [](int level, std::string_view session_id, std::string_view message) {
        // One call, one line, as in the daemon: control characters escaped.
        std::cerr << portcullis::escape_log_text(session_id.empty() ? "-" : session_id) << ": "
                  << portcullis::escape_log_text(message) << "\n";
      },
      py::arg("level"), py::arg("session_id"), py::arg("message"));
}
