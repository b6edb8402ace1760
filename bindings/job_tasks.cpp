// How the policy loop starts a job's task, in C: `_core.JobStarter` (the
// `start` and `run_here` of `_JobRunner`), its job coroutine, and the
// policy loop's `call_soon`.
//
// A loop job is an asyncio task (a hook that waits needs one, and
// `asyncio.current_task()` must be the job's while its hooks run), but
// most jobs end in the task's first step: the stage runner takes every
// hook's first step in C++ and none waits. What is left per job is the
// task's own bookkeeping, and that was Python's: four frames and a
// coroutine, half of what an async hook cost over a plain one. Here it is
// C calls. The rules are `_JobRunner`'s docstrings; in brief:
//  - the task's first step runs at once, as Python 3.12's eager tasks do:
//    the Task constructor hands its step to the loop's `call_soon`, which
//    gives it back to us (the claim) instead of queueing a Handle;
//  - the job coroutine's first step is the stage runner's `run_async`; a
//    Result or None ends it there, anything else is awaited in it;
//  - a task that finished is answered at once; one that waits is handed to
//    the runner's `_waiting` (its done callback completes the job).
#include <pybind11/pybind11.h>

#include <utility>

#include "bindings/job_tasks.hpp"

#include "bindings/core.hpp"
#include "bindings/pending_error.hpp"
#include "bindings/stage_runner.hpp"

namespace py = pybind11;

namespace portcullis::bindings {
namespace {

// Interned attribute names, made once (under the GIL, at module set-up).
struct names_t {
  PyObject *done, *result, *ready, *scheduled, *task_factory, *create_task, *loop, *name, *callback, *self;
  PyObject *run, *handle_run, *pop, *dispatch, *outcome, *waiting, *complete, *context, *throw_, *close, *runner;
  PyObject *call_soon, *log_destroy_pending, *callbacks, *msg;
};
names_t names{};

PyObject* intern(const char* s) {
  PyObject* o = PyUnicode_InternFromString(s);
  if (o == nullptr) throw py::error_already_set();
  return o;
}

// tp_dealloc of a heap type with GC whose references `Clear` drops.
template <int (*Clear)(PyObject*)>
void gc_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Clear(self);
  type->tp_free(self);
  Py_DECREF(type);
}

// asyncio's Task type and BaseEventLoop.call_soon, looked up once; the
// module keeps them (they live as long as the interpreter).
PyObject* task_type = nullptr;
PyObject* enter_task = nullptr;  // asyncio's _enter_task(loop, task): the loop's current task, as a task's step sets it
PyObject* leave_task = nullptr;  // and _leave_task(loop, task)
PyObject* base_call_soon = nullptr;
PyObject* loop_and_name = nullptr;  // the keyword names ("loop", "name") of Task(coro, loop=..., name=...)
PyObject* just_name = nullptr;      // ("name",): loop.create_task(coro, name=...)
PyObject* just_context = nullptr;   // ("context",): loop.call_soon(callback, arg, context=...)

// The call_soon a Task constructor makes for its first step, claimed while
// `start_task` constructs one (a thread's own: the loop's turn may be on an
// I/O thread).
struct claim {
  PyObject* loop;
  PyObject* step = nullptr;     // the step handed over (a new reference)
  PyObject* context = nullptr;  // its context, or null
};
thread_local claim* claiming = nullptr;

// `_PolicyLoop.call_soon`: a new task's first step goes to the claim;
// anything else (a finalizer the task's allocation set off, say) is queued
// as usual. Whichever task's step is claimed runs at once and the other
// waits its turn: the same outcome, a turn later.
PyObject* claiming_call_soon(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  claim* c = claiming;
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  if (c != nullptr && c->step == nullptr && nargs == 2 && args[0] == c->loop && nkw <= 1) {
    PyObject* context = nullptr;
    bool plain = true;
    if (nkw == 1) {
      PyObject* keyword = PyTuple_GET_ITEM(kwnames, 0);  // (asyncio's own interned "context", mostly)
      plain = keyword == names.context || PyUnicode_Compare(keyword, names.context) == 0;
      context = args[2];
    }
    PyObject* owner = plain ? PyObject_GetAttr(args[1], names.self) : nullptr;
    if (owner == nullptr) PyErr_Clear();
    if (owner != nullptr && Py_TYPE(owner) == reinterpret_cast<PyTypeObject*>(task_type)) {
      Py_DECREF(owner);
      c->step = Py_NewRef(args[1]);
      c->context = context == Py_None ? nullptr : Py_XNewRef(context);
      Py_RETURN_NONE;  // (the constructor drops what it gets back)
    }
    Py_XDECREF(owner);
  }
  return PyObject_Vectorcall(base_call_soon, args, static_cast<size_t>(nargs), kwnames);
}

PyMethodDef claiming_call_soon_def = {
    "call_soon", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(claiming_call_soon)),
    METH_FASTCALL | METH_KEYWORDS,
    "The policy loop's call_soon: a task that JobStarter makes hands its first step back to it."};

// A task's first step run now where the constructor queued it: the loop's
// last ready Handle, if it is the task's (a loop that is not a _PolicyLoop).
bool step_now(PyObject* loop, PyObject* task) {
  const py::object ready = py::reinterpret_steal<py::object>(PyObject_GetAttr(loop, names.ready));
  if (!ready) {
    PyErr_Clear();
    return true;
  }
  const Py_ssize_t n = PyObject_Length(ready.ptr());
  if (n <= 0) {
    PyErr_Clear();
    return true;
  }
  const auto last = py::reinterpret_steal<py::object>(PySequence_GetItem(ready.ptr(), n - 1));
  if (!last) return false;
  const auto callback = py::reinterpret_steal<py::object>(PyObject_GetAttr(last.ptr(), names.callback));
  const auto owner = callback ? py::reinterpret_steal<py::object>(PyObject_GetAttr(callback.ptr(), names.self))
                              : py::object();
  if (!owner) {
    PyErr_Clear();
    return true;
  }
  if (owner.ptr() != task) return true;
  const auto handle = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(ready.ptr(), names.pop));
  if (!handle) return false;
  const auto ran = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(handle.ptr(), names.handle_run));
  return bool(ran);
}

// Whether `loop` makes its tasks its own way: a task factory (a policy set
// one), or a loop that is not asyncio's (no _task_factory).
bool makes_own_tasks(PyObject* loop) {
  PyObject* factory = PyObject_GetAttr(loop, names.task_factory);
  if (factory == nullptr) PyErr_Clear();
  Py_XDECREF(factory);
  return factory != Py_None;
}

