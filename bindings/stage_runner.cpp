#include "bindings/stage_runner.hpp"

#include <pybind11/stl.h>

#include <time.h>

#include <exception>
#include <optional>
#include <utility>

#include "bindings/attribute.hpp"
#include "bindings/core.hpp"
#include "bindings/job_state.hpp"
#include "bindings/job_tasks.hpp"
#include "bindings/pending_error.hpp"
#include "smtp/message_check.hpp"
#include "store/message_store.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

namespace {

// The attributes a job reads and writes, each with its cache (bindings/attribute.hpp): a dozen a job.
struct names {
  attribute connection{"connection"}, conn{"conn"}, envelope{"envelope"}, tx{"tx"},
      engine{"engine"}, hooks{"hooks"}, timeout{"timeout"}, scope{"scope"}, function{"function"},
      observed_none{"observed_none"}, before{"before"}, sender{"_sender"}, recipients{"_recipients"},
      smtputf8{"_smtputf8"}, changed{"_changed"}, dkim_sign{"_dkim_sign"}, arc_seal{"_arc_seal"},
      is_async{"is_async"}, context{"context"}, lock{"_lock"}, host_engine{"engine"}, generation{"generation"},
      engine_sessions{"sessions"}, conn_id{"_id"}, kind{"kind"}, code{"code"}, status{"status"}, text{"text"},
      addresses{"addresses"}, file{"file"}, prepended{"_prepended"}, is_parsed{"_is_parsed"},
      head_whole{"_head_whole"}, raw{"raw"};
  py::str acquire{"acquire"}, release{"release"}, engine_of_generation{"_engine_of_generation"},
      close_if_unused{"_close_if_unused"}, allowed_at{"allowed_at"}, added_on_top{"_added_on_top"};
};

const names& name() {
  static const names* n = new names;  // never freed: the interpreter is never finalised
  return *n;
}

bool equal(py::handle a, py::handle b) {
  const int r = PyObject_RichCompareBool(a.ptr(), b.ptr(), Py_EQ);
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

// time.monotonic()'s clock, so Python compares our start with its own readings.
double monotonic() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// This thread's key in EngineHost._running (threading.get_ident()). (Made
// per job: one kept per thread would leak when the thread ends, with no GIL.)
py::object this_thread_key() {
  auto key = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLong(PyThread_get_thread_ident()));
  if (!key) throw py::error_already_set();
  return key;
}

bool is_notification(policy_stage s) {
  return s == policy_stage::delivered || s == policy_stage::reset || s == policy_stage::disconnect;
}

// The exception a hook raised, as one object with its traceback (Python 3.11's API).
py::object raised_exception() {
  PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
  PyErr_Fetch(&type, &value, &traceback);
  PyErr_NormalizeException(&type, &value, &traceback);
  if (traceback != nullptr && value != nullptr) PyException_SetTraceback(value, traceback);
  Py_XDECREF(type);
  Py_XDECREF(traceback);
  return py::reinterpret_steal<py::object>(value);
}

// Whether `o` is the str `text` (by its UTF-8, which CPython keeps for an ASCII str).
bool is_text(PyObject* o, std::string_view text) {
  if (!PyUnicode_Check(o)) return false;
  Py_ssize_t size = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(o, &size);
  if (utf8 == nullptr) {
    PyErr_Clear();
    return false;
  }
  return std::string_view(utf8, static_cast<std::size_t>(size)) == text;
}

// None for "", else the str, as job_state's tuples hold optional texts.
bool is_text_or_none(PyObject* o, std::string_view text) { return text.empty() ? o == Py_None : is_text(o, text); }

bool is_bool(PyObject* o, bool value) { return o == (value ? Py_True : Py_False); }

// (local part, domain)
bool is_address(PyObject* o, const smtp::address& a) {
  return PyTuple_Check(o) && PyTuple_GET_SIZE(o) == 2 && is_text(PyTuple_GET_ITEM(o, 0), a.local) &&
         is_text(PyTuple_GET_ITEM(o, 1), a.domain);
}

bool is_params(PyObject* o, const std::vector<smtp::esmtp_param>& params) {
  if (!PyDict_CheckExact(o) || PyDict_GET_SIZE(o) != static_cast<Py_ssize_t>(params.size())) return false;
  for (const auto& p : params) {
    const py::str key(p.keyword);
    PyObject* value = PyDict_GetItemWithError(o, key.ptr());
    if (value == nullptr) {
      PyErr_Clear();
      return false;
    }
    if (p.has_value ? !is_text(value, p.value) : value != Py_None) return false;
  }
  return true;
}

// Whether `seen` (a connection_tuple of an earlier job) still says what this
// job does, read in place: most jobs change nothing, and building the tuple to
// compare costs more than the rest of a no-op hook's job.
bool same_connection(const policy_job& j, PyObject* seen) {
  if (!PyTuple_Check(seen) || PyTuple_GET_SIZE(seen) != 8) return false;
  PyObject* const* t = &PyTuple_GET_ITEM(seen, 0);
  int overflow = 0;
  if (!is_text(t[0], j.session_id) || !is_text(t[1], j.client_ip) || !PyLong_CheckExact(t[2]) ||
      PyLong_AsLongAndOverflow(t[2], &overflow) != j.client_port || overflow != 0 || !is_text_or_none(t[3], j.helo) ||
      !is_bool(t[4], j.tls))
    return false;
  if (j.tls ? !is_text_or_none(t[5], j.tls_version) || !is_text_or_none(t[6], j.tls_cipher)
            : t[5] != Py_None || t[6] != Py_None)
    return false;
  return j.auth_user ? is_text(t[7], *j.auth_user) : t[7] == Py_None;
}

// How many of this job's recipients `seen` (an envelope_tuple of an earlier
// job) holds, first in the same order, if all else in it is this job's: the
// daemon adds recipients between stages (RCPT, then DATA) and nothing else
// moves. Read in place, as same_connection. -1: something else differs, or a
// check's result (SPF, DKIM, DMARC, ARC) is in either: the caller compares
// those by the tuple, they are rare enough.
Py_ssize_t recipients_in_common(const policy_job& j, PyObject* seen) {
  if (j.spf || j.dkim || j.dmarc || j.arc) return -1;
  if (!PyTuple_Check(seen) || PyTuple_GET_SIZE(seen) != 10) return -1;
  PyObject* const* t = &PyTuple_GET_ITEM(seen, 0);
  if (!is_text(t[0], j.tx_id) || !is_address(t[1], j.sender) || !is_params(t[2], j.sender_params) ||
      !PyList_CheckExact(t[3]) || PyList_GET_SIZE(t[3]) > static_cast<Py_ssize_t>(j.recipients.size()) ||
      !is_bool(t[4], j.smtputf8) || !is_bool(t[5], j.body_8bit))
    return -1;
  if (t[6] != Py_None || t[7] != Py_None || t[8] != Py_None || t[9] != Py_None) return -1;
  const Py_ssize_t common = PyList_GET_SIZE(t[3]);
  for (Py_ssize_t i = 0; i < common; ++i)
    if (!is_address(PyList_GET_ITEM(t[3], i), j.recipients[static_cast<std::size_t>(i)])) return -1;
  return common;
}

// `seen` with this job's recipients from `from` on added (recipients_in_common
// said the rest is the job's): the envelope_tuple of the job, its texts shared.
py::tuple envelope_with_recipients(PyObject* seen, const policy_job& j, Py_ssize_t from) {
  auto recipients = py::reinterpret_steal<py::list>(PyList_GetSlice(PyTuple_GET_ITEM(seen, 3), 0, PY_SSIZE_T_MAX));
  if (!recipients) throw py::error_already_set();
  for (std::size_t i = static_cast<std::size_t>(from); i < j.recipients.size(); ++i)
    recipients.append(address_parts(j.recipients[i]));
  py::tuple envelope(PyTuple_GET_SIZE(seen));
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seen); ++i)
    envelope[static_cast<std::size_t>(i)] =
        i == 3 ? py::object(recipients) : py::reinterpret_borrow<py::object>(PyTuple_GET_ITEM(seen, i));
  return envelope;
}

