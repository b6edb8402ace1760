#include "policy/python_engine.hpp"

#include <pybind11/embed.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>

#include "bindings/core.hpp"
#include "log.hpp"

namespace py = pybind11;

namespace portcullis {

namespace {

constexpr auto stop_wait = std::chrono::seconds(5);     // for the policy thread to leave its loop
constexpr auto load_wait = std::chrono::seconds(120);   // for the policies to import

// A reload job's settings (the [policy] table and the config file).
struct reload_settings {
  std::vector<std::string> files;
  std::string config_path;
  std::string config_text;  // what the daemon parsed: one snapshot for C++ and Python
  double timeout = 0;
  std::string on_error;
  unsigned threads = 0;
};

reload_settings settings_of(const config& cfg) {
  reload_settings r;
  for (const auto& f : cfg.policy.files) r.files.push_back(f.string());
  r.config_path = cfg.file.string();
  r.config_text = cfg.text;
  r.timeout = static_cast<double>(cfg.policy.timeout.count());
  r.on_error = to_string(cfg.policy.on_error);
  r.threads = cfg.policy.threads;
  return r;
}

}  // namespace

// What the engine and its policy thread share, owned by both (and by the
// Python object run_host holds): the queue, the answers awaited and the
// eventfd. A policy thread left behind in a stuck hook still holds it after
// the engine is gone, so nothing it touches dangles; the last owner closes
// the eventfd, after the loop stopped watching it.
struct python_engine::channel {
  struct queued {
    job_id id;
    policy_job job;
    std::optional<reload_settings> reload;  // set: a reload job
  };

  explicit channel(int fd) : wakeup_fd(fd) {}
  ~channel() { ::close(wakeup_fd); }
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  const int wakeup_fd;
  std::mutex mutex;
  std::deque<queued> queue;
  std::map<job_id, completion> waiting;  // submitted, not answered, not abandoned
  std::vector<job_id> cancelled;         // abandoned after Python took them: tasks to cancel
  job_id next_id = 1;
  bool stopping = false;
  bool thread_done = false;
  // start-up handshake: the thread reports whether the policies loaded
  std::condition_variable cv;
  bool load_reported = false;
  std::optional<std::string> load_error;
  policy_generation load_generation = 0;

  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakeup_fd, &one, sizeof one);
  }

  job_id push(policy_job job, std::optional<reload_settings> reload, completion done) {
    std::unique_lock lock(mutex);
    if (thread_done) {
      lock.unlock();
      policy_result r;
      r.error = "the policy engine has stopped";
      done(std::move(r));
      return 0;
    }
    const auto id = next_id++;
    waiting.emplace(id, std::move(done));
    queue.push_back(queued{id, std::move(job), std::move(reload)});
    lock.unlock();
    wake();
    return id;
  }

  // For the policy thread (GIL held).
  std::vector<queued> take_jobs() {
    std::uint64_t drained;
    [[maybe_unused]] auto n = ::read(wakeup_fd, &drained, sizeof drained);
    std::lock_guard lock(mutex);
    std::vector<queued> out(std::make_move_iterator(queue.begin()), std::make_move_iterator(queue.end()));
    queue.clear();
    return out;
  }

  std::vector<job_id> take_cancelled() {
    std::lock_guard lock(mutex);
    return std::exchange(cancelled, {});
  }

  void complete(job_id id, policy_result result) {
    completion done;
    {
      std::lock_guard lock(mutex);
      auto it = waiting.find(id);
      if (it == waiting.end()) return;  // abandoned: nobody waits for it
      done = std::move(it->second);
      waiting.erase(it);
    }
    done(std::move(result));
  }

  bool should_stop() {
    std::lock_guard lock(mutex);
    return stopping;
  }

  void loaded(std::optional<std::string> error, policy_generation generation = 0) {
    std::lock_guard lock(mutex);
    if (load_reported) return;
    load_reported = true;
    load_error = std::move(error);
    load_generation = generation;
    cv.notify_all();
  }

  // Everything still awaited gets an answer (outside the lock: a completion may submit again).
  void fail_waiting(const std::string& why) {
    std::map<job_id, completion> orphans;
    {
      std::lock_guard lock(mutex);
      orphans.swap(waiting);
      queue.clear();
    }
    for (auto& [id, done] : orphans) {
      policy_result r;
      r.error = why;
      done(std::move(r));
    }
  }
};

