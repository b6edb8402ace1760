#include "policy/python_engine.hpp"

#include <pybind11/embed.h>
#include <pybind11/stl.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string_view>

#include "bindings/core.hpp"
#include "bindings/job_tasks.hpp"
#include "bindings/stage_runner.hpp"
#include "log.hpp"
#include "net/io_pool.hpp"
#include "server/server_signals.hpp"

namespace py = pybind11;

namespace portcullis {

namespace {

// A thread that runs Python lets the daemon's stop and reload signals in
// (HUP, TERM, INT) in its own mask: a process a policy starts (subprocess,
// os.system, posix_spawn) inherits the mask of the thread that starts it,
// and with them blocked it would ignore terminate() and a service stop.
// This costs the daemon nothing: the server installs its signal queue (a
// handler that only queues the signal for its io_context) before it makes
// this engine (server.hpp), so a signal the kernel hands to one of these
// threads is queued and acted on as one the main thread takes; and the
// supervisor, which takes them with sigtimedwait, runs no Python.
void let_stop_signals_in() { mask_server_signals(SIG_UNBLOCK); }

constexpr auto stop_wait = std::chrono::seconds(5);     // for the policy threads to leave their loops
constexpr auto load_wait = std::chrono::seconds(120);   // for the policies to import
// A plain hook running this long may be a slow lookup: a job queued behind it
// gets another worker, an I/O thread held by it a spare.
constexpr auto slow_hook = std::chrono::milliseconds(2);
// ... unless its I/O thread is on a CPU or waiting for one: then it is
// computing or was preempted (common when the cores are busy), and a spare
// would only add a thread to the contention. A hook computing this long
// holds its thread all the same.
constexpr auto long_computing_hook = std::chrono::milliseconds(50);
// The monitor looks at hooks on I/O threads every in_place_tick while they
// come this often (no wake-up per job), and sleeps until the next deadline
// once they stop. So a blocked I/O thread gets its spare within
// in_place_tick + slow_hook; a shorter tick costs every busy process a
// wake-up (two context switches) that often.
constexpr auto in_place_spell = std::chrono::milliseconds(100);
constexpr auto in_place_tick = std::chrono::milliseconds(10);

// The calling thread's kernel id, for thread_is_runnable.
pid_t this_thread_id() {
  thread_local const pid_t tid = ::gettid();  // (a system call each time otherwise)
  return tid;
}

// Whether a thread of this process is running or waiting for a CPU (state R
// in /proc), as opposed to blocked (sleeping in a lookup, on the GIL, ...).
// Unknown (no /proc) counts as blocked: a spare is the safe side.
bool thread_is_runnable(pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/stat", static_cast<int>(tid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[512];
  const auto n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  // "tid (comm) S ...": the comm may hold spaces and parentheses, so the state follows the last ')'.
  const std::string_view stat(buf, static_cast<std::size_t>(n));
  const auto paren = stat.rfind(')');
  return paren != std::string_view::npos && paren + 2 < stat.size() && stat[paren + 2] == 'R';
}

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

// What the engine and its policy threads share, owned by all of them (and by
// the Python object run_host holds): the queues, the answers awaited and the
// eventfd. A thread left behind in a stuck hook still holds it after the
// engine is gone, so nothing it touches dangles; the last owner closes the
// eventfd, after the loop stopped watching it.
struct python_engine::channel {
  enum class kind { stage, reload, release };
  struct queued {
    job_id id = 0;
    kind what = kind::stage;
    policy_job_ptr job;                 // stage
    policy_generation generation = 0;  // release
    std::optional<reload_settings> reload;
  };
  using clock = std::chrono::steady_clock;
  // A plain job running (and, once abandoned, whose stack the loop logs).
  struct stuck {
    unsigned long thread;  // the running thread's Python thread ident
    std::string session_id;
    clock::time_point started;
    // Run in place on an I/O thread of this pool (null: on a worker); the
    // pool runs a spare thread while the hook is slow (`held`).
    std::shared_ptr<io_pool> pool = nullptr;
    bool held = false;
    pid_t tid = 0;  // the I/O thread's kernel id (in place only), to see whether it is blocked
    bool on_loop = false;  // an async job's first step, run in place on the loop's turn (run_on_loop_here)
  };
  // An idle worker waits on its own slot, so the one idle the shortest is
  // woken first: warm caches, and few threads taking turns at the GIL.
  struct idle_slot {
    std::condition_variable cv;
    bool woken = false;
  };

  // What a submitter waits for: its completion, and the deadline past which
  // the engine answers for the job itself (no timer per job on the I/O side).
  struct waiter {
    completion done;
    clock::time_point deadline;
    route where;
    policy_stage stage;
    std::chrono::seconds hook_timeout;
  };