// A job's task on `loop`, named `name`, its first step taken: a new reference,
// or null (an error set). `own_tasks`: makes_own_tasks(loop).
PyObject* start_task(PyObject* loop, PyObject* coro, PyObject* name, bool own_tasks) {
  if (own_tasks) {  // its own create_task
    PyObject* args[] = {loop, coro, name};
    PyObject* task = PyObject_VectorcallMethod(names.create_task, args, 2, just_name);
    if (task != nullptr && !step_now(loop, task)) Py_CLEAR(task);
    return task;
  }
  claim c{loop};
  claim* outer = std::exchange(claiming, &c);
  PyObject* args[] = {coro, loop, name};
  PyObject* task = PyObject_Vectorcall(task_type, args, 1, loop_and_name);
  claiming = outer;
  const py::object step = py::reinterpret_steal<py::object>(c.step);
  const py::object context = py::reinterpret_steal<py::object>(c.context);
  if (task == nullptr) return nullptr;
  if (!step) {  // the constructor queued its step some other way: run it from the queue
    if (!step_now(loop, task)) Py_CLEAR(task);
    return task;
  }
  PyObject* ran = context ? PyObject_CallMethodOneArg(context.ptr(), names.run, step.ptr())
                          : PyObject_CallNoArgs(step.ptr());
  if (ran == nullptr) Py_CLEAR(task);
  Py_XDECREF(ran);
  return task;
}

// ---- the mailbox -------------------------------------------------------

// Where an idle carrier's task waits for its next job: a Future-like object
// (asyncio's duck-typed protocol: `_asyncio_future_blocking`, get_loop,
// add_done_callback, result, cancel) that keeps the task's wakeup until the
// starter gives the carrier a job and calls it (`wake_now`), with no trip
// through the loop's queue. One per carrier, reused.
struct job_mailbox {
  PyObject_HEAD
  PyObject* loop;
  PyObject* callback;  // the waiting task's wakeup, or null
  PyObject* context;   // the context it runs in (the task's), or null
  PyObject* cancel_message;  // cancel(msg)'s, for the CancelledError result() raises, or null
  bool blocking;             // _asyncio_future_blocking, as a Future's
  bool cancelled;            // the task was cancelled while it waited here
};

PyTypeObject* job_mailbox_type = nullptr;
PyObject* cancelled_error = nullptr;  // asyncio.CancelledError

PyObject* mailbox_get_loop(PyObject* self, PyObject*) { return Py_NewRef(reinterpret_cast<job_mailbox*>(self)->loop); }

PyObject* mailbox_add_done_callback(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* m = reinterpret_cast<job_mailbox*>(self);
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  const auto is_context = [](PyObject* k) { return k == names.context || PyUnicode_Compare(k, names.context) == 0; };
  if (nargs != 1 || nkw > 1 || (nkw == 1 && !is_context(PyTuple_GET_ITEM(kwnames, 0)))) {
    PyErr_SetString(PyExc_TypeError, "add_done_callback(fn, *, context=None)");
    return nullptr;
  }
  if (m->callback != nullptr || m->cancelled) {
    PyErr_SetString(PyExc_RuntimeError, "a job mailbox has one waiter, its carrier's task");
    return nullptr;
  }
  PyObject* context = nkw == 1 ? args[1] : Py_None;
  m->callback = Py_NewRef(args[0]);
  m->context = context == Py_None ? nullptr : Py_NewRef(context);
  Py_RETURN_NONE;
}

PyObject* mailbox_remove_done_callback(PyObject* self, PyObject* fn) {
  auto* m = reinterpret_cast<job_mailbox*>(self);
  if (m->callback == nullptr) return PyLong_FromLong(0);
  const int same = PyObject_RichCompareBool(m->callback, fn, Py_EQ);
  if (same < 0) return nullptr;
  if (same == 0) return PyLong_FromLong(0);
  Py_CLEAR(m->callback);
  Py_CLEAR(m->context);
  return PyLong_FromLong(1);
}

PyObject* mailbox_result(PyObject* self, PyObject*) {
  const auto* m = reinterpret_cast<job_mailbox*>(self);
  if (m->cancelled) {  // (as a cancelled Future's result(): CancelledError(msg))
    PyObject* error = m->cancel_message != nullptr ? PyObject_CallOneArg(cancelled_error, m->cancel_message)
                                                   : PyObject_CallNoArgs(cancelled_error);
    if (error != nullptr) {
      PyErr_SetObject(cancelled_error, error);
      Py_DECREF(error);
    }
    return nullptr;
  }
  Py_RETURN_NONE;
}

// The waiting task's wakeup handed to the loop's queue, as a Future's
// completion hands it (the loop calls it at its next turn). False, an error
// set, if the loop would not take it.
bool wake_later(job_mailbox* m) {
  const py::object callback = py::reinterpret_steal<py::object>(std::exchange(m->callback, nullptr));
  const py::object context = py::reinterpret_steal<py::object>(std::exchange(m->context, nullptr));
  PyObject* args[] = {m->loop, callback.ptr(), reinterpret_cast<PyObject*>(m), context ? context.ptr() : Py_None};
  PyObject* handle = PyObject_VectorcallMethod(names.call_soon, args, 3, just_context);
  Py_XDECREF(handle);
  return handle != nullptr;
}

// The waiting task cancelled (Task.cancel asks what it waits for first, as
// it asks a Future): its wakeup goes to the loop's queue, and result()
// raises CancelledError into the task, which ends the idle carrier.
PyObject* mailbox_cancel(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* m = reinterpret_cast<job_mailbox*>(self);
  // cancel(msg=None): the C Task passes msg by position, asyncio's Python Task by name.
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  const auto is_msg = [](PyObject* k) { return k == names.msg || PyUnicode_Compare(k, names.msg) == 0; };
  if (nargs + nkw > 1 || (nkw == 1 && !is_msg(PyTuple_GET_ITEM(kwnames, 0)))) {
    PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
    return nullptr;
  }
  if (m->callback == nullptr || m->cancelled) Py_RETURN_FALSE;
  m->cancelled = true;
  if (nargs + nkw == 1 && args[0] != Py_None) m->cancel_message = Py_NewRef(args[0]);
  if (!wake_later(m)) return nullptr;
  Py_RETURN_TRUE;
}

PyObject* mailbox_cancelled(PyObject* self, PyObject*) {
  return PyBool_FromLong(reinterpret_cast<job_mailbox*>(self)->cancelled);
}

PyObject* mailbox_get_blocking(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<job_mailbox*>(self)->blocking);
}

int mailbox_set_blocking(PyObject* self, PyObject* value, void*) {
  const int truth = value == nullptr ? 0 : PyObject_IsTrue(value);
  if (truth < 0) return -1;
  reinterpret_cast<job_mailbox*>(self)->blocking = truth == 1;
  return 0;
}

int mailbox_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* m = reinterpret_cast<job_mailbox*>(self);
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(m->loop);
  Py_VISIT(m->callback);
  Py_VISIT(m->context);
  Py_VISIT(m->cancel_message);
  return 0;
}