namespace {

py::dict params_dict(const std::vector<smtp::esmtp_param>& params) {
  py::dict d;
  for (const auto& p : params) d[py::str(p.keyword)] = p.has_value ? py::object(py::str(p.value)) : py::object(py::none());
  return d;
}

py::object optional_str(const std::optional<std::string>& s) { return s ? py::object(py::str(*s)) : py::object(py::none()); }

py::dict job_dict(const policy_job& j) {
  py::dict session;
  session["id"] = j.session_id;
  session["client_ip"] = j.client_ip;
  session["client_port"] = j.client_port;
  session["helo"] = j.helo.empty() ? py::object(py::none()) : py::object(py::str(j.helo));
  session["tls"] = j.tls;
  session["tls_version"] = j.tls ? py::object(py::str(j.tls_version)) : py::object(py::none());
  session["tls_cipher"] = j.tls ? py::object(py::str(j.tls_cipher)) : py::object(py::none());
  session["auth_user"] = optional_str(j.auth_user);
  py::dict d;
  d["stage"] = j.stage;
  d["generation"] = j.generation;
  d["session"] = session;
  if (j.has_tx) {
    py::dict tx;
    tx["id"] = j.tx_id;
    tx["sender"] = j.sender;
    tx["sender_params"] = params_dict(j.sender_params);
    tx["recipients"] = j.recipients;
    py::dict options;
    options["smtputf8"] = j.smtputf8;
    options["body_8bit"] = j.body_8bit;
    tx["options"] = options;
    d["tx"] = tx;
  } else {
    d["tx"] = py::none();
  }
  if (j.stage == "helo") d["hostname"] = j.hostname;
  if (j.stage == "auth") {
    d["mechanism"] = j.mechanism;
    d["username"] = j.username;
    d["password"] = j.password;
  }
  if (j.stage == "rcpt") {
    d["rcpt"] = j.rcpt;
    d["rcpt_params"] = params_dict(j.rcpt_params);
  }
  if (j.stage == "data" && j.message) d["message"] = py::bytes(j.message->read_all());
  return d;
}

// Python's half of the protocol, read defensively: anything of the wrong
// shape is a policy error, never undefined behaviour.
policy_result result_from(py::handle h) {
  policy_result r;
  try {
    auto d = py::reinterpret_borrow<py::dict>(h);
    auto get = [&](const char* key) -> py::object {
      return d.contains(key) ? py::reinterpret_borrow<py::object>(d[key]) : py::none();
    };
    if (auto e = get("error"); !e.is_none()) r.error = py::str(e).cast<std::string>();
    if (auto v = get("verdict"); !v.is_none()) {
      auto vd = py::reinterpret_borrow<py::dict>(v);
      r.verdict = vd["kind"].cast<std::string>();
      r.code = vd.contains("code") && !vd["code"].is_none() ? vd["code"].cast<int>() : 0;
      r.status = vd.contains("status") && !vd["status"].is_none() ? vd["status"].cast<std::string>() : "";
      if (vd.contains("text") && !vd["text"].is_none()) r.text = vd["text"].cast<std::string>();
      if (vd.contains("addresses") && !vd["addresses"].is_none())
        r.addresses = vd["addresses"].cast<std::vector<std::string>>();
    }
    if (auto a = get("auth"); !a.is_none()) r.auth = a.cast<bool>();
    if (auto s = get("sender"); !s.is_none()) r.sender = s.cast<std::string>();
    if (auto rc = get("recipients"); !rc.is_none()) r.recipients = rc.cast<std::vector<std::string>>();
    if (auto m = get("message"); !m.is_none()) r.message = m.cast<std::string>();
    if (auto g = get("generation"); !g.is_none()) r.generation = g.cast<policy_generation>();
  } catch (const std::exception& e) {
    r = policy_result{};
    r.error = std::string("the policy engine returned a malformed result: ") + e.what();
  }
  return r;
}

spdlog::level::level_enum level_from_python(int level) {
  if (level >= 50) return spdlog::level::critical;
  if (level >= 40) return spdlog::level::err;
  if (level >= 30) return spdlog::level::warn;
  if (level >= 20) return spdlog::level::info;
  return spdlog::level::debug;
}

std::string python_dir() {
  if (const char* env = std::getenv("PORTCULLIS_PYTHON_PATH")) return env;
  return PORTCULLIS_PYTHON_DIR;
}

}  // namespace

}  // namespace portcullis