  channel(int fd, unsigned max_workers) : wakeup_fd(fd), max_workers(std::max(1u, max_workers)) {}
  ~channel() { ::close(wakeup_fd); }
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  const int wakeup_fd;
  const unsigned max_workers;
  mutable std::mutex mutex;
  std::deque<queued> loop_queue;    // for the event loop: async stages, reloads, releases
  std::deque<queued> worker_queue;  // for the workers: stages with a plain hook
  std::map<job_id, waiter> waiting;      // submitted, not answered, not past their deadline
  std::set<std::pair<clock::time_point, job_id>> deadlines;  // of the jobs waited for, soonest first
  std::map<job_id, stuck> running;       // plain jobs on a worker or an I/O thread now
  std::vector<job_id> cancelled;         // async jobs abandoned after Python took them: tasks to cancel
  std::vector<stuck> stuck_jobs;         // plain jobs abandoned while running: stacks to log
  std::vector<std::string> forgotten;    // sessions Python may drop
  std::map<policy_generation, generation_hooks> generations;  // loaded and not released
  job_id next_id = 1;
  bool stopping = false;
  bool thread_done = false;  // the loop's thread
  bool died = false;         // it ended before the daemon said stop
  // The workers: one more is started only when a job would wait behind
  // workers that are all in hooks taking long (a slow lookup must not hold
  // up other sessions), up to max_workers.
  std::vector<idle_slot*> idle;  // a stack: the last in is woken first
  unsigned workers = 0;
  // The monitor answers jobs past their deadline and starts a worker when
  // jobs wait behind slow hooks with nothing else happening. It sleeps until
  // `monitor_until`; a push that needs it sooner wakes it.
  std::condition_variable monitor_cv;
  clock::time_point monitor_until = clock::time_point::min();  // min: awake
  // When the last job run on an I/O thread started (the clock's epoch, its boot: long ago).
  clock::time_point last_in_place{};
  // The EngineHost while the loop runs, and its C++ stage runner (which
  // `plain_host` keeps alive); read and written under the GIL only.
  PyObject* plain_host = nullptr;
  portcullis::bindings::stage_runner* stage_runner = nullptr;
  // The loop's turn: its thread holds it except while it waits in select(),
  // and lends it then, so that an I/O thread may start an async job's task
  // itself (`loop_runner`, the runner's `run_here`) with no hand-off to the
  // loop's thread and no wake-up. An I/O thread only ever tries it.
  std::mutex loop_turn;
  // The loop's thread is back from select() and waits for its turn: no I/O
  // thread takes the turn before it (the mutex is not fair).
  std::atomic<bool> loop_wants_turn = false;
  // The runner's `_core.JobStarter` while the loop runs; written by the loop's thread
  // holding the turn (and the GIL), read by a thread that holds both.
  PyObject* loop_runner = nullptr;
  // start-up handshake: the thread reports whether the policies loaded
  std::condition_variable cv;
  bool load_reported = false;
  std::optional<std::string> load_error;
  policy_generation load_generation = 0;

  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakeup_fd, &one, sizeof one);
  }

  // (Under the mutex.) A job about to run on the calling I/O thread: running,
  // so that the monitor sees it and has `pool` start a spare if it is slow.
  void note_in_place(job_id id, const std::string& session_id, std::shared_ptr<io_pool> pool, bool on_loop) {
    const auto now = clock::now();
    stuck here{PyThread_get_thread_ident(), session_id, now, std::move(pool), false, this_thread_id()};
    here.on_loop = on_loop;
    running.emplace(id, std::move(here));
    last_in_place = now;
    if (now + in_place_tick < monitor_until) monitor_cv.notify_one();  // it looks again within a tick
  }