// Whether the stored message's header section is all fields (smtp::head_is_whole),
// for the lazy Message: fields a hook adds on top then go back as fields alone,
// and the message is never read into Python. Known from its first chunk (all
// of an in-memory message); a header section past it: None, Python finds out.
py::object head_whole(const std::shared_ptr<const message_store>& m) {
  if (!m) return py::none();
  message_store::reader r(*m);
  const auto first = r.next();
  if (r.failed()) return py::none();
  if (r.at_end() || first.starts_with("\r\n")) return py::bool_(smtp::head_is_whole(first));
  const auto end = first.find("\r\n\r\n");
  if (end == std::string_view::npos) return py::none();
  return py::bool_(smtp::head_is_whole(first.substr(0, end + 4)));
}

// Whether the hooks left tx's envelope as the daemon sent it: the same sender and
// recipient objects (addresses are immutable).
bool envelope_kept(py::handle session, py::handle tx) {
  const auto& n = name();
  const py::object before = n.before.get(session);  // (sender, [recipients]) as tx was made
  if (!PyTuple_Check(before.ptr()) || PyTuple_GET_SIZE(before.ptr()) != 2) return false;
  if (n.sender.get(tx).ptr() != PyTuple_GET_ITEM(before.ptr(), 0)) return false;
  const py::object now = n.recipients.get(tx);
  PyObject* was = PyTuple_GET_ITEM(before.ptr(), 1);
  if (!PyList_Check(now.ptr()) || !PyList_Check(was) || PyList_GET_SIZE(now.ptr()) != PyList_GET_SIZE(was)) return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(was); ++i)
    if (PyList_GET_ITEM(now.ptr(), i) != PyList_GET_ITEM(was, i)) return false;
  return true;
}