// The daemon's `_portcullis_core`: the shared validators plus the job plumbing.
PYBIND11_EMBEDDED_MODULE(_portcullis_core, m) {
  using channel = portcullis::python_engine::channel;
  portcullis::bindings::define_core(m);
  m.attr("embedded") = true;
  // One record, one line: the daemon's formatter escapes control characters
  // (log.cpp), so a message is one line whatever it holds; tracebacks come
  // as several calls (portcullis._log).
  m.def("log", [](int level, std::string_view session_id, std::string_view message) {
    portcullis::lasting_logger().log(portcullis::level_from_python(level), "{}: {}",
                                     session_id.empty() ? "policy" : session_id, message);
  });
  // The job plumbing of one engine, handed to run_host as its `core`.
  py::class_<channel, std::shared_ptr<channel>>(m, "Channel")
      .def("take_jobs",
           [](channel& ch) {
             py::list out;
             for (auto& q : ch.take_jobs()) {
               py::dict d;
               if (q.reload) {
                 d["stage"] = "reload";
                 d["files"] = q.reload->files;
                 d["config_path"] = q.reload->config_path;
                 d["config_text"] = py::bytes(q.reload->config_text);
                 d["timeout"] = q.reload->timeout;
                 d["on_error"] = q.reload->on_error;
                 d["threads"] = q.reload->threads;
               } else {
                 d = portcullis::job_dict(q.job);
               }
               out.append(py::make_tuple(q.id, d));
             }
             return out;
           })
      .def("take_cancelled", [](channel& ch) { return ch.take_cancelled(); })
      .def("complete",
           [](channel& ch, std::uint64_t id, py::handle result) { ch.complete(id, portcullis::result_from(result)); })
      .def("should_stop", [](channel& ch) { return ch.should_stop(); });
}

namespace portcullis {

namespace {

// CPython cannot be initialised twice in a process (nor finalised safely
// while a hook thread may be stuck in C code), so it is started once, on the
// first engine's constructor, and kept; the GIL is then released, and each
// policy thread takes it for its life (PyGILState_Ensure).
void start_interpreter_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    // No Python signal handlers: Asio owns SIGHUP/SIGTERM/SIGINT.
    py::initialize_interpreter(false);
    {
      auto sys = py::module_::import("sys");
      sys.attr("path").attr("insert")(0, python_dir());
      sys.attr("argv") = py::make_tuple("portcullis");
    }
    PyEval_SaveThread();
  });
}