  job_id push(std::shared_ptr<channel> self, queued q, route where, clock::time_point deadline,
             std::chrono::seconds hook_timeout, completion done) {
    std::unique_lock lock(mutex);
    if (thread_done || stopping) {
      lock.unlock();
      policy_result r;
      r.error = "the policy engine has stopped";
      done(std::move(r));
      return 0;
    }
    const auto id = q.id = next_id++;
    waiting.emplace(id, waiter{std::move(done), deadline, where, q.job ? q.job->stage : policy_stage::connect, hook_timeout});
    deadlines.emplace(deadline, id);
    clock::time_point monitor_needed = deadline;
    if (where == route::in_place && running.empty() && worker_queue.empty()) {
      // Nobody runs Python for a plain hook: an I/O thread runs it in place,
      // with no hand-off (the caller is outside the session's strand, which a
      // deadline answer resumes even while the hook runs on).
      if (auto pool = io_pool::current()) {
        note_in_place(id, q.job->session_id, std::move(pool), false);
        auto drop = std::exchange(forgotten, {});
        lock.unlock();
        run_in_place(id, std::move(q.job), std::move(drop));
        return id;
      }
    }
    if (where == route::loop && q.job && loop_queue.empty() && running.empty() && worker_queue.empty()) {
      // Nobody else runs Python, and the loop waits in select(): this I/O
      // thread starts the job's task itself, on the loop's turn.
      auto pool = io_pool::current();
      if (pool && !loop_wants_turn.load(std::memory_order_relaxed) && loop_turn.try_lock()) {
        note_in_place(id, q.job->session_id, std::move(pool), true);
        lock.unlock();
        if (run_on_loop_here(id, q.job)) return id;
        lock.lock();  // the loop stopped meanwhile: the queue, as below
        running.erase(id);
      }
    }
    // A loop queue that was not empty has its wake-up pending: the loop
    // empties the queue (take_for_loop) only after it reset the eventfd.
    bool wake_loop = false;
    if (where == route::loop) {
      wake_loop = loop_queue.empty();
      loop_queue.push_back(std::move(q));
    } else {
      worker_queue.push_back(std::move(q));
      if (!idle.empty()) {
        idle_slot* slot = idle.back();
        idle.pop_back();
        slot->woken = true;
        slot->cv.notify_one();
      } else if (must_start_worker(clock::now())) {
        start_worker(std::move(self));
      } else {
        monitor_needed = std::min(monitor_needed, clock::now() + slow_hook);  // a worker may be stuck
      }
    }
    if (monitor_needed < monitor_until) monitor_cv.notify_one();
    lock.unlock();
    if (wake_loop) wake();
    return id;
  }

  // (Under the mutex.) The completion of a job answered now, if anybody still waits for it.
  completion take_waiter(job_id id) {
    auto it = waiting.find(id);
    if (it == waiting.end()) return {};  // past its deadline: answered already
    deadlines.erase({it->second.deadline, id});
    completion done = std::move(it->second.done);
    waiting.erase(it);
    return done;
  }

  // (Under the mutex.) A job past its deadline: dropped if still queued, else
  // left to its worker (its stack is logged) or cancelled (an async job).
  policy_result expire(job_id id, const waiter& w) {
    const std::string hook = "on_" + std::string(to_string(w.stage));
    const std::string past = hook + " ran past policy.timeout (" + std::to_string(w.hook_timeout.count()) + " s)";
    auto drop_queued = [id](std::deque<queued>& q) {
      auto found = std::find_if(q.begin(), q.end(), [id](const queued& j) { return j.id == id; });
      if (found == q.end()) return false;
      q.erase(found);  // never reaches Python
      return true;
    };
    policy_result r;
    if (drop_queued(worker_queue)) {
      r.error = past + " and never started: all " + std::to_string(max_workers) + " policy threads were busy";
    } else if (drop_queued(loop_queue)) {
      r.error = "no answer from the policy engine's event loop in time";
    } else if (auto running_job = running.find(id); running_job != running.end() && running_job->second.on_loop) {
      cancelled.push_back(id);  // its first step is running in place; the loop cancels the task once it can
      r.error = "no answer from the policy engine in time";
      r.abandoned = true;
    } else if (running_job != running.end()) {
      stuck_jobs.push_back(running_job->second);  // the loop logs where the hook stands
      r.error = past + " and was abandoned (its thread runs on)";
      r.abandoned = true;
    } else {
      cancelled.push_back(id);  // the loop cancels the task once it can (a hook may ignore that)
      r.error = "no answer from the policy engine in time";
      r.abandoned = true;
    }
    return r;
  }

  // (Under the mutex.) Whether a queued job needs one more worker: none is
  // idle (the caller checked), and every worker is in a hook that has run
  // for a while (one that just started is likely a fast hook about to return).
  bool must_start_worker(clock::time_point now) const {
    if (workers >= max_workers) return false;
    unsigned on_workers = 0;  // (a job on an I/O thread never takes from the queue)
    for (const auto& [id, r] : running) {
      if (r.pool) continue;
      ++on_workers;
      if (now - r.started < slow_hook) return false;
    }
    return on_workers >= workers;  // else one is between jobs and takes the queue itself
  }

  // A hook on an I/O thread that ran slow_hook: whether its thread is blocked
  // is read from /proc outside the lock (push() on the I/O threads takes it).
  struct hold_check {
    job_id id;
    pid_t tid;
  };

