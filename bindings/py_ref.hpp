// A strong reference to a Python object, for the members of our C++ classes
// that pybind11 exposes: a plain PyObject* (pybind11's types are hidden, and
// the daemon's structs that point at those classes are not). Freed with the
// GIL held, as those classes are.
#pragma once

#include <pybind11/pybind11.h>

namespace portcullis::bindings {

class py_ref {
 public:
  explicit py_ref(pybind11::object o) : p_(o.release().ptr()) {}
  py_ref(const py_ref&) = delete;
  py_ref& operator=(const py_ref&) = delete;
  ~py_ref() { Py_XDECREF(p_); }
  pybind11::handle operator*() const { return p_; }
  PyObject* ptr() const { return p_; }

 private:
  PyObject* p_;
};

}  // namespace portcullis::bindings