// The policy thread's whole life: the asyncio loop of run_host, until the
// engine says stop. `ch` keeps alive what it touches, however long it runs.
void policy_thread(std::shared_ptr<python_engine::channel> ch, double timeout, std::string on_error,
                   unsigned threads) {
  // The GIL for the thread's life, through the C API: a thread state of its
  // own, deleted on release. (pybind11's gil_scoped_acquire crashed in
  // _PyThreadState_DeleteCurrent at the end of such a thread.)
  const PyGILState_STATE gil = PyGILState_Ensure();
  {
    try {
      auto engine = py::module_::import("portcullis._engine");
      // The thread starts with no policies; the first reload loads them, so
      // a start and a SIGHUP go through the same path.
      engine.attr("run_host")(std::vector<std::string>{}, py::none(), timeout, on_error, threads, ch->wakeup_fd,
                              py::arg("core") = py::cast(ch));
    } catch (const py::error_already_set& e) {
      lasting_logger().critical("policy engine stopped: {}", e.what());
      ch->loaded(std::string(e.what()));
    } catch (const std::exception& e) {  // a conversion error: still no exception out of a thread
      lasting_logger().critical("policy engine stopped: {}", e.what());
      ch->loaded(std::string(e.what()));
    }
  }
  PyGILState_Release(gil);
  {
    std::lock_guard lock(ch->mutex);
    ch->thread_done = true;
    ch->cv.notify_all();
  }
  ch->fail_waiting("the policy engine has stopped");
}

}  // namespace

python_engine::python_engine(const config& cfg) {
  start_interpreter_once();
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error("eventfd failed");
  channel_ = std::make_shared<channel>(fd);
  thread_ = std::thread(policy_thread, channel_, static_cast<double>(cfg.policy.timeout.count()),
                        to_string(cfg.policy.on_error), cfg.policy.threads);
  // The completion lives in the channel it reports to: a raw pointer, no cycle.
  channel* ch = channel_.get();
  channel_->push({}, settings_of(cfg), [ch](policy_result r) { ch->loaded(std::move(r.error), r.generation); });
  std::unique_lock lock(ch->mutex);
  if (!ch->cv.wait_for(lock, load_wait, [ch] { return ch->load_reported; }))
    ch->load_error = "the policies did not load within " + std::to_string(load_wait.count()) + " seconds";
  if (ch->load_error) {
    const std::string why = *ch->load_error;
    lock.unlock();
    stop();
    throw std::runtime_error(why);
  }
  first_generation_ = ch->load_generation;
}

python_engine::~python_engine() { stop(); }

void python_engine::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(channel_->mutex);
    channel_->stopping = true;
  }
  channel_->wake();
  // The loop leaves promptly; a hook stuck in C code must not hold up exit.
  std::unique_lock lock(channel_->mutex);
  const bool finished = channel_->cv.wait_for(lock, stop_wait, [this] { return channel_->thread_done; });
  lock.unlock();
  if (finished) {
    thread_.join();
  } else {
    spdlog::warn("the policy thread did not stop within {} s (a hook stuck outside Python?); leaving it behind",
                 stop_wait.count());
    thread_.detach();
  }
  // Whoever still waits is answered now, whatever the thread does later.
  channel_->fail_waiting("the policy engine has stopped");
}

python_engine::job_id python_engine::submit(policy_job job, completion done) {
  return channel_->push(std::move(job), std::nullopt, std::move(done));
}

void python_engine::abandon(job_id id) {
  completion dropped;  // destroyed outside the lock
  bool taken = false;
  {
    std::lock_guard lock(channel_->mutex);
    auto it = channel_->waiting.find(id);
    if (it == channel_->waiting.end()) return;  // answered already (or never queued)
    dropped = std::move(it->second);
    channel_->waiting.erase(it);
    auto& q = channel_->queue;
    auto queued = std::find_if(q.begin(), q.end(), [id](const channel::queued& j) { return j.id == id; });
    if (queued != q.end()) {
      q.erase(queued);  // never reaches Python
    } else {
      channel_->cancelled.push_back(id);
      taken = true;
    }
  }
  if (taken) channel_->wake();  // the loop cancels the task once it can
}

void python_engine::reload(const config& cfg, reload_done done) {
  channel_->push({}, settings_of(cfg),
                 [done = std::move(done)](policy_result r) { done(std::move(r.error), r.generation); });
}

void python_engine::release(policy_generation generation) {
  policy_job job;
  job.stage = "release";
  job.generation = generation;
  channel_->push(std::move(job), std::nullopt, [](policy_result) {});
}

}  // namespace portcullis