  // (Under the mutex.) Hooks on I/O threads that computed long_computing_hook
  // get a spare thread each; those that ran slow_hook go to `check`. Returns
  // when the next one reaches slow_hook (max: none runs).
  clock::time_point hold_slow_in_place(clock::time_point now, std::vector<hold_check>& check) {
    clock::time_point next = clock::time_point::max();
    for (auto& [id, r] : running) {
      if (!r.pool || r.held) continue;
      const auto ran = now - r.started;
      if (ran < slow_hook) {
        next = std::min(next, r.started + slow_hook);
      } else if (ran < long_computing_hook) {
        check.push_back({id, r.tid});
      } else {
        hold(r);
      }
    }
    return next;
  }

  // (Under the mutex.) Of the hooks checked, those still running on a blocked
  // thread get a spare; the others (computing, or preempted) are looked at
  // again after slow_hook, which this returns.
  clock::time_point hold_blocked(const std::vector<hold_check>& check, const std::vector<char>& runnable,
                                 clock::time_point now) {
    clock::time_point next = clock::time_point::max();
    for (std::size_t i = 0; i < check.size(); ++i) {
      auto it = running.find(check[i].id);
      if (it == running.end() || it->second.held) continue;  // it returned meanwhile
      if (runnable[i]) {
        next = std::min(next, now + slow_hook);
      } else {
        hold(it->second);
      }
    }
    return next;
  }

  static void hold(stuck& r) {
    r.held = true;
    r.pool->hold();
  }

  void run_in_place(job_id id, policy_job_ptr job, std::vector<std::string> forgotten);
  // (The loop's turn held.) Starts a loop-route job's task on this thread; false
  // (the job untouched, the turn given back) if the loop no longer takes jobs.
  bool run_on_loop_here(job_id id, policy_job_ptr& job);
  // A job run in place is over: no longer running (its spare may go) and,
  // with a result, answered right here (a task that waits answers later).
  void ended_in_place(job_id id, std::optional<policy_result> result);

  void start_worker(std::shared_ptr<channel> self) {
    ++workers;
    std::thread(run_worker, std::move(self)).detach();
  }

  // (Under the mutex.) Stopping: every idle worker and the monitor leave.
  void wake_all_threads() {
    for (idle_slot* slot : idle) slot->cv.notify_one();
    monitor_cv.notify_all();
  }

  // What the loop takes at a wake-up, in one turn of the lock (its thread, GIL
  // held). The loop reset the eventfd before it asked: a job queued after
  // that wakes it again.
  struct loop_intake {
    std::vector<std::string> forgotten;
    std::vector<queued> jobs;
    std::vector<job_id> cancelled;
    std::vector<stuck> stuck_jobs;
    bool stopping = false;
  };
  loop_intake take_for_loop() {
    std::lock_guard lock(mutex);
    loop_intake in;
    in.forgotten = std::exchange(forgotten, {});
    in.jobs.assign(std::make_move_iterator(loop_queue.begin()), std::make_move_iterator(loop_queue.end()));
    loop_queue.clear();
    in.cancelled = std::exchange(cancelled, {});
    in.stuck_jobs = std::exchange(stuck_jobs, {});
    in.stopping = stopping;
    return in;
  }

  void complete(job_id id, policy_result result) {
    completion done;
    {
      std::lock_guard lock(mutex);
      done = take_waiter(id);
    }
    if (done) done(std::move(result));
  }

  // A load's answer: the hooks of the generation it loaded, for routing its jobs.
  void record_generation(const policy_result& r) {
    if (r.error) return;
    std::lock_guard lock(mutex);
    generations[r.generation] = r.hooks;
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
    std::map<job_id, waiter> orphans;
    {
      std::lock_guard lock(mutex);
      orphans.swap(waiting);
      deadlines.clear();
      loop_queue.clear();
      worker_queue.clear();
    }
    for (auto& [id, w] : orphans) {
      policy_result r;
      r.error = why;
      w.done(std::move(r));
    }
  }

  static void run_worker(std::shared_ptr<channel> self);
  static void run_monitor(std::shared_ptr<channel> self);
};