// No signing or sealing choice made (tx.dkim_sign, tx.arc_seal).
bool no_signing_choice(py::handle tx) {
  return name().dkim_sign.get(tx).is_none() && name().arc_seal.get(tx).is_none();
}

// Whether the hooks left the message as received (no message: before on_data)
// and made no signing or sealing choice (from MAIL on: it goes back with the
// stage that made it).
bool message_kept(py::handle tx, py::handle message) {
  return no_signing_choice(tx) && (message.is_none() || name().changed.get(message).ptr() == Py_False);
}

// Whether the hooks left tx as the daemon sent it: its envelope, and at
// on_data the message unchanged and no signing or sealing choice made. Else
// Python works out what changed.
bool unchanged(py::handle session, py::handle tx, py::handle message) {
  return envelope_kept(session, tx) && message_kept(tx, message);
}

// Message._added_on_top read from the slots in its commonest case, a lazy
// message never parsed whose header section the daemon knows is all fields
// (head_whole True), with fields added: their bytes, the last added first.
// nullopt for anything else, which the method itself works out.
std::optional<std::string> added_on_top(py::handle message) {
  const auto& n = name();
  if (n.changed.get(message).ptr() != Py_True || n.is_parsed.get(message).ptr() != Py_False ||
      n.head_whole.get(message).ptr() != Py_True)
    return std::nullopt;
  const py::object prepended = n.prepended.get(message);
  if (!PyList_CheckExact(prepended.ptr()) || PyList_GET_SIZE(prepended.ptr()) == 0) return std::nullopt;
  std::string out;
  for (Py_ssize_t i = PyList_GET_SIZE(prepended.ptr()); i-- > 0;) {
    const py::object raw = n.raw.get(PyList_GET_ITEM(prepended.ptr(), i));
    if (!PyBytes_CheckExact(raw.ptr())) return std::nullopt;
    out.append(PyBytes_AS_STRING(raw.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(raw.ptr())));
  }
  return out;
}

// The commonest edit, at the end of on_data: header fields added on top of a
// message otherwise as received (Message._added_on_top), no signing or sealing
// choice made; the caller has seen the envelope kept. The Result carries the
// fields alone, as _StageRun._with_rewrites makes it; null for anything else
// (Python works it out).
py::object fields_on_top(py::handle tx, py::handle message) {
  if (message.is_none() || !no_signing_choice(tx)) return {};
  policy_result result;
  std::optional<std::string> fields;
  try {
    fields = added_on_top(message);
  } catch (const py::error_already_set&) {  // (a slot unset: the method says what it makes of it)
  }
  if (fields) {
    result.message_prefix = std::move(*fields);
  } else {
    PyObject* on_top = PyObject_CallMethodNoArgs(message.ptr(), name().added_on_top.ptr());
    if (on_top == nullptr) {
      PyErr_Clear();  // (Python asks again, and reports it)
      return {};
    }
    const auto owned = py::reinterpret_steal<py::object>(on_top);
    if (!PyBytes_Check(on_top)) return {};  // None: another change
    result.message_prefix = std::string(PyBytes_AS_STRING(on_top), static_cast<std::size_t>(PyBytes_GET_SIZE(on_top)));
  }
  return py::cast(std::move(result));
}

// The scope a stage's hooks run in (pc.log's session, pc.config), left
// when the stage ends however it ends; at disconnect the session ends then
// too. On the loop (a job's task, which has a context of its own) the scope
// variable is set and reset. Elsewhere the session's own contextvars.Context
// is entered, made at its first job with the scope set in it: entering one
// costs a twentieth of setting and resetting a variable, and a session's
// jobs never run at once. (If it is still entered, by a hook its daemon
// abandoned, the variable is set on this thread's context instead.)
class stage_scope {
 public:
  stage_scope(py::handle var, py::handle session, bool on_loop) : var_(var) {
    const auto& n = name();
    if (!on_loop) {
      context_ = session_context(session);
      if (PyContext_Enter(context_.ptr()) == 0) return;
      PyErr_Clear();
      context_ = py::object();
    }
    token_ = PyContextVar_Set(var.ptr(), n.scope.get(session).ptr());
    if (token_ == nullptr) throw py::error_already_set();
  }
  stage_scope(const stage_scope&) = delete;
  stage_scope& operator=(const stage_scope&) = delete;
  // At disconnect: `runner->end_session(host, session)` when the scope is left.
  void end_with(stage_runner* runner, py::handle host, py::handle session) {
    end_ = runner;
    host_ = host;
    session_ = session;
  }
  // A task goes on with the stage: it ends the session itself.
  void hand_over() { end_ = nullptr; }
  ~stage_scope() {
    const pending_error_kept kept;  // (none pending here, but never lose one)
    if (context_) {
      if (PyContext_Exit(context_.ptr()) < 0) PyErr_WriteUnraisable(context_.ptr());
    } else {
      if (PyContextVar_Reset(var_.ptr(), token_) < 0) PyErr_WriteUnraisable(var_.ptr());
      Py_DECREF(token_);
    }
    if (end_ != nullptr) {
      try {
        end_->end_session(host_, session_);
      } catch (py::error_already_set& e) {
        e.restore();
        PyErr_WriteUnraisable(session_.ptr());
      } catch (const std::exception& e) {  // (never out of a destructor)
        PyErr_SetString(PyExc_RuntimeError, e.what());
        PyErr_WriteUnraisable(session_.ptr());
      }
    }
  }

