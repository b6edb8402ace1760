#include "bindings/attribute.hpp"

#include <structmember.h>

namespace py = pybind11;

namespace portcullis::bindings {

attribute::attribute(const char* name) : name_(PyUnicode_InternFromString(name)) {
  if (name_ == nullptr) throw py::error_already_set();
}

Py_ssize_t member_slot_offset(PyTypeObject* type, PyObject* name, bool writable) {
  // The attribute as the type's MRO resolves it (what _PyType_Lookup finds).
  PyObject* mro = type->tp_mro;
  if (mro == nullptr || !PyTuple_Check(mro)) return -1;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); ++i) {
    auto* base = reinterpret_cast<PyTypeObject*>(PyTuple_GET_ITEM(mro, i));
    if (base->tp_dict == nullptr) continue;
    PyObject* found = PyDict_GetItemWithError(base->tp_dict, name);
    if (found == nullptr) {
      if (PyErr_Occurred()) PyErr_Clear();
      continue;
    }
    if (!Py_IS_TYPE(found, &PyMemberDescr_Type)) return -1;
    const auto* descriptor = reinterpret_cast<PyMemberDescrObject*>(found);
    const PyMemberDef* member = descriptor->d_member;
    if (member->type != T_OBJECT_EX || (writable && (member->flags & READONLY) != 0) ||
        !PyType_IsSubtype(type, PyDescr_TYPE(found)))
      return -1;
    return member->offset;
  }
  return -1;
}

Py_ssize_t attribute::offset_in(PyTypeObject* type, bool writing) const {
  if ((writing ? type->tp_setattro != PyObject_GenericSetAttr : type->tp_getattro != PyObject_GenericGetAttr) ||
      !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG))
    return -1;
  return member_slot_offset(type, name_, writing);
}

PyObject** attribute::slot_after_miss(PyObject* o, bool writing) const {
  PyTypeObject* type = Py_TYPE(o);
  entry& e = writing ? write_ : read_;
  const Py_ssize_t offset = offset_in(type, writing);
  if (offset < 0 && !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) return nullptr;  // (not yet: see get)
  PyTypeObject* old = e.type;
  Py_INCREF(type);
  e = entry{type, type->tp_version_tag, offset};  // an offset of -1 remembers "the usual way" for it
  Py_XDECREF(old);  // (last, and `offset` kept: freeing a type may run Python code that comes back here)
  if (offset < 0) return nullptr;
  return reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + offset);
}

py::object attribute::get(py::handle o) const {
  PyObject** slot = slot_of(o.ptr(), false);
  if (slot != nullptr && *slot != nullptr) return py::reinterpret_borrow<py::object>(*slot);
  // Anything else, an unset slot included (AttributeError, or the class's
  // __getattr__); a lookup also gives the type the version tag a later call may cache.
  PyObject* v = PyObject_GetAttr(o.ptr(), name_);
  if (v == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(v);
}

void attribute::set(py::handle o, py::handle value) const {
  PyObject** slot = slot_of(o.ptr(), true);
  if (slot == nullptr) {
    if (PyObject_SetAttr(o.ptr(), name_, value.ptr()) < 0) throw py::error_already_set();
    return;
  }
  PyObject* old = *slot;
  *slot = Py_NewRef(value.ptr());
  Py_XDECREF(old);  // (last: its finaliser may run Python code)
}

void define_attribute(py::module_& m) {
  py::class_<attribute>(m, "Attribute", "An attribute name with its slot cache (bindings/attribute.hpp), for tests.")
      .def(py::init<const char*>(), py::arg("name"))
      .def("get", &attribute::get, py::arg("obj"))
      .def("set", &attribute::set, py::arg("obj"), py::arg("value"));
}

}  // namespace portcullis::bindings
