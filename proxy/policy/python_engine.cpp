#include "policy/python_engine.hpp"

#include <pybind11/embed.h>
#include <pybind11/stl.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include "bindings/core.hpp"

namespace py = pybind11;

namespace portcullis {

namespace {

// One interpreter per process, so one engine: the embedded module reaches it here.
python_engine* the_engine = nullptr;

constexpr auto stop_wait = std::chrono::seconds(5);     // for the policy thread to leave its loop
constexpr auto load_wait = std::chrono::seconds(120);   // for the policies to import

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
  d["session"] = session;
  if (j.has_tx) {
    py::dict tx;
    tx["id"] = j.tx_id;
    tx["sender"] = j.sender;
    tx["sender_params"] = params_dict(j.sender_params);
    tx["recipients"] = j.recipients;
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
  if (j.stage == "data" && j.message) d["message"] = py::bytes(*j.message);
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
  using portcullis::the_engine;
  portcullis::bindings::define_core(m);
  m.attr("embedded") = true;
  m.def("log", [](int level, std::string_view session_id, std::string_view message) {
    spdlog::log(portcullis::level_from_python(level), "{}: {}", session_id.empty() ? "policy" : session_id, message);
  });
  m.def("take_jobs", [] {
    py::list out;
    for (auto& q : the_engine->take_jobs()) {
      py::dict d;
      if (q.reload_files) {
        d["stage"] = "reload";
        d["files"] = *q.reload_files;
        d["config_path"] = q.reload_config;
        d["timeout"] = q.reload_timeout;
        d["on_error"] = q.reload_on_error;
        d["threads"] = q.reload_threads;
      } else {
        d = portcullis::job_dict(q.job);
      }
      out.append(py::make_tuple(q.id, d));
    }
    return out;
  });
  m.def("complete", [](std::uint64_t id, py::handle result) { the_engine->complete(id, portcullis::result_from(result)); });
  m.def("should_stop", [] { return the_engine->stopping(); });
}

namespace portcullis {

python_engine::python_engine(const config& cfg) {
  if (the_engine) throw std::logic_error("one python_engine per process");
  wakeup_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakeup_fd_ < 0) throw std::runtime_error("eventfd failed");
  the_engine = this;
  // The thread starts with no policies; the first reload loads them, so a
  // start and a SIGHUP go through the same path.
  thread_ = std::thread(&python_engine::thread_main, this, std::vector<std::string>{}, cfg.file.string(),
                        static_cast<double>(cfg.policy.timeout.count()), to_string(cfg.policy.on_error), cfg.policy.threads);
  reload(cfg, [this](std::optional<std::string> error) { loaded(std::move(error)); });
  std::unique_lock lock(mutex_);
  if (!loaded_cv_.wait_for(lock, load_wait, [this] { return load_reported_; }))
    load_error_ = "the policies did not load within " + std::to_string(load_wait.count()) + " seconds";
  if (load_error_) {
    const std::string why = *load_error_;
    lock.unlock();
    stop();
    throw std::runtime_error(why);
  }
}

python_engine::~python_engine() { stop(); }

void python_engine::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake();
  // The loop leaves promptly; a hook stuck in C code must not hold up exit.
  std::unique_lock lock(mutex_);
  const bool finished = loaded_cv_.wait_for(lock, stop_wait, [this] { return thread_done_; });
  lock.unlock();
  if (finished)
    thread_.join();
  else
    thread_.detach();
  ::close(wakeup_fd_);
  the_engine = nullptr;
}

void python_engine::thread_main(std::vector<std::string> files, std::string config_path, double timeout,
                                std::string on_error, unsigned threads) {
  // No Python signal handlers: Asio owns SIGHUP/SIGTERM/SIGINT.
  py::initialize_interpreter(false);
  try {
    auto sys = py::module_::import("sys");
    sys.attr("path").attr("insert")(0, python_dir());
    sys.attr("argv") = py::make_tuple("portcullis");
    auto engine = py::module_::import("portcullis._engine");
    engine.attr("run_host")(files, config_path, timeout, on_error, threads, wakeup_fd_);
  } catch (const py::error_already_set& e) {
    spdlog::critical("policy engine stopped: {}", e.what());
    loaded(std::string(e.what()));
  }
  // The interpreter is not finalised: a hook thread stuck in C code would
  // block that forever, and the process is about to exit anyway.
  PyEval_SaveThread();
  std::map<std::uint64_t, completion> orphans;
  {
    std::lock_guard lock(mutex_);
    thread_done_ = true;
    orphans.swap(waiting_);
    loaded_cv_.notify_all();
  }
  // Whatever still waits gets an answer (outside the lock: a completion may take it).
  for (auto& [id, done] : orphans) {
    policy_result r;
    r.error = "the policy engine has stopped";
    done(std::move(r));
  }
}

void python_engine::wake() {
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wakeup_fd_, &one, sizeof one);
}

void python_engine::submit(policy_job job, completion done) {
  {
    std::unique_lock lock(mutex_);
    if (thread_done_) {
      lock.unlock();
      policy_result r;
      r.error = "the policy engine has stopped";
      done(std::move(r));
      return;
    }
    const auto id = next_id_++;
    waiting_.emplace(id, std::move(done));
    queue_.push_back(queued{id, std::move(job), std::nullopt, {}, 0, {}, 0});
  }
  wake();
}

void python_engine::reload(const config& cfg, std::function<void(std::optional<std::string>)> done) {
  std::vector<std::string> files;
  for (const auto& f : cfg.policy.files) files.push_back(f.string());
  {
    std::lock_guard lock(mutex_);
    const auto id = next_id_++;
    waiting_.emplace(id, [done = std::move(done)](policy_result r) { done(std::move(r.error)); });
    queue_.push_back(queued{id, {}, std::move(files), cfg.file.string(),
                            static_cast<double>(cfg.policy.timeout.count()), to_string(cfg.policy.on_error), cfg.policy.threads});
  }
  wake();
}

std::vector<python_engine::queued> python_engine::take_jobs() {
  std::uint64_t drained;
  [[maybe_unused]] auto n = ::read(wakeup_fd_, &drained, sizeof drained);
  std::lock_guard lock(mutex_);
  std::vector<queued> out(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

void python_engine::complete(std::uint64_t id, policy_result result) {
  completion done;
  {
    std::lock_guard lock(mutex_);
    auto it = waiting_.find(id);
    if (it == waiting_.end()) return;
    done = std::move(it->second);
    waiting_.erase(it);
  }
  done(std::move(result));
}

bool python_engine::stopping() const {
  std::lock_guard lock(mutex_);
  return stopping_;
}

void python_engine::loaded(std::optional<std::string> error) {
  std::lock_guard lock(mutex_);
  if (load_reported_) return;
  load_reported_ = true;
  load_error_ = std::move(error);
  loaded_cv_.notify_all();
}

}  // namespace portcullis