 private:
  py::object session_context(py::handle session) const {
    const auto& n = name();
    py::object context = n.context.get(session);
    if (!context.is_none()) return context;
    context = py::reinterpret_steal<py::object>(PyContext_New());
    if (!context || PyContext_Enter(context.ptr()) < 0) throw py::error_already_set();
    PyObject* token = PyContextVar_Set(var_.ptr(), n.scope.get(session).ptr());
    const int left = PyContext_Exit(context.ptr());
    if (token == nullptr || left < 0) {
      Py_XDECREF(token);
      throw py::error_already_set();
    }
    Py_DECREF(token);
    n.context.set(session, context);
    return context;
  }

  py::handle var_;
  py::object context_;      // entered, or null: the variable was set
  PyObject* token_ = nullptr;
  stage_runner* end_ = nullptr;
  py::handle host_, session_;
};

}  // namespace

stage_runner::stage_runner(py::dict sessions, py::dict running, py::object scope, py::object leave_loop,
                           py::object objects, py::object upstream_reply, py::object resume, py::object slow,
                           py::object resume_async, py::object drive, py::object verdict_type,
                           py::dict positive_replies)
    : sessions_(std::move(sessions)),
      running_(std::move(running)),
      scope_(std::move(scope)),
      leave_loop_(std::move(leave_loop)),
      objects_(std::move(objects)),
      upstream_reply_(std::move(upstream_reply)),
      resume_(std::move(resume)),
      slow_(std::move(slow)),
      resume_async_(std::move(resume_async)),
      drive_(std::move(drive)),
      verdict_type_(std::move(verdict_type)),
      positive_replies_(std::move(positive_replies)),
      make_((*objects_).cast<const job_objects*>()) {}

namespace {

// The host's `_lock` (a threading.Lock), held for a scope.
class host_lock {
 public:
  explicit host_lock(py::handle host) : lock_(name().lock.get(host)) {
    PyObject* r = PyObject_CallMethodNoArgs(lock_.ptr(), name().acquire.ptr());
    if (r == nullptr) throw py::error_already_set();
    Py_DECREF(r);
  }
  host_lock(const host_lock&) = delete;
  host_lock& operator=(const host_lock&) = delete;
  ~host_lock() {
    const pending_error_kept kept;  // (the one that may be unwinding through here)
    PyObject* r = PyObject_CallMethodNoArgs(lock_.ptr(), name().release.ptr());
    if (r == nullptr) PyErr_WriteUnraisable(lock_.ptr());
    Py_XDECREF(r);
  }

