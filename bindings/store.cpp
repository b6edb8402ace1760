// pc.store's memory backend (python/portcullis/store.py): the process's
// shared_kv, which the daemon's workers share; and the checks of what the
// API takes, which store.py's Redis path calls too, so both backends refuse
// the same arguments with the same errors. The memory calls check their own
// arguments: a policy may call the store several times a command, and every
// Python-level step it is spared counts.
//
// Errors: a key, value or ttl of the wrong type is TypeError / ValueError
// (store.py's docstring); a full table is pc.store.Error; incr on a value
// that is not an integer (as Redis reads one: "007" and "-0" are not), or
// past 64 bits, ValueError (store.py turns Redis's answers into the same).
#include <chrono>
#include <cmath>

#include "bindings/core.hpp"
#include "store/shared_kv.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

namespace {

// At most 100 characters of repr(value), as an error message shows it.
std::string shown(py::handle value) {
  return py::str(py::repr(value)[py::slice(0, 100, 1)]);
}

// A key: a non-empty str of at most shared_kv_max_key bytes in UTF-8, a lone
// surrogate counted as the byte it stands for (surrogateescape). The usual
// ASCII key is read in place; any other is encoded into `bytes`.
std::string_view checked_key(py::handle key, std::string& bytes) {
  PyObject* k = key.ptr();
  if (!PyUnicode_Check(k) || PyUnicode_GET_LENGTH(k) == 0)
    throw py::type_error("a store key is a non-empty str, not " + shown(key));
  std::string_view text;
  if (PyUnicode_IS_ASCII(k)) {
    text = {static_cast<const char*>(PyUnicode_DATA(k)), static_cast<std::size_t>(PyUnicode_GET_LENGTH(k))};
  } else {
    bytes = py::bytes(key.attr("encode")("utf-8", "surrogateescape"));
    text = bytes;
  }
  if (text.size() > shared_kv_max_key)
    throw py::value_error("a store key is at most " + std::to_string(shared_kv_max_key) + " bytes");
  return text;
}

// The longest time to live either backend takes, in seconds (31 years).
constexpr double max_ttl_seconds = 1e9;

// A time to live: None, or an int or float (not a bool) above 0 and at most
// max_ttl_seconds, in seconds.
std::optional<double> checked_ttl(py::handle ttl) {
  if (ttl.is_none()) return std::nullopt;
  PyObject* t = ttl.ptr();
  double seconds = 0;
  if (!PyBool_Check(t) && (PyLong_Check(t) || PyFloat_Check(t))) {
    seconds = PyFloat_AsDouble(t);  // an int too large for a double raises OverflowError
    if (seconds == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  }
  if (!(seconds > 0)) throw py::value_error("ttl is a number of seconds above 0, not " + shown(ttl));
  if (!(seconds <= max_ttl_seconds))  // inf and nan too
    throw py::value_error("ttl is at most 1e9 seconds (31 years), not " + shown(ttl));
  return seconds;
}

// The step of incr: an int, not a bool.
std::int64_t checked_by(py::handle by) {
  PyObject* b = by.ptr();
  if (PyBool_Check(b) || !PyLong_Check(b)) throw py::type_error("by is an int");
  int overflow = 0;
  long long step = PyLong_AsLongLongAndOverflow(b, &overflow);
  if (overflow != 0) throw py::value_error("by: past 64 bits");
  return step;
}

// A value: a str, int or float (not a bool), stored as its text.
py::str checked_value(py::handle value) {
  PyObject* v = value.ptr();
  if (PyBool_Check(v) || !(PyUnicode_Check(v) || PyLong_Check(v) || PyFloat_Check(v)))
    throw py::type_error(std::string("a store value is a str, int or float, not ") + Py_TYPE(v)->tp_name);
  return py::str(value);
}

// A str's UTF-8, valid while it lives (UnicodeEncodeError for a lone surrogate).
std::string_view utf8_of(const py::str& text) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
  if (data == nullptr) throw py::error_already_set();
  return {data, static_cast<std::size_t>(size)};
}

// The memory table's limit on a time to live, and its unit.
std::optional<shared_kv::clock::duration> kv_ttl(std::optional<double> seconds) {
  if (!seconds) return std::nullopt;  // checked_ttl bounds it
  return std::chrono::duration_cast<shared_kv::clock::duration>(std::chrono::duration<double>(*seconds));
}

void raise_for(shared_kv::status s, std::string_view key) {
  switch (s) {
    case shared_kv::status::ok:
      return;
    case shared_kv::status::too_long:
      throw py::value_error("pc.store: an empty key, a key over " + std::to_string(shared_kv_max_key) +
                            " bytes or a value over " + std::to_string(shared_kv_max_value) + " bytes");
    case shared_kv::status::full: {
      py::object error = py::module_::import("portcullis.store").attr("Error");
      PyErr_SetString(error.ptr(), "pc.store: the memory store is full ([store] memory_entries)");
      throw py::error_already_set();
    }
    case shared_kv::status::not_integer:
      throw py::value_error("pc.store: " + std::string(key.substr(0, 100)) +
                            " does not hold an integer (decimal, 64 bits, no leading zero, as Redis's INCR wants)");
    case shared_kv::status::overflow:
      throw py::value_error("pc.store: " + std::string(key.substr(0, 100)) + " would overflow 64 bits");
  }
}

}  // namespace

void define_store(py::module_& m) {
  m.def(
      "store_get",
      [](py::handle key) -> py::object {
        std::string bytes;
        std::optional<std::string> value = process_kv().get(checked_key(key, bytes));
        if (!value) return py::none();
        return py::str(*value);
      },
      py::arg("key"), "The value at key (str), or None.");
  m.def(
      "store_set",
      [](py::handle key, py::handle value, py::handle ttl) {
        std::string bytes;
        std::string_view k = checked_key(key, bytes);
        py::str text = checked_value(value);
        std::optional<shared_kv::clock::duration> life = kv_ttl(checked_ttl(ttl));
        raise_for(process_kv().set(k, utf8_of(text), life), k);
      },
      py::arg("key"), py::arg("value"), py::arg("ttl") = py::none(),
      "Sets key to value, for ttl seconds (None: no limit).");
  m.def(
      "store_incr",
      [](py::handle key, py::handle by, py::handle ttl) {
        std::string bytes;
        std::string_view k = checked_key(key, bytes);
        std::int64_t step = checked_by(by);
        std::optional<shared_kv::clock::duration> life = kv_ttl(checked_ttl(ttl));
        std::int64_t result = 0;
        raise_for(process_kv().incr(k, step, life, result), k);
        return result;
      },
      py::arg("key"), py::arg("by") = 1, py::arg("ttl") = py::none(),
      "Adds by to the integer at key (a new key starts at 0 and gets ttl) and returns it.");
  m.def(
      "store_delete",
      [](py::handle key) {
        std::string bytes;
        return process_kv().erase(checked_key(key, bytes));
      },
      py::arg("key"), "Deletes key; whether it was there.");

  // The same checks for store.py's Redis path: each returns the argument as Redis gets it.
  m.def(
      "store_checked_key",
      [](py::handle key) {
        std::string bytes;
        checked_key(key, bytes);
        return py::reinterpret_borrow<py::str>(key);
      },
      py::arg("key"));
  m.def(
      "store_checked_ttl", [](py::handle ttl) { return checked_ttl(ttl); }, py::arg("ttl"));
  m.def(
      "store_checked_by", [](py::handle by) { return checked_by(by); }, py::arg("by"));
  m.def(
      "store_checked_value", [](py::handle value) { return checked_value(value); }, py::arg("value"));
}

}  // namespace portcullis::bindings