int mailbox_clear(PyObject* self) {
  auto* m = reinterpret_cast<job_mailbox*>(self);
  Py_CLEAR(m->loop);
  Py_CLEAR(m->callback);
  Py_CLEAR(m->context);
  Py_CLEAR(m->cancel_message);
  return 0;
}

PyMethodDef mailbox_methods[] = {
    {"get_loop", mailbox_get_loop, METH_NOARGS, "get_loop(): the loop."},
    {"add_done_callback",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mailbox_add_done_callback)),
     METH_FASTCALL | METH_KEYWORDS, "add_done_callback(fn, *, context=None): the waiting task's wakeup, kept."},
    {"remove_done_callback", mailbox_remove_done_callback, METH_O, "remove_done_callback(fn): 1 if it was kept."},
    {"result", mailbox_result, METH_NOARGS, "result(): None, or CancelledError once cancelled."},
    {"cancel", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mailbox_cancel)),
     METH_FASTCALL | METH_KEYWORDS, "cancel(msg=None): the waiting task woken to be cancelled."},
    {"cancelled", mailbox_cancelled, METH_NOARGS, "cancelled(): whether its task was cancelled here."},
    {"done", mailbox_cancelled, METH_NOARGS, "done(): only once cancelled (a job is handed over, not completed)."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef mailbox_getset[] = {
    {"_asyncio_future_blocking", mailbox_get_blocking, mailbox_set_blocking, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot mailbox_slots[] = {
    {Py_tp_doc, const_cast<char*>("Where an idle JobCoroutine's task waits for its next job (Future-like).")},
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<mailbox_clear>)},
    {Py_tp_traverse, reinterpret_cast<void*>(mailbox_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(mailbox_clear)},
    {Py_tp_methods, mailbox_methods},
    {Py_tp_getset, mailbox_getset},
    {0, nullptr}};

PyType_Spec mailbox_spec = {"_portcullis_core.JobMailbox", sizeof(job_mailbox), 0,
                            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                            mailbox_slots};

job_mailbox* new_mailbox(PyObject* loop) {
  auto* m = PyObject_GC_New(job_mailbox, job_mailbox_type);
  if (m == nullptr) return nullptr;
  m->loop = Py_NewRef(loop);
  m->callback = nullptr;
  m->context = nullptr;
  m->cancel_message = nullptr;
  m->blocking = false;
  m->cancelled = false;
  PyObject_GC_Track(m);
  return m;
}

// Leaves `context` (entered by the caller), keeping any error pending.
void leave(PyObject* context) {
  const pending_error_kept kept;
  if (PyContext_Exit(context) < 0) PyErr_WriteUnraisable(context);
}

// The waiting task's wakeup called now, in its context, as the loop would
// call a Future's callback: the task takes its next step here. False, an
// error set, if it could not be called.
bool wake_now(job_mailbox* m) {
  const py::object callback = py::reinterpret_steal<py::object>(std::exchange(m->callback, nullptr));
  const py::object context = py::reinterpret_steal<py::object>(std::exchange(m->context, nullptr));
  if (context && PyContext_Enter(context.ptr()) < 0) return false;
  PyObject* woken = PyObject_CallOneArg(callback.ptr(), reinterpret_cast<PyObject*>(m));
  if (context) leave(context.ptr());
  Py_XDECREF(woken);
  return woken != nullptr;
}

// ---- the job coroutine -------------------------------------------------

// A loop stage job's coroutine, and the carrier of the jobs after it: a send
// with a job loaded runs the stage runner's first steps (`run_async`), in a
// context of the job's own (a copy of the task's, as a task of its own would
// have). A Result or None ends the job there: the coroutine keeps it for
// the starter (`outcome`) and waits on its mailbox, idle, so that the next
// job runs in the same task, woken (asyncio's Task costs more to make and
// free than a no-op hook's whole job). An awaitable it gets back (what is
// left: a hook that waits, a value Python must judge) is awaited in it,
// every send and throw passed through; the task is that job's from then on,
// and ends with it.
enum class carrier : unsigned char {
  loaded,    // a job to take at the next send
  busy,      // its first steps run
  idle,      // waits on its mailbox for the next job (the last one's result in `outcome`)
  carrying,  // a job that waits: `rest` and `context` are its
  handing,   // its first steps, taken outside the task's step, did not end the job: `handed` for the task's next step
  over,
};

struct job_coroutine {
  PyObject_HEAD
  stage_runner* runner;  // kept alive by `runner_object`
  PyObject* runner_object;
  PyObject* host;
  PyObject* loop;
  PyObject* job;  // the job's Python object, or null: then `owned`, the daemon's own (no Python object made for it)
  policy_job* owned;
  PyObject* rest;     // the iterator of what is left of a job that waits
  PyObject* context;  // that job's contextvars.Context
  PyObject* outcome;  // the result of the job that ended in its first steps, until the starter takes it
  job_mailbox* mailbox;
  // Handing: what the first steps gave (a value yielded, or returned: `handed`; an error: `error_*`),
  // for the task's next step to give asyncio (step_in_place).
  PySendResult handed_as;
  PyObject* handed;
  PyObject *error_type, *error_value, *error_traceback;
  carrier state;
  // Set by the starter around the step it takes itself (the first, or a
  // wakeup): only a job that ends there may leave the task waiting for the
  // next one. A first step the loop takes later (a task factory's task whose
  // step the starter could not take) ends the task with its job, as a task
  // of its own would: the job is completed when the task is done.
  bool may_idle;
};

PyTypeObject* job_coroutine_type = nullptr;

void drop_job(job_coroutine* c) {
  Py_CLEAR(c->job);
  delete std::exchange(c->owned, nullptr);
}

void drop_handed(job_coroutine* c) {
  Py_CLEAR(c->handed);
  Py_CLEAR(c->error_type);
  Py_CLEAR(c->error_value);
  Py_CLEAR(c->error_traceback);
}

// The task's step after step_in_place handed it the job: what the first steps gave, given now.
PySendResult take_handed(job_coroutine* c, PyObject** out) {
  const PySendResult handed = c->handed_as;
  c->state = handed == PYGEN_NEXT ? carrier::carrying : carrier::over;
  if (handed == PYGEN_ERROR) {
    PyErr_Restore(std::exchange(c->error_type, nullptr), std::exchange(c->error_value, nullptr),
                  std::exchange(c->error_traceback, nullptr));
    return PYGEN_ERROR;
  }
  *out = std::exchange(c->handed, nullptr);
  return handed;
}

// The stage runner's first steps of the loaded job: what `run_async` gives.
py::object first_steps(job_coroutine* c) {
  if (c->job != nullptr) return c->runner->run_async(c->host, c->job, c->loop);
  policy_job_ptr job(std::exchange(c->owned, nullptr));
  const policy_job& fields = *job;  // (it stays put if the runner hands `job` to Python)
  return c->runner->run(c->host, fields, py::handle(), &job, c->loop);
}

PySendResult wait_for_next_job(job_coroutine* c, PyObject** out) {
  c->state = carrier::idle;
  c->mailbox->blocking = true;  // (what Future.__await__ sets before it yields itself)
  *out = Py_NewRef(reinterpret_cast<PyObject*>(c->mailbox));
  return PYGEN_NEXT;
}

// The job ended in its first steps with `result` (a new reference): kept for
// the starter while the task waits for the next job, or the task's result.
PySendResult job_ended(job_coroutine* c, PyObject* result, PyObject** out) {
  if (!c->may_idle) {
    c->state = carrier::over;
    *out = result;
    return PYGEN_RETURN;
  }
  Py_XSETREF(c->outcome, result);
  return wait_for_next_job(c, out);
}

PySendResult take_job(job_coroutine* c, PyObject** out) {
  c->state = carrier::busy;
  const py::object context = py::reinterpret_steal<py::object>(PyContext_CopyCurrent());
  if (!context || PyContext_Enter(context.ptr()) < 0) {
    drop_job(c);
    c->state = carrier::over;
    return PYGEN_ERROR;
  }
  // The job goes before an error is set again: its release may run Python code.
  PyObject* work = nullptr;
  try {
    work = first_steps(c).release().ptr();
    drop_job(c);
  } catch (py::error_already_set& e) {
    drop_job(c);
    e.restore();
  } catch (const std::exception& e) {
    drop_job(c);
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  PyAsyncMethods* async = work == nullptr ? nullptr : Py_TYPE(work)->tp_as_async;
  if (work != nullptr && (async == nullptr || async->am_await == nullptr)) {  // a Result, or None: the job ended here
    leave(context.ptr());
    return job_ended(c, work, out);
  }
  PySendResult sent = PYGEN_ERROR;
  if (work != nullptr) {
    c->rest = async->am_await(work);
    Py_DECREF(work);
    if (c->rest != nullptr) sent = PyIter_Send(c->rest, Py_None, out);
  }
  leave(context.ptr());
  if (sent == PYGEN_NEXT) {  // it waits: the task is this job's now
    c->context = Py_NewRef(context.ptr());
    c->state = carrier::carrying;
    return sent;
  }
  Py_CLEAR(c->rest);
  if (sent == PYGEN_RETURN) return job_ended(c, *out, out);  // Python's part of it ended without waiting
  c->state = carrier::over;
  return PYGEN_ERROR;
}

PySendResult job_send(PyObject* self, PyObject* arg, PyObject** out) {
  auto* c = reinterpret_cast<job_coroutine*>(self);
  switch (c->state) {
    case carrier::loaded: return take_job(c, out);
    case carrier::carrying: {
      if (PyContext_Enter(c->context) < 0) return PYGEN_ERROR;
      const PySendResult sent = PyIter_Send(c->rest, arg, out);
      leave(c->context);
      if (sent != PYGEN_NEXT) {
        Py_CLEAR(c->rest);
        Py_CLEAR(c->context);
        c->state = carrier::over;
      }
      return sent;
    }
    case carrier::handing: return take_handed(c, out);
    case carrier::idle:  // woken with no job: the starter ends it, with the last job's result if it left one
      c->state = carrier::over;
      *out = c->outcome != nullptr ? std::exchange(c->outcome, nullptr) : Py_NewRef(Py_None);
      return PYGEN_RETURN;
    case carrier::busy:
      PyErr_SetString(PyExc_RuntimeError, "coroutine already executing");
      return PYGEN_ERROR;
    case carrier::over: break;
  }
  PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
  return PYGEN_ERROR;
}

// A send's outcome as a method returns it: the value yielded, or StopIteration carrying the value returned.
PyObject* as_method_result(PySendResult sent, PyObject* value) {
  if (sent == PYGEN_NEXT) return value;
  if (sent == PYGEN_RETURN) {
    if (value == Py_None) {
      PyErr_SetNone(PyExc_StopIteration);
    } else {
      PyObject* stop = PyObject_CallOneArg(PyExc_StopIteration, value);
      if (stop != nullptr) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
      }
    }
    Py_DECREF(value);
  }
  return nullptr;
}

PyObject* job_send_method(PyObject* self, PyObject* arg) {
  PyObject* value = nullptr;
  const PySendResult sent = job_send(self, arg, &value);  // (before `value` is read: an argument list has no order)
  return as_method_result(sent, value);
}

PyObject* job_next(PyObject* self) {
  PyObject* value = nullptr;
  const PySendResult sent = job_send(self, Py_None, &value);
  if (sent == PYGEN_RETURN) return as_method_result(sent, value);
  return sent == PYGEN_NEXT ? value : nullptr;
}

PyObject* job_throw(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* c = reinterpret_cast<job_coroutine*>(self);
  if (nargs < 1 || nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
    return nullptr;
  }
  if (c->state == carrier::busy) {
    PyErr_SetString(PyExc_RuntimeError, "coroutine already executing");
    return nullptr;
  }
  drop_job(c);
  if (c->state == carrier::handing) {  // a cancel while the first steps ran queued the task's wakeup: it throws
    if (c->handed_as == PYGEN_NEXT) {   // into what the job awaits (which a task's must_cancel would cancel)
      Py_CLEAR(c->handed);
      c->state = carrier::carrying;
    } else if (c->handed_as == PYGEN_ERROR) {  // the job failed: its error, as the task's own step would have raised
      PyObject* ignored = nullptr;
      take_handed(c, &ignored);
      return nullptr;
    } else {
      drop_handed(c);
      c->state = carrier::over;
    }
  }
  if (c->state != carrier::carrying) {  // not started (cancelled before its first step), idle (its task
    c->state = carrier::over;          // cancelled while it waited for a job), or over: raised here
    PyObject* kind = args[0];
    if (PyExceptionInstance_Check(kind)) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(kind)), kind);
    } else if (PyExceptionClass_Check(kind)) {
      PyErr_SetObject(kind, nargs > 1 ? args[1] : Py_None);
    } else {
      PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
    }
    return nullptr;
  }
  const py::object rest = py::reinterpret_borrow<py::object>(c->rest);
  const py::object context = py::reinterpret_borrow<py::object>(c->context);
  const py::object thrower = py::reinterpret_steal<py::object>(PyObject_GetAttr(rest.ptr(), names.throw_));
  if (!thrower || PyContext_Enter(context.ptr()) < 0) return nullptr;
  PyObject* value = PyObject_Vectorcall(thrower.ptr(), args, static_cast<size_t>(nargs), nullptr);
  leave(context.ptr());
  if (value == nullptr && c->rest == rest.ptr()) {  // it returned or raised: over
    Py_CLEAR(c->rest);
    Py_CLEAR(c->context);
    c->state = carrier::over;
  }
  return value;
}