namespace {

// Python's answer, read defensively: anything but None or a Result is a
// policy error, never undefined behaviour.
policy_result result_of(py::handle h) {
  if (h.is_none()) return {};
  try {
    return h.cast<policy_result>();
  } catch (const std::exception& e) {
    policy_result r;
    r.error = std::string("the policy engine returned a malformed result: ") + e.what();
    return r;
  }
}

policy_result error_result(std::string why) {
  policy_result r;
  r.error = std::move(why);
  return r;
}

// One plain-route job, on a worker or an I/O thread, GIL held: what
// `host.run_plain(job, forgotten)` does, with no Python frame for it.
policy_result run_plain(python_engine::channel& ch, policy_job_ptr job, std::vector<std::string> forgotten) {
  if (ch.plain_host == nullptr) return error_result("the policy engine has stopped");
  try {
    // Both read before any Python call, which may let the loop's thread unset
    // them (it stops); the runner lives as long as the host this holds.
    const auto host = py::reinterpret_borrow<py::object>(ch.plain_host);
    auto* const runner = ch.stage_runner;
    if (!forgotten.empty()) runner->forget(host, forgotten);  // (EngineHost.forget, with no Python frame)
    const policy_job& fields = *job;  // (it stays put if the runner hands `job` to Python)
    return result_of(runner->run(host, fields, py::handle(), &job));
  } catch (const py::error_already_set& e) {
    return error_result(std::string("internal error in the policy engine: ") + e.what());
  } catch (const std::exception& e) {
    return error_result(std::string("internal error in the policy engine: ") + e.what());
  }
}

// An I/O thread's Python thread state: made the first time the thread runs
// a hook, kept (GIL released) between hooks, deleted when the thread ends.
class io_thread_python {
 public:
  io_thread_python() = default;
  io_thread_python(const io_thread_python&) = delete;
  io_thread_python& operator=(const io_thread_python&) = delete;
  ~io_thread_python() {
    if (state_ == nullptr) return;
    PyEval_RestoreThread(state_);
    PyGILState_Release(PyGILState_UNLOCKED);
  }
  void take_gil() {
    if (state_ == nullptr) {
      PyGILState_Ensure();
    } else {
      PyEval_RestoreThread(state_);
    }
  }
  void drop_gil() { state_ = PyEval_SaveThread(); }

 private:
  PyThreadState* state_ = nullptr;
};

thread_local io_thread_python this_io_thread;

// Set while an I/O thread completes a job it ran in place (python_engine::completing_in_place).
thread_local bool in_place_completion = false;

void complete_in_place(python_engine::completion& done, policy_result&& result) {
  struct flag {
    flag() { in_place_completion = true; }
    ~flag() { in_place_completion = false; }
  } during;
  done(std::move(result));
}

spdlog::level::level_enum level_from_python(int level) {
  if (level >= 50) return spdlog::level::critical;
  if (level >= 40) return spdlog::level::err;
  if (level >= 30) return spdlog::level::warn;
  if (level >= 20) return spdlog::level::info;
  return spdlog::level::debug;
}

// Where the `portcullis` package is: PORTCULLIS_PYTHON_PATH when set; else
// an installed daemon's private folder, found from the executable itself
// (PORTCULLIS_INSTALLED_PYTHON_DIR is that folder relative to the sbin
// folder, e.g. ../lib/x86_64-linux-gnu/portcullis/python), so that an install
// under any prefix or staging root works with no environment; else, in a
// build tree (build/portcullis, where that folder does not exist), the
// source tree's python/. The daemon's own _portcullis_core is built in, so
// the extension module installed beside the package is only for plain Python.
std::string python_dir() {
  if (const char* env = std::getenv("PORTCULLIS_PYTHON_PATH")) return env;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const auto installed = (exe.parent_path() / PORTCULLIS_INSTALLED_PYTHON_DIR).lexically_normal();
    if (std::filesystem::is_regular_file(installed / "portcullis" / "__init__.py", ec)) return installed.string();
  }
  return PORTCULLIS_PYTHON_DIR;
}

}  // namespace

// A plain job on the calling I/O thread, as a worker would run it (push() registered it as running).
void python_engine::channel::run_in_place(job_id id, policy_job_ptr job, std::vector<std::string> drop) {
  this_io_thread.take_gil();
  policy_result result = run_plain(*this, std::move(job), std::move(drop));
  this_io_thread.drop_gil();
  ended_in_place(id, std::move(result));
}

void python_engine::channel::ended_in_place(job_id id, std::optional<policy_result> result) {
  completion done;
  std::shared_ptr<io_pool> held;
  {
    std::lock_guard lock(mutex);
    if (auto node = running.extract(id); !node.empty() && node.mapped().held) held = std::move(node.mapped().pool);
    if (result) done = take_waiter(id);  // (none: answered at its deadline already)
  }
  if (held) held->release();  // its spare may go
  if (done) complete_in_place(done, std::move(*result));
}

bool python_engine::channel::run_on_loop_here(job_id id, policy_job_ptr& job) {
  this_io_thread.take_gil();
  if (loop_runner == nullptr) {
    this_io_thread.drop_gil();
    loop_turn.unlock();
    return false;
  }
  // The job's result if its task finished here; else whether the loop's
  // thread must look: the task went on waiting for a timer, or left
  // callbacks to run (a task that waits for a descriptor or another thread
  // is woken by that). Such a task completes the job itself.
  bool wake_loop = false;
  std::optional<policy_result> result;
  try {
    auto out = portcullis::bindings::run_loop_job_here(loop_runner, id, job);
    if (PyBool_Check(out.ptr())) {
      wake_loop = out.ptr() == Py_True;
    } else {
      result = result_of(out);
    }
  } catch (const std::exception& e) {  // (py::error_already_set included) never out of an I/O thread
    result = error_result(std::string("internal error in the policy engine: ") + e.what());
    wake_loop = true;  // whatever it left
  }
  this_io_thread.drop_gil();
  loop_turn.unlock();
  if (wake_loop) wake();
  ended_in_place(id, std::move(result));
  return true;
}