 private:
  py::object lock_;
};

py::object call_method(py::handle o, const py::str& method, py::handle arg) {
  PyObject* r = PyObject_CallMethodOneArg(o.ptr(), method.ptr(), arg.ptr());
  if (r == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

// engine.sessions += delta
void count_session(py::handle engine, long delta) {
  const auto& n = name();
  const auto by = py::reinterpret_steal<py::object>(PyLong_FromLong(delta));
  auto sum = py::reinterpret_steal<py::object>(PyNumber_Add(n.engine_sessions.get(engine).ptr(), by.ptr()));
  if (!sum) throw py::error_already_set();
  n.engine_sessions.set(engine, sum);
}

}  // namespace

py::object stage_runner::new_session(py::handle host, policy_generation generation, py::handle connection) {
  const auto& n = name();
  // A session's jobs never run at once, so only a new one needs the lock.
  host_lock held(host);
  // The generation the daemon's session was made with: its C++ settings
  // and its Python policies are one snapshot (mostly the current one).
  py::object engine = n.host_engine.get(host);
  const auto wanted = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(generation));
  if (generation != 0 && !equal(n.generation.get(engine), wanted))
    engine = call_method(host, n.engine_of_generation, wanted);  // a retired one, or LookupError
  py::object session = make_->session(engine, connection);
  count_session(engine, 1);
  const py::object id = n.conn_id.get(n.conn.get(session));
  if (PyDict_SetItem(sessions_.ptr(), id.ptr(), session.ptr()) < 0) throw py::error_already_set();
  return session;
}

namespace {

// (Under the host's lock.) A session gone: its engine's count down, and a
// retired engine closed with its last session (EngineHost._close_if_unused).
void session_ended(py::handle host, py::handle session) {
  const auto& n = name();
  const py::object engine = n.engine.get(session);
  count_session(engine, -1);
  if (!engine.is(n.host_engine.get(host))) call_method(host, n.close_if_unused, engine);
}

}  // namespace

void stage_runner::end_session(py::handle host, py::handle session) {
  const auto& n = name();
  const py::object id = n.conn_id.get(n.conn.get(session));
  host_lock held(host);
  PyObject* found = PyDict_GetItemWithError(sessions_.ptr(), id.ptr());
  if (found == nullptr && PyErr_Occurred()) throw py::error_already_set();
  if (found == session.ptr() && PyDict_DelItem(sessions_.ptr(), id.ptr()) < 0) throw py::error_already_set();
  session_ended(host, session);
}

void stage_runner::forget(py::handle host, const std::vector<std::string>& session_ids) {
  // The sessions' objects are freed after the lock is released (freeing
  // them may run a policy's code, which must not find the lock held).
  std::vector<py::object> gone;
  gone.reserve(session_ids.size());
  host_lock held(host);
  for (const auto& id : session_ids) {
    const py::str key(id);
    PyObject* found = PyDict_GetItemWithError(sessions_.ptr(), key.ptr());
    if (found == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      continue;
    }
    gone.push_back(py::reinterpret_borrow<py::object>(found));
    if (PyDict_DelItem(sessions_.ptr(), key.ptr()) < 0) throw py::error_already_set();
    session_ended(host, gone.back());
  }
}

namespace {

std::optional<std::string> optional_str(py::handle o) {
  if (o.is_none()) return std::nullopt;
  return py::cast<std::string>(o);
}

// What the runner needs to apply a verdict: _verdicts.Verdict, and _engine.STAGE_POSITIVE_REPLY.
struct verdict_rules {
  py::handle type, positive_replies;
};

// A hook's pc.rewrite(): the new recipient (a pc.Address) and the policy file that made it.
struct rewrite_state {
  py::object address, by;
};

// The stage's own positive reply (code, status), from STAGE_POSITIVE_REPLY.
std::optional<std::pair<int, std::string>> positive_reply(const verdict_rules& rules, py::handle stage_name) {
  PyObject* positive = PyDict_GetItemWithError(rules.positive_replies.ptr(), stage_name.ptr());
  if (positive == nullptr || !PyTuple_Check(positive) || PyTuple_GET_SIZE(positive) != 2) {
    PyErr_Clear();
    return std::nullopt;
  }
  return std::pair{py::cast<int>(PyTuple_GET_ITEM(positive, 0)), py::cast<std::string>(PyTuple_GET_ITEM(positive, 1))};
}

// A verdict as the daemon applies it; a redirect to a rewritten recipient. (nullopt: Python's to make.)
std::optional<policy_result> verdict_result(const verdict_rules& rules, py::handle stage_name, py::handle verdict,
                                            py::handle decided_by) {
  const auto& n = name();
  policy_reply reply;
  reply.kind = py::cast<std::string>(n.kind.get(verdict));
  const py::object code = n.code.get(verdict), status = n.status.get(verdict);
  if (code.is_none() || status.is_none()) {  // the stage's own positive reply (STAGE_POSITIVE_REPLY)
    auto positive = positive_reply(rules, stage_name);
    if (!positive) return std::nullopt;
    std::tie(reply.code, reply.status) = std::move(*positive);
  } else {
    reply.code = py::cast<int>(code);
    reply.status = py::cast<std::string>(status);
  }
  reply.text = optional_str(n.text.get(verdict));
  for (const auto address : n.addresses.get(verdict)) reply.addresses.push_back(py::str(address));
  policy_result result;
  result.verdict = std::move(reply);
  result.decided_by = py::cast<std::string>(decided_by);
  return result;
}

std::optional<policy_result> redirected(const verdict_rules& rules, py::handle stage_name,
                                        const rewrite_state& rewrite) {
  auto positive = positive_reply(rules, stage_name);
  if (!positive) return std::nullopt;
  policy_result result;
  result.verdict = policy_reply{"redirect", positive->first, std::move(positive->second), std::nullopt,
                                {py::str(rewrite.address)}};
  result.decided_by = py::cast<std::string>(rewrite.by);
  return result;
}

// Hook `hook` gave `value`, in time: the job's Result if it is a verdict the runner applies
// itself (as _StageRun.decide and finish would: a final one, allowed at the stage, from a
// hook that left the transaction as it was), counted in the hook's figures; else null.
// A rewrite (pc.rewrite) is not final: it is counted, kept in `rewrite`, `args` get the new
// recipient, and None comes back (the next hook, please); an accept after it is a redirect.
py::object decided(const verdict_rules& rules, policy_stage stage, py::handle stage_name, py::handle hook,
                   py::handle value, double elapsed, py::handle session, py::handle tx, py::handle message,
                   py::handle envelope, rewrite_state& rewrite, py::tuple& args) {
  const auto& n = name();
  if (Py_TYPE(value.ptr()) != reinterpret_cast<PyTypeObject*>(rules.type.ptr()) || is_notification(stage))
    return {};
  const py::object kind = n.kind.get(value);
  if (!PyUnicode_Check(kind.ptr())) return {};
  PyObject* allowed = PyObject_CallMethodOneArg(value.ptr(), n.allowed_at.ptr(), stage_name.ptr());
  if (allowed == nullptr) PyErr_Clear();  // (Python asks again, and reports it)
  Py_XDECREF(allowed);
  if (allowed != Py_True) return {};
  const py::object observer = n.observed_none.get(hook);
  if (PyUnicode_CompareWithASCIIString(kind.ptr(), "rewrite") == 0) {
    // Not final: the next hooks see the new recipient, and decide on it (_StageRun.decide).
    const py::object addresses = n.addresses.get(value);  // (one pc.Address, as pc.rewrite() makes it)
    if (!PyTuple_Check(addresses.ptr()) || PyTuple_GET_SIZE(addresses.ptr()) != 1) return {};
    if (!observe_verdict(observer, elapsed, "rewrite")) return {};
    rewrite.address = py::reinterpret_borrow<py::object>(PyTuple_GET_ITEM(addresses.ptr(), 0));
    rewrite.by = n.file.get(hook);
    args = py::make_tuple(args[0], rewrite.address);
    return py::none();
  }
  if ((!tx.is_none() || !message.is_none()) && !unchanged(session, tx, message)) return {};
  std::optional<policy_result> result;
  if (rewrite.address && PyUnicode_CompareWithASCIIString(kind.ptr(), "accept") == 0) {
    result = redirected(rules, stage_name, rewrite);  // rewritten, then let through (_StageRun.finish)
  } else {
    result = verdict_result(rules, stage_name, value, n.file.get(hook));
  }
  // Counted last: a hook's call is counted once, here or (on any way out above) in Python.
  if (!result || !observe_verdict(observer, elapsed, py::cast<std::string>(kind))) return {};
  if (!tx.is_none() && n.tx.get(session).is(tx)) n.envelope.set(session, envelope);  // tx still is what the daemon sent
  return py::cast(std::move(*result));
}

}  // namespace

py::object stage_runner::run(py::handle host, const policy_job& job, py::handle job_object, policy_job_ptr* owned,
                             py::handle loop) {
  const bool on_loop = static_cast<bool>(loop);
  const auto& n = name();
  py::object made_job;
  auto python_path = [&]() -> py::object {
    if (!job_object) {
      made_job = py::cast(std::move(*owned));  // (the object stays where it is: `job` still refers to it)
      job_object = made_job;
    }
    return run_in_python(host, job_object, loop);
  };
  const policy_stage stage = job.stage;
  if (stage == policy_stage::auth) return python_path();

  // The job bound to its session, as _StageRun binds it. Python reports a
  // binding that fails (a malformed job): its path does it again, and says so.
  py::object session, tx = py::none(), envelope = py::none(), message = py::none();
  py::tuple args;
  try {
    const py::str id(job.session_id);
    PyObject* found = PyDict_GetItemWithError(sessions_.ptr(), id.ptr());
    if (found == nullptr && PyErr_Occurred()) throw py::error_already_set();
    if (found == nullptr) {
      session = new_session(host, job.generation, connection_tuple(job));
    } else {
      session = py::reinterpret_borrow<py::object>(found);
      if (!same_connection(job, n.connection.get(session).ptr())) {  // the daemon's view moved (HELO, STARTTLS, AUTH)
        py::tuple connection = connection_tuple(job);
        make_->update_connection(n.conn.get(session), connection);
        n.connection.set(session, connection);
      }
    }
    if (!job.has_tx) {
      n.tx.set(session, py::none());
      n.envelope.set(session, py::none());
    } else {
      tx = n.tx.get(session);
      envelope = n.envelope.get(session);  // (None until a stage ends with tx as the daemon sent it)
      const Py_ssize_t common = tx.is_none() || job.fresh_transaction ? -1 : recipients_in_common(job, envelope.ptr());
      const bool checked = job.spf || job.dkim || job.dmarc || job.arc;
      const bool same = !job.fresh_transaction && (common == static_cast<Py_ssize_t>(job.recipients.size()) ||
                                                   (checked && !tx.is_none() && equal(envelope_tuple(job), envelope)));
      if (job.fresh_transaction) {  // tx stays with a hook abandoned at its deadline (python_policy::run)
        envelope = envelope_tuple(job);
        tx = make_->transaction_of(session, envelope, true);
      } else if (!same && common >= 0 && envelope_kept(session, tx)) {  // DATA after RCPT: tx takes the new recipients
        envelope = envelope_with_recipients(envelope.ptr(), job, common);
        make_->add_recipients(session, tx, PyTuple_GET_ITEM(envelope.ptr(), 3), common);
      } else if (!same) {
        envelope = envelope_tuple(job);
        tx = make_->transaction_of(session, envelope);
      }
      n.envelope.set(session, py::none());  // tx is what the daemon sent again only once the stage ends unchanged
    }
    const py::object conn = n.conn.get(session);
    switch (stage) {
      case policy_stage::connect:
      case policy_stage::disconnect: args = py::make_tuple(conn); break;
      case policy_stage::helo: args = py::make_tuple(conn, py::str(job.hostname)); break;
      default:
        if (tx.is_none()) return python_path();  // a transaction stage without one: Python says so
        switch (stage) {
          case policy_stage::mail: args = py::make_tuple(tx, n.sender.get(tx)); break;
          case policy_stage::rcpt:
            args = py::make_tuple(tx, make_->address(address_parts(job.rcpt), params_dict(job.rcpt_params)));
            break;
          case policy_stage::delivered:
            args = py::make_tuple(tx, (*upstream_reply_)(job.reply_code, job.reply_status, job.reply_text));
            break;
          case policy_stage::data: {
            // Read from the daemon when a hook first looks at it.
            const int smtputf8 = PyObject_IsTrue(n.smtputf8.get(tx).ptr());
            if (smtputf8 < 0) throw py::error_already_set();
            message = make_->lazy_message(job.message, smtputf8 == 1, head_whole(job.message));
            args = py::make_tuple(tx, message);
            break;
          }
          default: args = py::make_tuple(tx); break;  // reset
        }
    }
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_Exception)) throw;
    return python_path();
  }

  const py::object engine = n.engine.get(session);
  const py::object timeout_object = n.timeout.get(engine);
  const double timeout = timeout_object.cast<double>();
  PyObject* hooks = PyDict_GetItemWithError(n.hooks.get(engine).ptr(), stage_str(stage).ptr());
  if (hooks == nullptr || !PyList_Check(hooks)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_LookupError, "no hook list for the stage");
    throw py::error_already_set();
  }
  const py::object hook_list = py::reinterpret_borrow<py::object>(hooks);
  if (!on_loop && stepping_loop() != nullptr) (*leave_loop_)();  // a plain hook sees no running loop here

  stage_scope scope(*scope_, session, on_loop);
  if (stage == policy_stage::disconnect) scope.end_with(this, host, session);
  const py::object thread = on_loop ? py::object() : this_thread_key();
  const py::object stage_name = stage_str(stage);
  const verdict_rules rules{*verdict_type_, *positive_replies_};
  rewrite_state rewrite;  // a hook's pc.rewrite(): the recipient the hooks after it see
  auto rewritten = [&]() -> py::object {
    return rewrite.address ? py::object(py::make_tuple(rewrite.address, rewrite.by)) : py::object(py::none());
  };
  auto resume = [&](Py_ssize_t index, py::handle value, bool raised, double start) {
    return (*resume_)(host, session, stage_name, args, message, envelope, index, value, raised, start, rewritten());
  };

  // On the loop: a task goes on from hook `index` (`pending`: what its first step gave, or None).
  auto go_on = [&](Py_ssize_t index, py::object pending) {
    py::object rest =
        (*resume_async_)(host, session, stage_name, args, message, envelope, index, pending, loop, rewritten());
    scope.hand_over();
    return rest;
  };

  const Py_ssize_t count = PyList_GET_SIZE(hook_list.ptr());
  for (Py_ssize_t i = 0; i < count; ++i) {
    const py::object hook = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(hook_list.ptr(), i));
    const py::object function = n.function.get(hook);
    PyObject* value = nullptr;
    double start = 0, elapsed = 0;
    if (on_loop) {
      // Its first step here, as `_drive` takes it (`_core.first_step`).
      if (n.is_async.get(hook).ptr() != Py_True) return go_on(i, py::none());  // a plain hook: a thread of the pool
      start = monotonic();
      const auto coro = py::reinterpret_steal<py::object>(PyObject_Call(function.ptr(), args.ptr(), nullptr));
      if (!coro) return go_on(i, py::make_tuple(raised_exception(), true, start, py::none()));
      const PySendResult sent = PyIter_Send(coro.ptr(), Py_None, &value);
      if (sent == PYGEN_ERROR) return go_on(i, py::make_tuple(raised_exception(), true, start, py::none()));
      if (sent == PYGEN_NEXT) return go_on(i, py::make_tuple(py::reinterpret_steal<py::object>(value), false, start, coro));
      const auto result = py::reinterpret_steal<py::object>(value);
      elapsed = monotonic() - start;
      // A first step that blocked past the deadline (time.sleep in an async
      // hook): its answer is too late, as a plain hook's is; Python says so.
      if (elapsed > timeout) return go_on(i, py::make_tuple(result, false, start, py::none()));
      if (!result.is_none()) {
        py::object made = decided(rules, stage, stage_name, hook, result, elapsed, session, tx, message,
                                  envelope, rewrite, args);
        if (made && made.is_none()) continue;  // a rewrite: on to the next hook
        if (made) return made;
        return go_on(i, py::make_tuple(result, false, start, py::none()));
      }
    } else {
      const py::tuple where = py::make_tuple(hook, timeout_object);  // where report_stuck looks
      if (PyDict_SetItem(running_.ptr(), thread.ptr(), where.ptr()) < 0) throw py::error_already_set();
      start = monotonic();
      {
        hook_deadline_scope limit(start + timeout);
        value = PyObject_Call(function.ptr(), args.ptr(), nullptr);
      }
      elapsed = monotonic() - start;
      py::object exception;
      if (value == nullptr) exception = raised_exception();
      if (PyDict_DelItem(running_.ptr(), thread.ptr()) < 0) {
        Py_XDECREF(value);
        throw py::error_already_set();
      }
      if (value == nullptr) return resume(i, exception, true, start);
      const py::object result = py::reinterpret_steal<py::object>(value);
      if (!result.is_none() && elapsed <= timeout) {
        // The usual verdict, applied here as Python would (decided); anything else is Python's.
        py::object made = decided(rules, stage, stage_name, hook, result, elapsed, session, tx, message, envelope, rewrite, args);
        if (made && made.is_none()) continue;  // a rewrite: on to the next hook
        if (made) return made;
      }
      // A value, or an answer too late (several hooks share the job's deadline): Python takes over.
      if (!result.is_none() || elapsed > timeout) return resume(i, result, false, start);
    }
    observe_none(n.observed_none.get(hook), elapsed);  // (the hook's own time, read once)
  }
  // Every hook said "no opinion" (or rewrote the recipient): the result is "next" (or a redirect to
  // it), unless they changed the transaction.
  if (is_notification(stage) || tx.is_none()) return py::none();
  py::object result;  // null: Python works it out (a changed envelope, say)
  if (envelope_kept(session, tx)) {
    if (!message_kept(tx, message)) {
      if (!rewrite.address) result = fields_on_top(tx, message);
    } else if (rewrite.address) {
      auto redirect = redirected(rules, stage_name, rewrite);
      if (redirect) result = py::cast(std::move(*redirect));
    } else {
      result = py::none();
    }
  }
  if (!result) return resume(count, py::none(), false, 0.0);
  // (Not after the deadline: a later job may have given the session a new tx.)
  if (n.tx.get(session).is(tx)) n.envelope.set(session, envelope);  // tx's envelope still is what the daemon sent
  return result;
}

