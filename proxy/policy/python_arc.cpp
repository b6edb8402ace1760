#include "policy/python_arc.hpp"

#include <pybind11/embed.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <tuple>

#include "policy/python_engine.hpp"

namespace py = pybind11;

namespace portcullis {

namespace {

// Runs `call` holding the GIL, on whatever thread this is (a thread state is
// made for it and dropped after); Python errors come out as runtime_error.
template <class Call>
auto with_python(Call&& call) {
  const PyGILState_STATE gil = PyGILState_Ensure();
  struct release {
    PyGILState_STATE gil;
    ~release() { PyGILState_Release(gil); }
  } released{gil};
  try {
    return call(py::module_::import("portcullis._arc"));
  } catch (py::error_already_set& e) {
    throw std::runtime_error(e.what());
  }
}

// `prefix` + the message as Python bytes, read under the GIL: the GIL lets
// one ARC job at a time hold a copy, however many threads ask (the copy
// is not under the message memory budget). The C++ copy is gone before
// dkimpy runs.
py::bytes message_bytes(std::string_view prefix, const message_store& message) {
  std::string bytes(prefix);
  bytes += message.read_all();
  return py::bytes(bytes);
}

}  // namespace

python_arc::python_arc() { start_python_interpreter(); }

checks::arc_result python_arc::verify_now(const message_store& message) {
  using kind = checks::arc_result::kind;
  checks::arc_result r;
  if (message.size() > checks::max_arc_message) {
    r.problem = "not checked: the message is larger than 16 MiB";
    return r;
  }
  try {
    auto [result, instances, why, sealers] = with_python([&](py::module_ arc) {
      py::object out = arc.attr("verify")(message_bytes("", message));
      return out.cast<std::tuple<std::string, unsigned, std::string, std::vector<std::string>>>();
    });
    r.result = result == "pass" ? kind::pass : result == "fail" ? kind::fail : kind::none;
    r.instances = instances;
    r.problem = std::move(why);
    r.sealers = std::move(sealers);
  } catch (const std::exception& e) {
    r.result = kind::fail;
    r.problem = e.what();
  }
  return r;
}

std::string python_arc::seal_now(std::string_view prefix, const message_store& message, const checks::arc_key& key,
                                 const std::string& authserv_id) {
  if (message.size() + prefix.size() > checks::max_arc_message)
    throw std::runtime_error("not sealed: the message is larger than 16 MiB");
  return with_python([&](py::module_ arc) {
    py::object out =
        arc.attr("seal")(message_bytes(prefix, message), key.selector, key.domain, py::bytes(key.pem), authserv_id);
    return out.cast<std::string>();
  });
}

}  // namespace portcullis