// A policy worker's life: take plain-route jobs, run each with the GIL
// held, hand the result back; leave when the engine stops. Its thread state
// is made once. It holds the channel, so a worker stuck in a hook after the
// engine is gone touches nothing that was freed.
void python_engine::channel::run_worker(std::shared_ptr<channel> self) {
  channel& ch = *self;
  pthread_setname_np(pthread_self(), "pc-policy");  // in top -H and perf
  let_stop_signals_in();
  const PyGILState_STATE gil = PyGILState_Ensure();
  const unsigned long ident = PyThread_get_thread_ident();
  PyThreadState* state = PyEval_SaveThread();
  idle_slot slot;
  std::optional<queued> next;
  std::vector<std::string> forgotten;  // sessions Python may drop, handed over with a job
  completion done;
  policy_result result;
  job_id finished = 0;
  for (;;) {
    {
      // One turn of the lock per job: hand the last one back, take the next.
      std::unique_lock lock(ch.mutex);
      if (finished != 0) {
        ch.running.erase(finished);
        done = ch.take_waiter(finished);
      }
      if (!done && ch.worker_queue.empty() && !ch.stopping) {
        slot.woken = false;
        ch.idle.push_back(&slot);
        slot.cv.wait(lock, [&] { return slot.woken || ch.stopping; });
        if (!slot.woken) std::erase(ch.idle, &slot);
      }
      if (ch.stopping) {
        --ch.workers;
        ch.cv.notify_all();
        break;
      }
      if (!ch.worker_queue.empty()) {
        next.emplace(std::move(ch.worker_queue.front()));
        ch.worker_queue.pop_front();
        ch.running.emplace(next->id, stuck{ident, next->job->session_id, clock::now()});
        forgotten.swap(ch.forgotten);
      }
    }
    if (done) std::exchange(done, nullptr)(std::move(result));  // outside the lock: it posts to the session
    finished = 0;
    if (!next) continue;

    PyEval_RestoreThread(state);
    result = run_plain(ch, std::move(next->job), std::move(forgotten));
    state = PyEval_SaveThread();
    finished = next->id;
    next.reset();
  }
  if (done) done(std::move(result));
  PyEval_RestoreThread(state);
  PyGILState_Release(gil);
}

// Answers jobs past their deadline, and starts a worker when jobs wait
// behind workers that are all in slow hooks and no new job comes to notice it.
void python_engine::channel::run_monitor(std::shared_ptr<channel> self) {
  channel& ch = *self;
  pthread_setname_np(pthread_self(), "pc-monitor");
  let_stop_signals_in();
  std::unique_lock lock(ch.mutex);
  while (!ch.stopping) {
    const auto now = clock::now();
    std::vector<std::pair<completion, policy_result>> late;
    while (!ch.deadlines.empty() && ch.deadlines.begin()->first <= now) {
      const job_id id = ch.deadlines.begin()->second;
      ch.deadlines.erase(ch.deadlines.begin());
      auto it = ch.waiting.find(id);
      if (it == ch.waiting.end()) continue;
      waiter w = std::move(it->second);
      ch.waiting.erase(it);
      auto result = ch.expire(id, w);
      late.emplace_back(std::move(w.done), std::move(result));
    }
    if (!ch.worker_queue.empty() && ch.idle.empty() && ch.must_start_worker(now)) ch.start_worker(self);
    std::vector<channel::hold_check> check;
    auto next_hold = ch.hold_slow_in_place(now, check);
    if (!check.empty()) {
      lock.unlock();
      std::vector<char> runnable;
      for (const auto& c : check) runnable.push_back(thread_is_runnable(c.tid));
      lock.lock();
      next_hold = std::min(next_hold, ch.hold_blocked(check, runnable, now));
    }
    if (!late.empty()) {
      lock.unlock();
      ch.wake();  // the loop logs stuck hooks and cancels abandoned tasks
      for (auto& [done, result] : late) done(std::move(result));
      lock.lock();
      continue;
    }
    auto until = ch.deadlines.empty() ? clock::time_point::max() : ch.deadlines.begin()->first;
    if (!ch.worker_queue.empty() && ch.workers < ch.max_workers) until = std::min(until, now + slow_hook);
    until = std::min(until, next_hold);
    if (now - ch.last_in_place < in_place_spell) until = std::min(until, now + in_place_tick);
    ch.monitor_until = until;
    if (until == clock::time_point::max()) {
      ch.monitor_cv.wait(lock);
    } else {
      ch.monitor_cv.wait_until(lock, until);
    }
    ch.monitor_until = clock::time_point::min();
  }
}

}  // namespace portcullis

