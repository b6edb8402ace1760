#include "bindings/core.hpp"

#include <pybind11/stl.h>

#include "smtp/address.hpp"
#include "smtp/message_check.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

smtp::address checked_mailbox(std::string_view text, bool utf8) {
  auto a = smtp::parse_valid_mailbox(text, utf8);
  if (!a) throw py::value_error("invalid address: " + std::string(text.substr(0, 300)));
  return *a;
}

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

  define_protocol(m);
  define_dns(m);
  define_store(m);
  define_metrics(m);
}

}  // namespace portcullis::bindings