PyObject* job_close(PyObject* self, PyObject*) {
  auto* c = reinterpret_cast<job_coroutine*>(self);
  if (c->state == carrier::busy) {
    PyErr_SetString(PyExc_RuntimeError, "coroutine already executing");
    return nullptr;
  }
  c->state = carrier::over;
  drop_job(c);
  drop_handed(c);
  Py_CLEAR(c->outcome);
  const py::object context = py::reinterpret_steal<py::object>(std::exchange(c->context, nullptr));
  PyObject* rest = std::exchange(c->rest, nullptr);
  if (rest == nullptr) Py_RETURN_NONE;
  PyObject* closer = PyObject_GetAttr(rest, names.close);
  Py_DECREF(rest);
  if (closer == nullptr) {  // an iterator with no close(): nothing to end
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  if (context && PyContext_Enter(context.ptr()) < 0) {
    Py_DECREF(closer);
    return nullptr;
  }
  PyObject* closed = PyObject_CallNoArgs(closer);
  if (context) leave(context.ptr());
  Py_DECREF(closer);
  return closed;
}

PyObject* job_await(PyObject* self) { return Py_NewRef(self); }

int job_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* c = reinterpret_cast<job_coroutine*>(self);
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(c->runner_object);
  Py_VISIT(c->host);
  Py_VISIT(c->job);
  Py_VISIT(c->loop);
  Py_VISIT(c->rest);
  Py_VISIT(c->context);
  Py_VISIT(c->outcome);
  Py_VISIT(c->handed);
  Py_VISIT(c->error_type);
  Py_VISIT(c->error_value);
  Py_VISIT(c->error_traceback);
  Py_VISIT(reinterpret_cast<PyObject*>(c->mailbox));
  return 0;
}

