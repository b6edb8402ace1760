// An attribute name that remembers where the last type it met keeps it.
//
// The stage runner and JobObjects read and write a few dozen attributes of
// the policy API's objects a job, nearly all `__slots__` members; a lookup
// through PyObject_GetAttr/SetAttr costs some twenty times the access
// itself. So, like the interpreter's own inline caches, an `attribute`
// keeps one entry: a type whose getattr/setattr are the generic ones and
// whose attribute is an object slot (a T_OBJECT_EX member descriptor), and
// that slot's offset in the instance (or that there is none: the usual
// way then), valid while the type's version tag is (CPython changes it
// when the class or a base changes). Instances of
// that type are then read and written at the offset, as the member
// descriptor itself does; anything else, and an unset slot, goes the usual
// way (AttributeError, __getattr__). GIL held throughout.
#pragma once

#include <pybind11/pybind11.h>

namespace portcullis::bindings {

// The offset in instances of `type` of the object slot (a T_OBJECT_EX member
// descriptor) that `name` resolves to through the type's MRO, as the member
// descriptor reads it (`writable`: and writes it, not READONLY); -1 when the
// name is something else there. Whatever the type's getattr/setattr are.
Py_ssize_t member_slot_offset(PyTypeObject* type, PyObject* name, bool writable);

class attribute {
 public:
  explicit attribute(const char* name);
  attribute(const attribute&) = delete;
  attribute& operator=(const attribute&) = delete;

  pybind11::object get(pybind11::handle o) const;
  void set(pybind11::handle o, pybind11::handle value) const;
  PyObject* name() const { return name_; }

 private:
  // The slot's offset in instances of `type`, or -1 if it is not a plain object slot there.
  Py_ssize_t offset_in(PyTypeObject* type, bool writing) const;
  // Where `o` keeps the attribute, or null for the usual way. Inline: a job
  // reads and writes some thirty attributes, nearly all hits of the entry.
  PyObject** slot_of(PyObject* o, bool writing) const {
    PyTypeObject* type = Py_TYPE(o);
    const entry& e = writing ? write_ : read_;
    if (type != e.type || type->tp_version_tag != e.version || !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG))
      return slot_after_miss(o, writing);
    if (e.offset < 0) return nullptr;
    return reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + e.offset);
  }
  PyObject** slot_after_miss(PyObject* o, bool writing) const;  // the entry remade for o's type

  PyObject* name_;  // interned; never freed (the interpreter is never finalised)
  struct entry {
    PyTypeObject* type = nullptr;  // a strong reference: the pointer cannot name another type later
    unsigned int version = 0;
    Py_ssize_t offset = -1;  // -1: not a plain slot there, the usual way
  };
  mutable entry read_, write_;  // (a frozen class reads generically but writes through its own __setattr__)
};

}  // namespace portcullis::bindings
