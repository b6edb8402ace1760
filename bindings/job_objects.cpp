#include "bindings/job_objects.hpp"

#include <exception>
#include <utility>

#include "bindings/attribute.hpp"
#include "bindings/core.hpp"
#include "bindings/job_state.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

namespace {

// The slots it fills, each with its cache (bindings/attribute.hpp), one per class it meets.
struct names {
  attribute local{"_local"}, domain{"_domain"}, params{"_params"}, conn{"_conn"}, id{"_id"}, sender{"_sender"},
      recipients{"_recipients"}, smtputf8{"_smtputf8"}, body_8bit{"_body_8bit"}, spf{"spf"}, dkim{"dkim"},
      dmarc{"dmarc"}, arc{"arc"}, dkim_sign{"_dkim_sign"}, arc_seal{"_arc_seal"}, data{"data"}, tx{"tx"},
      session_conn{"conn"}, before{"before"}, loader{"_loader"}, head_loader{"_head_loader"},
      prepended{"_prepended"}, changed{"_changed"},
      message_smtputf8{"_smtputf8"}, is_parsed{"_is_parsed"}, head_whole{"_head_whole"}, conn_id{"_id"},
      client_ip{"_client_ip"}, client_port{"_client_port"}, helo{"_helo"}, tls{"_tls"}, tls_version{"_tls_version"},
      tls_cipher{"_tls_cipher"}, auth_user{"_auth_user"}, conn_data{"data"}, session_engine{"engine"},
      scope{"scope"}, context{"context"}, session_connection{"connection"}, envelope{"envelope"},
      engine_config{"config"}, engine_folder{"folder"};
};

const names& name() {
  static const names* n = new names;  // never freed: the interpreter is never finalised
  return *n;
}

// cls.__new__(cls) for these classes (object's or list's): an empty instance, no __init__.
py::object bare_instance(const py_ref& cls) {
  auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  PyObject* o = type->tp_alloc(type, 0);
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

// A tuple or list's items (a test's stand-in may send a list), `size` of them, or TypeError.
py::object items_of(py::handle sequence, Py_ssize_t size, const char* what) {
  auto fast = py::reinterpret_steal<py::object>(PySequence_Fast(sequence.ptr(), what));
  if (!fast) throw py::error_already_set();
  if (size >= 0 && PySequence_Fast_GET_SIZE(fast.ptr()) != size) throw py::type_error(what);
  return fast;
}

// cls(*args): a check result made from the daemon's tuple.
py::object call(const py_ref& cls, py::handle args) {
  auto t = py::reinterpret_steal<py::object>(PySequence_Tuple(args.ptr()));
  if (!t) throw py::error_already_set();
  PyObject* r = PyObject_Call(cls.ptr(), t.ptr(), nullptr);
  if (r == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

// The message loader of on_data: a C function bound to a capsule that holds the stored message.
using stored_message = std::shared_ptr<const message_store>;
constexpr const char* loader_capsule = "portcullis.stored_message";

PyObject* load_message(PyObject* self, PyObject* /*unused*/) {
  const auto* stored = static_cast<const stored_message*>(PyCapsule_GetPointer(self, loader_capsule));
  if (stored == nullptr) return nullptr;
  if (!*stored) Py_RETURN_NONE;
  try {
    return message_bytes(**stored).release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());  // a spilled message that cannot be read: as pybind11 would say it
  }
  return nullptr;
}

PyMethodDef load_message_def = {"load_message", load_message, METH_NOARGS,
                                "The message as received, read from the daemon's store (None if it has none)."};

// Its header section only (message_store::read_head): reading a field of a
// 50 MiB message reads its header, not the 50 MiB. None for a header section
// past this size, or none at all (no empty line): the whole message is read
// then, once, straight into its bytes object.
constexpr std::size_t max_head_read = 1 << 20;

PyObject* load_head(PyObject* self, PyObject* /*unused*/) {
  const auto* stored = static_cast<const stored_message*>(PyCapsule_GetPointer(self, loader_capsule));
  if (stored == nullptr) return nullptr;
  if (!*stored) Py_RETURN_NONE;
  try {
    const auto head = (*stored)->read_head(max_head_read);
    if (!head) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(head->data(), static_cast<Py_ssize_t>(head->size()));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyMethodDef load_head_def = {"load_head", load_head, METH_NOARGS,
                             "The header section of the message as received, up to its empty line (Message._head_loader)."};

// `def` bound to a capsule holding `stored`.
py::object bound_to(stored_message stored, PyMethodDef& def) {
  auto* held = new stored_message(std::move(stored));
  PyObject* capsule = PyCapsule_New(held, loader_capsule, [](PyObject* c) {
    delete static_cast<stored_message*>(PyCapsule_GetPointer(c, loader_capsule));
  });
  if (capsule == nullptr) {
    delete held;
    throw py::error_already_set();
  }
  PyObject* f = PyCFunction_New(&def, capsule);
  Py_DECREF(capsule);
  if (f == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(f);
}

py::object message_loader(stored_message stored) { return bound_to(std::move(stored), load_message_def); }

}  // namespace

job_objects::result_class::result_class(py::object made) : cls_(std::move(made)) {
  // The generated __init__ of a frozen dataclass takes each field in order and
  // sets it with object.__setattr__, that is, writes its slot; anything that
  // would make it do more (a __post_init__, an InitVar or ClassVar, a field
  // it does not take) leaves slots_ empty.
  const py::handle cls = *cls_;
  if (!PyType_Check(cls.ptr())) return;
  auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  const py::object dataclasses = py::module_::import("dataclasses");
  if (!dataclasses.attr("is_dataclass")(cls).cast<bool>() || py::hasattr(cls, "__post_init__")) return;
  const py::object params = cls.attr("__dataclass_params__");
  if (!params.attr("frozen").cast<bool>() || !params.attr("init").cast<bool>()) return;
  const py::tuple fields = dataclasses.attr("fields")(cls);
  if (py::len(fields) != py::len(cls.attr("__dataclass_fields__"))) return;
  std::vector<Py_ssize_t> slots;
  for (const auto field : fields) {
    if (!field.attr("init").cast<bool>()) return;
    // Written as object.__setattr__ writes it: past the class's own (frozen) __setattr__.
    const Py_ssize_t offset = member_slot_offset(type, field.attr("name").ptr(), true);
    if (offset < 0) return;
    slots.push_back(offset);
  }
  slots_ = std::move(slots);
}

py::object job_objects::result_class::make(py::handle values) const {
  const py::object items = items_of(values, -1, "a check result is a sequence");
  const auto count = static_cast<std::size_t>(PySequence_Fast_GET_SIZE(items.ptr()));
  if (slots_.empty() || count != slots_.size()) return call(cls_, values);  // (a wrong count raises there)
  py::object o = bare_instance(cls_);
  for (std::size_t i = 0; i < count; ++i) {
    auto** slot = reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o.ptr()) + slots_[i]);
    *slot = Py_NewRef(PySequence_Fast_GET_ITEM(items.ptr(), static_cast<Py_ssize_t>(i)));  // (a new instance's slots are empty)
  }
  return o;
}

job_objects::job_objects(py::object connection, py::object session, py::object transaction, py::object address,
                         py::object address_list, py::object message, py::object spf_result,
                         py::object dkim_signature, py::object dmarc_result, py::object arc_result)
    : connection_(std::move(connection)),
      session_(std::move(session)),
      transaction_(std::move(transaction)),
      address_(std::move(address)),
      address_list_(std::move(address_list)),
      message_(std::move(message)),
      spf_result_(std::move(spf_result)),
      dkim_signature_(std::move(dkim_signature)),
      dmarc_result_(std::move(dmarc_result)),
      arc_result_(std::move(arc_result)) {
  for (const py_ref* cls : {&connection_, &session_, &transaction_, &address_, &address_list_, &message_})
    if (!PyType_Check(cls->ptr())) throw py::type_error("JobObjects takes the classes it makes");
}

py::object job_objects::connection(py::handle view) const {
  const py::object t = items_of(view, 8, "a connection is a tuple of 8");
  py::object conn = bare_instance(connection_);
  name().conn_id.set(conn, PySequence_Fast_GET_ITEM(t.ptr(), 0));
  update_connection(conn, t);
  name().conn_data.set(conn, py::dict());
  return conn;
}

void job_objects::update_connection(py::handle conn, py::handle view) const {
  const auto& n = name();
  const py::object t = items_of(view, 8, "a connection is a tuple of 8");
  PyObject* const* item = PySequence_Fast_ITEMS(t.ptr());
  n.client_ip.set(conn, item[1]);
  n.client_port.set(conn, item[2]);
  n.helo.set(conn, item[3]);
  n.tls.set(conn, item[4]);
  n.tls_version.set(conn, item[5]);
  n.tls_cipher.set(conn, item[6]);
  n.auth_user.set(conn, item[7]);
}

py::object job_objects::session(py::handle engine, py::handle view) const {
  const auto& n = name();
  const py::object conn = connection(view);
  py::object s = bare_instance(session_);
  n.session_engine.set(s, engine);
  n.session_conn.set(s, conn);
  // What _context.scope holds while its hooks run.
  n.scope.set(s, py::make_tuple(n.conn_id.get(conn), n.engine_config.get(engine), n.engine_folder.get(engine)));
  n.context.set(s, py::none());
  n.tx.set(s, py::none());
  n.session_connection.set(s, view);
  n.envelope.set(s, py::none());
  n.before.set(s, py::make_tuple(py::none(), py::list()));
  return s;
}

py::object job_objects::address(py::handle parts, py::handle params) const {
  const auto& n = name();
  const py::object pair = items_of(parts, 2, "an address is (local part, domain)");
  py::object a = bare_instance(address_);
  n.local.set(a, PySequence_Fast_GET_ITEM(pair.ptr(), 0));
  n.domain.set(a, PySequence_Fast_GET_ITEM(pair.ptr(), 1));
  n.params.set(a, params);
  return a;
}

py::object job_objects::address_list(py::handle parts) const {
  const py::object all = items_of(parts, -1, "recipients are a sequence of (local part, domain)");
  py::object list = bare_instance(address_list_);
  const Py_ssize_t count = PySequence_Fast_GET_SIZE(all.ptr());
  for (Py_ssize_t i = 0; i < count; ++i) {
    const py::object a = address(PySequence_Fast_GET_ITEM(all.ptr(), i), py::dict());
    if (PyList_Append(list.ptr(), a.ptr()) < 0) throw py::error_already_set();
  }
  return list;
}

py::object job_objects::transaction_of(py::handle session, py::handle envelope, bool renew) const {
  const auto& n = name();
  const py::object e = items_of(envelope, 10, "an envelope is a tuple of 10");
  auto item = [&](Py_ssize_t i) { return py::handle(PySequence_Fast_GET_ITEM(e.ptr(), i)); };
  const py::handle tx_id = item(0), smtputf8 = item(4), body_8bit = item(5);
  const py::object sender = address(item(1), item(2)), recipients = address_list(item(3));

  py::object tx = n.tx.get(session);
  bool same = false;
  if (!tx.is_none()) {
    const int r = PyObject_RichCompareBool(n.id.get(tx).ptr(), tx_id.ptr(), Py_EQ);
    if (r < 0) throw py::error_already_set();
    same = r == 1;
  }
  if (!same || renew) {
    const py::object old = tx;
    tx = bare_instance(transaction_);
    n.conn.set(tx, n.session_conn.get(session));
    n.id.set(tx, tx_id);
    if (same) {  // renewed: the transaction's own state goes on in the new object
      for (const attribute* kept : {&n.dkim_sign, &n.arc_seal, &n.data}) kept->set(tx, kept->get(old));
    } else {
      for (const attribute* unset : {&n.dkim_sign, &n.arc_seal}) unset->set(tx, py::none());
      n.data.set(tx, py::dict());
    }
  }
  n.sender.set(tx, sender);
  n.recipients.set(tx, recipients);
  n.smtputf8.set(tx, smtputf8);
  n.body_8bit.set(tx, body_8bit);

  n.spf.set(tx, item(6).is_none() ? py::object(py::none()) : spf_result_.make(item(6)));
  if (item(7).is_none()) {
    n.dkim.set(tx, py::none());
  } else {
    const py::object signatures = items_of(item(7), -1, "DKIM results are a sequence");
    py::list dkim;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(signatures.ptr()); ++i)
      dkim.append(dkim_signature_.make(PySequence_Fast_GET_ITEM(signatures.ptr(), i)));
    n.dkim.set(tx, dkim);
  }
  n.dmarc.set(tx, item(8).is_none() ? py::object(py::none()) : dmarc_result_.make(item(8)));
  n.arc.set(tx, item(9).is_none() ? py::object(py::none()) : arc_result_.make(item(9)));

  n.tx.set(session, tx);
  auto copy = py::reinterpret_steal<py::object>(PyList_GetSlice(recipients.ptr(), 0, PY_SSIZE_T_MAX));
  if (!copy) throw py::error_already_set();
  n.before.set(session, py::make_tuple(sender, copy));
  return tx;
}

void job_objects::add_recipients(py::handle session, py::handle tx, py::handle parts, Py_ssize_t from) const {
  const auto& n = name();
  const py::object had = n.recipients.get(tx);
  const py::object all = items_of(parts, -1, "recipients are a sequence of (local part, domain)");
  if (!PyList_Check(had.ptr()) || PyList_GET_SIZE(had.ptr()) != from || PySequence_Fast_GET_SIZE(all.ptr()) < from)
    throw py::value_error("the transaction's recipients are not the envelope's first ones");
  py::object list = bare_instance(address_list_);
  for (Py_ssize_t i = 0; i < from; ++i)
    if (PyList_Append(list.ptr(), PyList_GET_ITEM(had.ptr(), i)) < 0) throw py::error_already_set();
  for (Py_ssize_t i = from; i < PySequence_Fast_GET_SIZE(all.ptr()); ++i) {
    const py::object a = address(PySequence_Fast_GET_ITEM(all.ptr(), i), py::dict());
    if (PyList_Append(list.ptr(), a.ptr()) < 0) throw py::error_already_set();
  }
  n.recipients.set(tx, list);
  auto copy = py::reinterpret_steal<py::object>(PyList_GetSlice(list.ptr(), 0, PY_SSIZE_T_MAX));
  if (!copy) throw py::error_already_set();
  n.before.set(session, py::make_tuple(n.sender.get(tx), copy));
}

py::object job_objects::lazy_message(py::handle loader, bool smtputf8, py::handle head_whole,
                                     py::handle head_loader) const {
  const auto& n = name();
  py::object m = bare_instance(message_);
  n.loader.set(m, loader);
  n.head_loader.set(m, head_loader);
  n.prepended.set(m, py::list());
  n.changed.set(m, py::bool_(false));
  n.message_smtputf8.set(m, py::bool_(smtputf8));
  n.is_parsed.set(m, py::bool_(false));
  n.head_whole.set(m, head_whole);
  return m;
}

py::object job_objects::lazy_message(std::shared_ptr<const message_store> stored, bool smtputf8,
                                     py::handle head_whole) const {
  const auto head = bound_to(stored, load_head_def);
  return lazy_message(message_loader(std::move(stored)), smtputf8, head_whole, head);
}

void define_job_objects(py::module_& m) {
  py::class_<job_objects>(m, "JobObjects",
                          "The policy objects a job is bound to, made in C (bindings/job_objects.hpp).")
      .def(py::init<py::object, py::object, py::object, py::object, py::object, py::object, py::object, py::object,
                    py::object, py::object>(),
           py::kw_only(), py::arg("connection"), py::arg("session"), py::arg("transaction"), py::arg("address"),
           py::arg("address_list"), py::arg("message"), py::arg("spf_result"), py::arg("dkim_signature"),
           py::arg("dmarc_result"), py::arg("arc_result"))
      .def("connection", &job_objects::connection, py::arg("view"),
           "A Connection from the daemon's view of it: (id, client_ip, client_port, helo, tls, tls_version, "
           "tls_cipher, auth_user).")
      .def("update_connection", &job_objects::update_connection, py::arg("conn"), py::arg("view"),
           "The Connection brought up to the daemon's view (all but the id; its data kept).")
      .def("session", &job_objects::session, py::arg("engine"), py::arg("view"),
           "A _Session bound to the engine, its Connection made from the daemon's view.")
      .def("add_recipients", &job_objects::add_recipients, py::arg("session"), py::arg("tx"), py::arg("parts"),
           py::arg("start"),
           "session.tx given the recipients of parts from start on (the daemon took them since tx was made as it "
           "sent it): its sender and first recipients kept, session.before brought along.")
      .def("address", &job_objects::address, py::arg("parts"), py::arg("params"),
           "An Address from (local part, domain) and its parameters, as the daemon parsed them.")
      .def("address_list", &job_objects::address_list, py::arg("parts"),
           "An AddressList of (local part, domain) pairs, each with no parameters.")
      .def("transaction_of", &job_objects::transaction_of, py::arg("session"), py::arg("envelope"),
           py::arg("renew") = false,
           "session.tx made or brought up to date from the daemon's envelope; sets session.tx and session.before. "
           "renew: a new object for the same transaction, with its data, dkim_sign and arc_seal.")
      .def(
          "lazy_message",
          [](const job_objects& o, py::handle loader, bool smtputf8, py::handle head_whole, py::handle head_loader) {
            return o.lazy_message(loader, smtputf8, head_whole, head_loader);
          },
          py::arg("loader"), py::arg("smtputf8"), py::arg("head_whole") = py::none(),
          py::arg("head_loader") = py::none(),
          "A Message read from loader() when a hook first looks at it, its header section alone from "
          "head_loader() when only that is needed (Message._lazy).");
}

}  // namespace portcullis::bindings
