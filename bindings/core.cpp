#include "bindings/core.hpp"

#include <pybind11/stl.h>

#include "checks/idna_domain.hpp"
#include "smtp/address.hpp"
#include "smtp/message_check.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

smtp::address checked_mailbox(std::string_view text, bool utf8) {
  auto a = smtp::parse_valid_mailbox(text, utf8);
  if (!a) throw py::value_error("invalid address: " + std::string(text.substr(0, 300)));
  return *a;
}

namespace {

// An awaitable's first step, as a task takes it: (True, value) if it
// returned, (False, what it yielded) if it waits. Python's own send()
// reports a return by raising StopIteration, which costs 10,000 instructions
// to raise and catch, more than the rest of an async hook's call; most such
// hooks return at once. A plain C function: pybind11's dispatch is longer.
PyObject* first_step(PyObject*, PyObject* steps) {
  PyObject* value = nullptr;
  const PySendResult sent = PyIter_Send(steps, Py_None, &value);
  if (sent == PYGEN_ERROR) return nullptr;
  PyObject* out = PyTuple_Pack(2, sent == PYGEN_RETURN ? Py_True : Py_False, value);
  Py_DECREF(value);
  return out;
}

PyMethodDef first_step_def = {
    "first_step", first_step, METH_O,
    "first_step(steps) -> (returned, value): sends None into a coroutine or an awaitable's iterator once."};

}  // namespace

void define_core(py::module_& m) {
  m.doc() = "Portcullis's C++ core: the validators every policy rewrite passes through.";

  m.def(
      "parse_address",
      [](std::string_view text, bool utf8) {
        auto a = checked_mailbox(text, utf8);
        return py::make_tuple(a.local, a.domain);
      },
      py::arg("text"), py::arg("utf8") = true,
      "Parses 'local@domain' (RFC 5321 §4.1.2, SMTPUTF8 allowed by default); raises ValueError.");

  m.def(
      "a_label_domain",
      [](std::string_view domain) -> std::optional<std::string> { return checks::a_label_domain(domain); },
      py::arg("domain"),
      "The domain in A-labels as the daemon's checks take it (libidn2: IDNA2008, UTS #46 non-transitional, "
      "NFC); as it is when all ASCII; None when IDNA2008 refuses it.");

  m.def(
      "check_header_name",
      [](std::string_view name) {
        if (!smtp::is_valid_header_name(name)) throw py::value_error("invalid header name");
      },
      "Raises ValueError unless the name is printable ASCII without a colon (RFC 5322 §3.6.8).");

  m.def(
      "check_header_value",
      [](std::string_view value) {
        if (!smtp::is_valid_header_value(value)) throw py::value_error("header value with CR, LF or NUL");
      },
      "Raises ValueError if the value holds CR, LF or NUL.");

  m.def(
      "check_message",
      [](py::bytes raw) {
        const std::string_view view = raw;
        if (auto problem = smtp::message_problem(view)) throw py::value_error(*problem);
      },
      "Raises ValueError unless the message uses CRLF only, has no NUL and a well-formed header section.");

  m.def(
      "head_is_whole", [](py::bytes raw) { return smtp::head_is_whole(std::string_view(raw)); },
      "Whether the header section is all fields (CRLF lines, with continuations) up to an empty line or the end.");

  PyObject* step = PyCFunction_NewEx(&first_step_def, nullptr, nullptr);
  if (step == nullptr) throw py::error_already_set();
  m.add_object("first_step", py::reinterpret_steal<py::object>(step));

  define_protocol(m);
  define_dns(m);
  define_store(m);
  define_metrics(m);
  define_attribute(m);
  define_job_objects(m);
  define_stage_runner(m);
  define_job_tasks(m);
}

}  // namespace portcullis::bindings