// The daemon's `_portcullis_core`: the shared validators and protocol classes, plus the job plumbing.
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
      .def("take_all",
           [](channel& ch) {
             auto in = ch.take_for_loop();
             py::list jobs;
             for (auto& q : in.jobs) {
               py::object job;
               if (q.what == channel::kind::reload) {
                 py::dict d;
                 d["stage"] = "reload";
                 d["files"] = q.reload->files;
                 d["config_path"] = q.reload->config_path;
                 d["config_text"] = py::bytes(q.reload->config_text);
                 d["timeout"] = q.reload->timeout;
                 d["on_error"] = q.reload->on_error;
                 d["threads"] = q.reload->threads;
                 job = d;
               } else if (q.what == channel::kind::release) {
                 py::dict d;
                 d["stage"] = "release";
                 d["generation"] = q.generation;
                 job = d;
               } else {
                 job = py::cast(std::move(q.job));
               }
               jobs.append(py::make_tuple(q.id, job));
             }
             py::list stuck;
             for (auto& s : in.stuck_jobs) stuck.append(py::make_tuple(s.thread, s.session_id));
             return py::make_tuple(py::cast(in.forgotten), std::move(jobs), py::cast(in.cancelled), std::move(stuck),
                                   in.stopping);
           })
      .def("set_plain_runner",
           [](channel& ch, py::object host) {
             auto* runner = host.is_none() ? nullptr : host.attr("_runner").cast<portcullis::bindings::stage_runner*>();
             Py_XDECREF(ch.plain_host);
             ch.plain_host = host.is_none() ? nullptr : host.release().ptr();
             ch.stage_runner = runner;
           })
      .def("set_loop_runner",
           [](channel& ch, py::object runner) {
             if (!runner.is_none() && !portcullis::bindings::is_job_starter(runner)) {
               throw py::type_error("set_loop_runner takes a _core.JobStarter or None");
             }
             Py_XDECREF(ch.loop_runner);
             ch.loop_runner = runner.is_none() ? nullptr : runner.release().ptr();
           })
      // The loop's selector around its wait (portcullis._engine._TurnLendingSelector).
      .def("lend_turn", [](channel& ch) { ch.loop_turn.unlock(); })
      .def(
          "take_turn_back",
          [](channel& ch) {
            ch.loop_wants_turn = true;
            ch.loop_turn.lock();
            ch.loop_wants_turn = false;
          },
          py::call_guard<py::gil_scoped_release>())
      .def("complete",
           [](channel& ch, std::uint64_t id, py::handle result) { ch.complete(id, portcullis::result_of(result)); });
}

namespace portcullis {

namespace {

// CPython cannot be initialised twice in a process (nor finalised safely
// while a hook thread may be stuck in C code), so it is started once, on the
// first engine's constructor, and kept; the GIL is then released, and each
// policy thread takes it when it runs Python.
void start_interpreter_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    // No Python signal handlers: Asio owns SIGHUP/SIGTERM/SIGINT.
    py::initialize_interpreter(false);
    {
      // A fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGILL) writes every
      // Python thread's stack to stderr, then kills the process as before:
      // a crash seen once in the field can be read.
      // It gives the calling thread an alternate signal stack of its own (malloc'd);
      // the thread keeps the one it had (ASan's unmaps its own at thread exit).
      stack_t own{};
      sigaltstack(nullptr, &own);
      py::module_::import("faulthandler").attr("enable")(py::arg("all_threads") = true);
      sigaltstack(&own, nullptr);
      auto sys = py::module_::import("sys");
      sys.attr("path").attr("insert")(0, python_dir());
      sys.attr("argv") = py::make_tuple("portcullis");
    }
    PyEval_SaveThread();
  });
}

