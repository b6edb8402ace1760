// Keeps the Python error pending when it is made (if any) aside while code
// that may call Python runs (a destructor, a context left), and puts it
// back after: such code never loses one, nor sees one that is not its own.
#pragma once

#include <Python.h>

namespace portcullis::bindings {

class pending_error_kept {
 public:
  pending_error_kept() { PyErr_Fetch(&type_, &value_, &traceback_); }
  pending_error_kept(const pending_error_kept&) = delete;
  pending_error_kept& operator=(const pending_error_kept&) = delete;
  ~pending_error_kept() { PyErr_Restore(type_, value_, traceback_); }

 private:
  PyObject *type_ = nullptr, *value_ = nullptr, *traceback_ = nullptr;
};

}  // namespace portcullis::bindings