py::object stage_runner::run_in_python(py::handle host, py::handle job_object, py::handle loop) {
  return loop ? (*drive_)(host, job_object, loop) : (*slow_)(host, job_object);
}

py::object stage_runner::run_async(py::handle host, py::handle job_object, py::handle loop) {
  if (!py::isinstance<policy_job>(job_object)) return run_in_python(host, job_object, loop);
  return run(host, job_object.cast<const policy_job&>(), job_object, nullptr, loop);
}

void define_stage_runner(py::module_& m) {
  py::class_<stage_runner>(m, "StageRunner", "A stage job's hooks, called from C++ (EngineHost.run_plain, and a job's JobCoroutine on the loop).")
      .def(py::init<py::dict, py::dict, py::object, py::object, py::object, py::object, py::object, py::object,
                    py::object, py::object, py::object, py::dict>(),
           py::arg("sessions"), py::arg("running"), py::arg("scope"), py::arg("leave_loop"),
           py::arg("objects"), py::arg("upstream_reply"), py::arg("resume"), py::arg("slow"),
           py::arg("resume_async"), py::arg("drive"), py::arg("verdict_type"), py::arg("positive_replies"))
      .def("new_session", &stage_runner::new_session, py::arg("host"), py::arg("generation"), py::arg("connection"),
           "EngineHost._new_session: a session bound to the generation's engine, in the table, counted.")
      .def("end_session", &stage_runner::end_session, py::arg("host"), py::arg("session"),
           "EngineHost._end_session: the session out of the table, its engine's count down.")
      .def("forget", &stage_runner::forget, py::arg("host"), py::arg("session_ids"),
           "EngineHost.forget: these sessions (by id) out of the table, as end_session; unknown ids skipped.")
      .def(
          "run",
          [](stage_runner& r, py::handle host, py::handle job) {
            if (!py::isinstance<policy_job>(job)) return r.run_in_python(host, job, {});  // a test's stand-in
            return r.run(host, job.cast<const policy_job&>(), job, nullptr);
          },
          py::arg("host"), py::arg("job"),
          "Runs a stage job's hooks here (GIL held): a Result, or None for 'next'. Never raises for a hook's sake.")
      .def(
          "run_async",
          [](stage_runner& r, py::handle host, py::handle job, py::handle loop) { return r.run_async(host, job, loop); },
          py::arg("host"), py::arg("job"), py::arg("loop"),
          "Takes the first step of a loop job's hooks here (the loop running): a Result or None if the job "
          "ended there, else the coroutine that runs the rest (for a task).");
}

}  // namespace portcullis::bindings