int job_clear(PyObject* self) {
  auto* c = reinterpret_cast<job_coroutine*>(self);
  drop_job(c);
  Py_CLEAR(c->host);
  Py_CLEAR(c->loop);
  Py_CLEAR(c->rest);
  Py_CLEAR(c->context);
  Py_CLEAR(c->outcome);
  drop_handed(c);
  Py_CLEAR(c->mailbox);
  Py_CLEAR(c->runner_object);
  c->runner = nullptr;
  c->state = carrier::over;
  return 0;
}


// What a task's repr names it by (asyncio reads __qualname__): "JobCoroutine()".
PyObject* job_qualname(PyObject*, void*) { return PyUnicode_FromString("JobCoroutine"); }

PyGetSetDef job_getset[] = {{"__qualname__", job_qualname, nullptr, nullptr, nullptr},
                            {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMethodDef job_methods[] = {
    {"send", job_send_method, METH_O, "send(value): the next step, as a coroutine's send."},
    {"throw", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(job_throw)), METH_FASTCALL,
     "throw(exception): raised in what the job awaits."},
    {"close", job_close, METH_NOARGS, "close(): ends what the job awaits."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot job_slots[] = {
    {Py_tp_doc, const_cast<char*>("A loop job's coroutine (what _JobRunner's task runs): the stage runner's first steps, "
                                  "then whatever is left, awaited; idle between jobs that end in their first steps.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<job_clear>)},
    {Py_tp_traverse, reinterpret_cast<void*>(job_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(job_clear)},
    {Py_tp_iternext, reinterpret_cast<void*>(job_next)},
    {Py_tp_methods, job_methods},
    {Py_tp_getset, job_getset},
    {Py_am_await, reinterpret_cast<void*>(job_await)},
    {Py_am_send, reinterpret_cast<void*>(job_send)},
    {0, nullptr}};

PyType_Spec job_spec = {"_portcullis_core.JobCoroutine", sizeof(job_coroutine), 0,
                        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION, job_slots};

// ---- the stepping thread's loop ------------------------------------------

// What a daemon I/O thread that steps the loop's tasks (run_here) has
// entered: the loop. Such a thread has what the loop's own thread has while
// it runs (the running loop, the loop's async generator hooks; _enter_loop
// sets them) and keeps them between jobs, as setting the running loop
// costs a getpid() system call in Python 3.11; a plain job drops them
// (_leave_loop). Per thread, in C: read at every job, where a
// threading.local's attribute cost a few hundred instructions. A new thread
// (a spare) starts with none; the reference a thread holds when it ends is
// never dropped (no GIL then): the one policy loop outlives its threads.
thread_local PyObject* stepping = nullptr;

PyObject* stepping_get(PyObject*, void*) { return Py_NewRef(stepping != nullptr ? stepping : Py_None); }

int stepping_set(PyObject*, PyObject* value, void*) {
  Py_XSETREF(stepping, value == nullptr || value == Py_None ? nullptr : Py_NewRef(value));
  return 0;
}

PyGetSetDef stepping_getset[] = {
    {"loop", stepping_get, stepping_set, "The loop this thread steps tasks of, or None (this thread's own).", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot stepping_slots[] = {
    {Py_tp_doc, const_cast<char*>("Stepping(): .loop, the loop whose tasks this thread steps (per thread).")},
    {Py_tp_getset, stepping_getset},
    {0, nullptr}};

PyType_Spec stepping_spec = {"_portcullis_core.Stepping", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT, stepping_slots};

// ---- the starter -------------------------------------------------------

struct job_starter {
  PyObject_HEAD
  PyObject* runner;  // the _JobRunner (its outcome, _waiting, complete)
  PyObject* loop;
  PyObject* host;
  stage_runner* stages;  // host._runner's, kept alive by `stages_object`
  PyObject* stages_object;
  PyObject* name;  // the tasks' name
  PyObject* enter_loop;  // _engine._enter_loop(loop)
  // The task whose carrier (a JobCoroutine) waits for the next job, or null.
  PyObject* idle_task;
  PyObject* idle_carrier;
};

PyTypeObject* job_starter_type = nullptr;

// A job's coroutine, for its Python object (`job`) or else the daemon's own (`*owned`, taken).
// A job's coroutine (the carrier of the jobs after it), the job loaded: its
// Python object `job`, or else the daemon's own (`*owned`, taken).
job_coroutine* new_job_coroutine(job_starter* s, PyObject* job, policy_job_ptr* owned) {
  job_mailbox* mailbox = new_mailbox(s->loop);
  if (mailbox == nullptr) return nullptr;
  auto* c = PyObject_GC_New(job_coroutine, job_coroutine_type);
  if (c == nullptr) {
    Py_DECREF(mailbox);
    return nullptr;
  }
  c->runner = s->stages;
  c->runner_object = Py_NewRef(s->stages_object);
  c->host = Py_NewRef(s->host);
  c->loop = Py_NewRef(s->loop);
  c->job = Py_XNewRef(job);
  c->owned = job == nullptr ? owned->release() : nullptr;
  c->rest = nullptr;
  c->context = nullptr;
  c->outcome = nullptr;
  c->handed_as = PYGEN_NEXT;
  c->handed = c->error_type = c->error_value = c->error_traceback = nullptr;
  c->mailbox = mailbox;
  c->state = carrier::loaded;
  c->may_idle = false;
  PyObject_GC_Track(c);
  return c;
}

// Whether the starter's idle carrier can take a job now: its task waits on
// the mailbox (not cancelled there, not ended).
bool idle_ready(const job_starter* s) {
  const auto* c = reinterpret_cast<const job_coroutine*>(s->idle_carrier);
  return c != nullptr && c->state == carrier::idle && c->mailbox->callback != nullptr && !c->mailbox->cancelled;
}

// Whether a carrier's task, destroyed while it waits, says so (asyncio logs a
// pending task destroyed): not while it waits for a job, as for a job's.
// (Best effort: a task factory's own tasks may have no such attribute.)
void log_if_destroyed_pending(PyObject* task, bool log) {
  if (PyObject_SetAttr(task, names.log_destroy_pending, log ? Py_True : Py_False) < 0) PyErr_Clear();
}

// The idle carrier's loaded job's first steps taken here, as the task's own
// step would take them (in the task's context, the task the loop's current
// one), without waking the task, which goes on waiting on its mailbox:
// asyncio's step (the wakeup, result(), the mailbox's protocol again) cost
// more than a no-op hook. A job that does not end there is handed to the
// task (woken now, or by the wakeup a cancel queued meanwhile), whose step
// gives asyncio what the job awaits, or its error, as if it had taken the
// first steps itself. False, an error set, if the task could not be entered
// or woken (its wakeup is then spent).
bool step_in_place(job_starter* s, job_coroutine* c, PyObject* task) {
  job_mailbox* m = c->mailbox;
  if (m->context == nullptr) return wake_now(m);  // (a wakeup kept with no context: the task's step enters none)
  const py::object context = py::reinterpret_borrow<py::object>(m->context);  // (a cancel in the job may drop the mailbox's)
  if (PyContext_Enter(context.ptr()) < 0) return false;
  PyObject* args[] = {s->loop, task};
  PyObject* entered = PyObject_Vectorcall(enter_task, args, 2, nullptr);
  if (entered == nullptr) {  // (another task is the loop's current one: a start from a running task)
    leave(context.ptr());
    return false;
  }
  Py_DECREF(entered);
  PyObject* out = nullptr;
  const PySendResult sent = take_job(c, &out);
  {
    const pending_error_kept kept;
    PyObject* left = PyObject_Vectorcall(leave_task, args, 2, nullptr);
    if (left == nullptr) PyErr_WriteUnraisable(task);
    Py_XDECREF(left);
  }
  leave(context.ptr());
  if (sent == PYGEN_NEXT && c->state == carrier::idle) {  // it ended there: the task waits on as it was
    Py_DECREF(out);       // (the mailbox, which the carrier gives a step of the task's)
    m->blocking = false;  // (as the task's step leaves it)
    return true;
  }
  c->state = carrier::handing;
  c->handed_as = sent;
  if (sent == PYGEN_ERROR) {
    PyErr_Fetch(&c->error_type, &c->error_value, &c->error_traceback);
  } else {
    c->handed = out;
  }
  return m->callback == nullptr || wake_now(m);
}

// Whether something besides the starter holds `task`, whose job just ended
// in its first steps, or waits for its end: a hook kept asyncio.current_task(),
// a timer will cancel it, an asyncio.timeout() is left armed on it, a done
// callback was added. Such a task is not given to the next job (another
// session's, maybe), which a cancel meant for the old one would then hit:
// it ends now, as a task of the job's own would have. -1, an error set, if
// its callbacks cannot be read. Counted: start_job's reference, the wakeup
// the mailbox keeps (bound to the task), and the starter's if it is idle_task.
int kept_elsewhere(const job_starter* s, PyObject* task) {
  const Py_ssize_t ours = 2 + (s->idle_task == task ? 1 : 0);
  if (Py_REFCNT(task) > ours) return 1;
  const auto callbacks = py::reinterpret_steal<py::object>(PyObject_GetAttr(task, names.callbacks));
  if (!callbacks) return -1;
  if (callbacks.ptr() == Py_None) return 0;  // (the C Task's, when it has none)
  const Py_ssize_t n = PyObject_Length(callbacks.ptr());
  return n < 0 ? -1 : n > 0 ? 1 : 0;
}

// `_JobRunner.start`: (True, the job's result) if the job ended in its first
// steps, else (False, the task), handed to the runner's `_waiting`.
// The job is `job` (a Python object: a stage job, or a reload's dict) or,
// if null, the daemon's `*owned`. A stage job runs in the idle carrier's
// task if there is one, else in a new task whose carrier stays, idle, for
// the next job if this one ends in its first steps. Sets `*done`; returns a
// new reference (the result or the task), or null.
PyObject* start_job(job_starter* s, PyObject* job_id, PyObject* job, policy_job_ptr* owned, bool* done) {
  py::object task, coro;
  job_coroutine* c = nullptr;
  if (job != nullptr && PyDict_Check(job)) {  // a reload or a release: a task of its own, host.dispatch's
    coro = py::reinterpret_steal<py::object>(PyObject_CallMethodObjArgs(s->host, names.dispatch, job, s->loop, nullptr));
    if (!coro) return nullptr;
    task = py::reinterpret_steal<py::object>(start_task(s->loop, coro.ptr(), s->name, makes_own_tasks(s->loop)));
    if (!task) return nullptr;
  } else if (idle_ready(s)) {
    task = py::reinterpret_borrow<py::object>(s->idle_task);
    coro = py::reinterpret_borrow<py::object>(s->idle_carrier);
    c = reinterpret_cast<job_coroutine*>(coro.ptr());
    c->job = Py_XNewRef(job);
    c->owned = job == nullptr ? owned->release() : nullptr;
    c->state = carrier::loaded;
    c->may_idle = true;
    const bool stepped = step_in_place(s, c, task.ptr());
    c->may_idle = false;
    if (!stepped) {  // (the carrier is not used again)
      drop_job(c);
      c->state = carrier::over;
      Py_CLEAR(s->idle_task);
      Py_CLEAR(s->idle_carrier);
      return nullptr;
    }
  } else {
    c = new_job_coroutine(s, job, owned);
    if (c == nullptr) return nullptr;
    coro = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(c));
    const bool own_tasks = makes_own_tasks(s->loop);
    c->may_idle = !own_tasks;  // (a factory is asked for each job's task: its tasks carry one)
    task = py::reinterpret_steal<py::object>(start_task(s->loop, coro.ptr(), s->name, own_tasks));
    c->may_idle = false;
    if (!task) return nullptr;
  }
  if (c != nullptr && c->state == carrier::idle) {  // it ended in its first steps: the carrier waits for the next
    *done = true;
    PyObject* outcome = std::exchange(c->outcome, nullptr);
    if (outcome == nullptr) outcome = Py_NewRef(Py_None);
    const int kept = c->mailbox->callback != nullptr ? kept_elsewhere(s, task.ptr()) : 0;
    if (kept == 0) {
      if (s->idle_task != task.ptr()) {
        log_if_destroyed_pending(task.ptr(), false);
        Py_XSETREF(s->idle_task, Py_NewRef(task.ptr()));
        Py_XSETREF(s->idle_carrier, Py_NewRef(coro.ptr()));
      }
      return outcome;
    }
    // Held or watched (or, -1, unknown): it ends here, its result the job's. The job is answered whatever becomes of
    // the task (a wakeup that fails leaves it pending, and asyncio says so when it goes).
    if (kept < 0) PyErr_WriteUnraisable(task.ptr());
    if (s->idle_task == task.ptr()) {
      Py_CLEAR(s->idle_task);
      Py_CLEAR(s->idle_carrier);
      log_if_destroyed_pending(task.ptr(), true);
    }
    c->outcome = Py_NewRef(outcome);
    if (!wake_now(c->mailbox)) PyErr_WriteUnraisable(task.ptr());
    return outcome;
  }
  if (c != nullptr && s->idle_task == task.ptr()) {  // the job waits, or the task ended: it is not idle any more
    Py_CLEAR(s->idle_task);
    Py_CLEAR(s->idle_carrier);
    log_if_destroyed_pending(task.ptr(), true);
  }
  const auto finished = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(task.ptr(), names.done));
  if (!finished) return nullptr;
  *done = finished.ptr() == Py_True;
  if (!*done) {
    PyObject* waiting = PyObject_CallMethodObjArgs(s->runner, names.waiting, job_id, task.ptr(), nullptr);
    if (waiting == nullptr) return nullptr;
    Py_DECREF(waiting);
    return Py_NewRef(task.ptr());
  }
  PyObject* result = PyObject_CallMethodNoArgs(task.ptr(), names.result);
  if (result != nullptr) return result;
  PyErr_Clear();  // cancelled, or it raised: the runner says what that makes
  return PyObject_CallMethodOneArg(s->runner, names.outcome, task.ptr());
}

// `_JobRunner` stops: the idle carrier's task ends at the loop's next turn
// (woken with no job), so that no task is left pending on the loop. (Not
// now: the runner's own task is running, and a task steps only between.)
PyObject* starter_end_idle(PyObject* self, PyObject*) {
  auto* s = reinterpret_cast<job_starter*>(self);
  const bool ready = idle_ready(s);
  const py::object task = py::reinterpret_steal<py::object>(std::exchange(s->idle_task, nullptr));
  const py::object coro = py::reinterpret_steal<py::object>(std::exchange(s->idle_carrier, nullptr));
  if (ready && !wake_later(reinterpret_cast<job_coroutine*>(coro.ptr())->mailbox)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* starter_start(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "start(job_id, job)");
    return nullptr;
  }
  bool done = false;
  PyObject* out = start_job(reinterpret_cast<job_starter*>(self), args[0], args[1], nullptr, &done);
  if (out == nullptr) return nullptr;
  PyObject* pair = PyTuple_Pack(2, done ? Py_True : Py_False, out);
  Py_DECREF(out);
  return pair;
}

Py_ssize_t timers_of(PyObject* loop) {
  PyObject* scheduled = PyObject_GetAttr(loop, names.scheduled);
  if (scheduled == nullptr) return -1;
  const Py_ssize_t n = PyObject_Length(scheduled);
  Py_DECREF(scheduled);
  return n;
}

// `_JobRunner.run_here`: a job's first step on the calling daemon I/O thread,
// which holds the loop's turn. The job's result if its task finished and
// left the loop nothing to do; else whether the loop's thread must look now.
// The job as in start_job.
PyObject* run_here(job_starter* s, PyObject* job_id, PyObject* job, policy_job_ptr* owned) {
  PyObject* loop = s->loop;
  const Py_ssize_t timers = timers_of(loop);
  if (timers < 0) return nullptr;
  if (stepping != loop) {
    PyObject* ok = PyObject_CallOneArg(s->enter_loop, loop);
    if (ok == nullptr) return nullptr;
    Py_DECREF(ok);
  }
  bool done = false;
  PyObject* out = start_job(s, job_id, job, owned, &done);
  if (out == nullptr) return nullptr;
  py::object result = py::reinterpret_steal<py::object>(out);
  PyObject* ready = PyObject_GetAttr(loop, names.ready);
  if (ready == nullptr) return nullptr;
  const int pending = PyObject_IsTrue(ready);
  Py_DECREF(ready);
  const Py_ssize_t timers_now = pending == 0 ? timers_of(loop) : timers;
  if (pending < 0 || timers_now < 0) return nullptr;
  const bool wake = pending == 1 || timers_now != timers;
  if (!done) return Py_NewRef(wake ? Py_True : Py_False);  // it waits: it completes the job when done
  if (!wake) return result.release().ptr();
  PyObject* completed = PyObject_CallMethodObjArgs(s->runner, names.complete, job_id, result.ptr(), nullptr);
  if (completed == nullptr) return nullptr;
  Py_DECREF(completed);
  Py_RETURN_TRUE;
}

PyObject* starter_run_here(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "run_here(job_id, job)");
    return nullptr;
  }
  return run_here(reinterpret_cast<job_starter*>(self), args[0], args[1], nullptr);
}

PyObject* starter_start_task(PyObject* self, PyObject* coro) {
  auto* s = reinterpret_cast<job_starter*>(self);
  return start_task(s->loop, coro, s->name, makes_own_tasks(s->loop));
}

PyObject* starter_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject *runner, *loop, *host, *name, *enter_loop;
  static const char* keywords[] = {"runner", "loop", "host", "name", "enter_loop", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOUO:JobStarter", const_cast<char**>(keywords), &runner, &loop,
                                   &host, &name, &enter_loop)) {
    return nullptr;
  }
  PyObject* stages_object = PyObject_GetAttr(host, names.runner);
  if (stages_object == nullptr) return nullptr;
  stage_runner* stages = nullptr;
  try {
    stages = &py::handle(stages_object).cast<stage_runner&>();
  } catch (const py::cast_error&) {
    Py_DECREF(stages_object);
    PyErr_SetString(PyExc_TypeError, "JobStarter: host._runner is not a StageRunner");
    return nullptr;
  }
  auto* s = reinterpret_cast<job_starter*>(type->tp_alloc(type, 0));
  if (s == nullptr) {
    Py_DECREF(stages_object);
    return nullptr;
  }
  s->runner = Py_NewRef(runner);
  s->loop = Py_NewRef(loop);
  s->host = Py_NewRef(host);
  s->stages = stages;
  s->stages_object = stages_object;
  s->name = Py_NewRef(name);
  s->enter_loop = Py_NewRef(enter_loop);
  s->idle_task = nullptr;
  s->idle_carrier = nullptr;
  return reinterpret_cast<PyObject*>(s);
}

int starter_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* s = reinterpret_cast<job_starter*>(self);
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(s->runner);
  Py_VISIT(s->loop);
  Py_VISIT(s->host);
  Py_VISIT(s->stages_object);
  Py_VISIT(s->name);
  Py_VISIT(s->enter_loop);
  Py_VISIT(s->idle_task);
  Py_VISIT(s->idle_carrier);
  return 0;
}

int starter_clear(PyObject* self) {
  auto* s = reinterpret_cast<job_starter*>(self);
  Py_CLEAR(s->runner);
  Py_CLEAR(s->loop);
  Py_CLEAR(s->host);
  Py_CLEAR(s->stages_object);
  s->stages = nullptr;
  Py_CLEAR(s->name);
  Py_CLEAR(s->enter_loop);
  Py_CLEAR(s->idle_task);
  Py_CLEAR(s->idle_carrier);
  return 0;
}


// A starter that was cleared (a cycle broken by the collector) starts
// nothing: true, with the error set.
bool cleared(PyObject* self) {
  if (reinterpret_cast<job_starter*>(self)->stages != nullptr) return false;
  PyErr_SetString(PyExc_RuntimeError, "the job starter was cleared");
  return true;
}

template <PyObject* (*F)(PyObject*, PyObject* const*, Py_ssize_t)>
PyObject* when_alive(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return cleared(self) ? nullptr : F(self, args, nargs);
}

PyObject* starter_start_task_alive(PyObject* self, PyObject* coro) {
  return cleared(self) ? nullptr : starter_start_task(self, coro);
}

PyMethodDef starter_methods[] = {
    {"start", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(when_alive<starter_start>)), METH_FASTCALL,
     "start(job_id, job) -> (True, result) if the job's task finished in its first step, else (False, task)."},
    {"run_here", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(when_alive<starter_run_here>)),
     METH_FASTCALL,
     "run_here(job_id, job) -> the job's result, or whether the loop's thread must look (the job goes on there)."},
    {"start_task", starter_start_task_alive, METH_O, "start_task(coro) -> a task on the loop, its first step taken."},
    {"end_idle", starter_end_idle, METH_NOARGS, "end_idle(): the task waiting for the next job ends (the runner stops)."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot starter_slots[] = {
    {Py_tp_doc, const_cast<char*>("JobStarter(runner, loop, host, name, enter_loop): how _JobRunner starts "
                                  "a job's task, in C.")},
    {Py_tp_new, reinterpret_cast<void*>(starter_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(gc_dealloc<starter_clear>)},
    {Py_tp_traverse, reinterpret_cast<void*>(starter_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(starter_clear)},
    {Py_tp_methods, starter_methods},
    {0, nullptr}};

PyType_Spec starter_spec = {"_portcullis_core.JobStarter", sizeof(job_starter), 0,
                            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, starter_slots};

}  // namespace

bool is_job_starter(py::handle o) { return job_starter_type != nullptr && Py_TYPE(o.ptr()) == job_starter_type; }

PyObject* stepping_loop() { return stepping; }

py::object run_loop_job_here(py::handle starter, std::uint64_t job_id, policy_job_ptr& job) {
  if (cleared(starter.ptr())) throw py::error_already_set();
  auto* s = reinterpret_cast<job_starter*>(starter.ptr());
  const auto id = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(job_id));
  if (!id) throw py::error_already_set();
  PyObject* out = run_here(s, id.ptr(), nullptr, &job);
  if (out == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(out);
}

void define_job_tasks(py::module_& m) {
  names = {.done = intern("done"),
           .result = intern("result"),
           .ready = intern("_ready"),
           .scheduled = intern("_scheduled"),
           .task_factory = intern("_task_factory"),
           .create_task = intern("create_task"),
           .loop = intern("loop"),
           .name = intern("name"),
           .callback = intern("_callback"),
           .self = intern("__self__"),
           .run = intern("run"),
           .handle_run = intern("_run"),
           .pop = intern("pop"),
           .dispatch = intern("dispatch"),
           .outcome = intern("outcome"),
           .waiting = intern("_waiting"),
           .complete = intern("complete"),
           .context = intern("context"),
           .throw_ = intern("throw"),
           .close = intern("close"),
           .runner = intern("_runner"),
           .call_soon = intern("call_soon"),
           .log_destroy_pending = intern("_log_destroy_pending"),
           .callbacks = intern("_callbacks"),
           .msg = intern("msg")};
  const py::module_ asyncio = py::module_::import("asyncio");
  task_type = py::object(asyncio.attr("Task")).release().ptr();
  const py::module_ asyncio_tasks = py::module_::import("asyncio.tasks");
  enter_task = py::object(asyncio_tasks.attr("_enter_task")).release().ptr();
  leave_task = py::object(asyncio_tasks.attr("_leave_task")).release().ptr();
  base_call_soon = py::object(asyncio.attr("BaseEventLoop").attr("call_soon")).release().ptr();
  loop_and_name = py::make_tuple(py::str("loop"), py::str("name")).release().ptr();
  just_name = py::make_tuple(py::str("name")).release().ptr();
  just_context = py::make_tuple(py::str("context")).release().ptr();
  cancelled_error = py::object(asyncio.attr("CancelledError")).release().ptr();

  PyObject* stepping_type = PyType_FromSpec(&stepping_spec);
  if (stepping_type == nullptr) throw py::error_already_set();
  m.add_object("Stepping", py::reinterpret_steal<py::object>(stepping_type));
  job_mailbox_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&mailbox_spec));
  if (job_mailbox_type == nullptr) throw py::error_already_set();
  m.add_object("JobMailbox", py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(job_mailbox_type)));
  job_coroutine_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&job_spec));
  if (job_coroutine_type == nullptr) throw py::error_already_set();
  m.add_object("JobCoroutine", py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(job_coroutine_type)));
  job_starter_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&starter_spec));
  if (job_starter_type == nullptr) throw py::error_already_set();
  m.add_object("JobStarter", py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(job_starter_type)));

  // A method (bound to the loop) though written in C: an instancemethod wraps it.
  PyObject* function = PyCFunction_NewEx(&claiming_call_soon_def, nullptr, nullptr);
  if (function == nullptr) throw py::error_already_set();
  PyObject* method = PyInstanceMethod_New(function);
  Py_DECREF(function);
  if (method == nullptr) throw py::error_already_set();
  m.add_object("claiming_call_soon", py::reinterpret_steal<py::object>(method));
}

}  // namespace portcullis::bindings