// The loop thread's whole life: the asyncio loop of run_host, until the
// engine says stop. `ch` keeps alive what it touches, however long it runs.
void policy_thread(std::shared_ptr<python_engine::channel> ch, double timeout, std::string on_error,
                   unsigned threads) {
  pthread_setname_np(pthread_self(), "pc-loop");
  let_stop_signals_in();
  // The GIL for the thread's life, through the C API: a thread state of its
  // own, deleted on release. (pybind11's gil_scoped_acquire crashed in
  // _PyThreadState_DeleteCurrent at the end of such a thread.)
  const PyGILState_STATE gil = PyGILState_Ensure();
  {
    // The loop's turn is this thread's but while it waits in select() (the GIL
    // is held here: nobody tries the turn before the runner is in place).
    std::lock_guard turn(ch->loop_turn);
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
    // No worker may start a hook of a host that is gone.
    Py_CLEAR(ch->plain_host);
    ch->stage_runner = nullptr;
    Py_CLEAR(ch->loop_runner);
  }
  PyGILState_Release(gil);
  bool died = false;
  {
    std::lock_guard lock(ch->mutex);
    // (Before the first load reported, the engine's constructor throws instead.)
    died = ch->died = !ch->stopping && ch->load_reported && !ch->load_error;
    ch->thread_done = true;
    ch->stopping = true;
    ch->cv.notify_all();
    ch->wake_all_threads();
  }
  ch->fail_waiting("the policy engine has stopped");
  if (died) {
    // Every hook would fail from now on (451 until a restart): the worker
    // drains and exits non-zero, to be restarted by the supervisor or systemd.
    lasting_logger().critical("the policy engine cannot go on: stopping this process so that it is restarted");
    ::kill(::getpid(), SIGTERM);
  }
}

}  // namespace

void start_python_interpreter() { start_interpreter_once(); }

python_engine::python_engine(const config& cfg) {
  start_interpreter_once();
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error("eventfd failed");
  channel_ = std::make_shared<channel>(fd, cfg.policy.threads);
  std::thread(channel::run_monitor, channel_).detach();  // it leaves when the engine stops
  thread_ = std::thread(policy_thread, channel_, static_cast<double>(cfg.policy.timeout.count()),
                        to_string(cfg.policy.on_error), cfg.policy.threads);
  // The completion lives in the channel it reports to: a raw pointer, no cycle.
  channel* ch = channel_.get();
  channel::queued q;
  q.what = channel::kind::reload;
  q.reload = settings_of(cfg);
  channel_->push(channel_, std::move(q), route::loop, channel::clock::time_point::max(), {}, [ch](policy_result r) {
    ch->record_generation(r);
    ch->loaded(std::move(r.error), r.generation);
  });
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

bool python_engine::died() const {
  std::lock_guard lock(channel_->mutex);
  return channel_->died;
}

void python_engine::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(channel_->mutex);
    channel_->stopping = true;
    channel_->wake_all_threads();
  }
  channel_->wake();
  // The loop and idle workers leave promptly; a hook stuck in C code must not hold up exit.
  std::unique_lock lock(channel_->mutex);
  const bool finished = channel_->cv.wait_for(
      lock, stop_wait, [this] { return channel_->thread_done && channel_->workers == 0; });
  const bool loop_done = channel_->thread_done;
  lock.unlock();
  if (loop_done) {
    thread_.join();
  } else {
    thread_.detach();
  }
  if (!finished)
    spdlog::warn("a policy thread did not stop within {} s (a hook stuck outside Python?); leaving it behind",
                 stop_wait.count());
  // Whoever still waits is answered now, whatever the threads do later.
  channel_->fail_waiting("the policy engine has stopped");
}

void python_engine::submit(policy_job_ptr job, route where, std::chrono::steady_clock::time_point deadline,
                           std::chrono::seconds hook_timeout, completion done) {
  channel::queued q;
  q.job = std::move(job);
  channel_->push(channel_, std::move(q), where, deadline, hook_timeout, std::move(done));
}

bool python_engine::completing_in_place() { return in_place_completion; }

void python_engine::forget(std::string session_id) {
  std::lock_guard lock(channel_->mutex);
  channel_->forgotten.push_back(std::move(session_id));
}

generation_hooks python_engine::hooks(policy_generation generation) const {
  std::lock_guard lock(channel_->mutex);
  auto it = channel_->generations.find(generation);
  return it == channel_->generations.end() ? generation_hooks{} : it->second;
}

void python_engine::reload(const config& cfg, reload_done done) {
  channel::queued q;
  q.what = channel::kind::reload;
  q.reload = settings_of(cfg);
  channel* ch = channel_.get();
  channel_->push(channel_, std::move(q), route::loop, channel::clock::time_point::max(), {},
                 [ch, done = std::move(done)](policy_result r) {
    ch->record_generation(r);
    done(std::move(r.error), r.generation);
  });
}

void python_engine::release(policy_generation generation) {
  {
    std::lock_guard lock(channel_->mutex);
    channel_->generations.erase(generation);
  }
  channel::queued q;
  q.what = channel::kind::release;
  q.generation = generation;
  channel_->push(channel_, std::move(q), route::loop, channel::clock::time_point::max(), {}, [](policy_result) {});
}

}  // namespace portcullis
