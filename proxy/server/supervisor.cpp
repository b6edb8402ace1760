#include "server/supervisor.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "log.hpp"
#include "metrics/metrics.hpp"
#include "server/privileges.hpp"
#include "server/server_signals.hpp"
#include "server/service_notifier.hpp"

extern char** environ;

namespace portcullis {

namespace {

// A worker that crashes soon after it started waits before the next try,
// twice as long each time, so that one failing at start does not spin.
constexpr std::chrono::milliseconds restart_delay_first{500};
constexpr std::chrono::seconds restart_delay_max{30};
constexpr std::chrono::seconds stable_run{10};  // ran this long: restarted at once, back-off reset
// Past shutdown_grace (each worker drops its sessions then), how long the
// workers get to exit (a policy thread stuck in a hook is waited 5 s) before SIGKILL.
constexpr std::chrono::seconds stop_margin{15};
// A reload's policy check (a child running --check-config) may take this long.
constexpr std::chrono::seconds check_timeout{60};
constexpr std::size_t max_check_output = 64 * 1024;  // of a failed check's lines, what is kept for the log
constexpr std::chrono::seconds idle_wake{1};  // sigtimedwait with nothing scheduled
// While systemd waits to hear that every worker serves (or has reloaded): the
// workers set a flag in shared memory, read this often.
constexpr std::chrono::milliseconds readiness_poll{20};

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "killed by signal " + std::to_string(sig) + " (" + sigabbrev_np(sig) + ")";
  }
  return "stopped (status " + std::to_string(status) + ")";
}

std::string seconds(std::chrono::steady_clock::duration d) {
  return fmt::format("{:.1f} s", std::chrono::duration<double>(d).count());
}

// Runs this program with --check-config (the policies load in that child,
// never in the supervisor). Its output lines when the check failed; empty when it passed.
// `meanwhile` runs between its reads (every tenth of a second at most),
// given the check's pid (its exit is this function's to collect): the
// supervisor's other duties, which a slow check must not hold up; it
// returns true when the daemon stops, which abandons the check.
std::vector<std::string> check_config(const std::filesystem::path& file, const sigset_t& child_mask,
                                      const std::function<bool(pid_t)>& meanwhile) {
  std::vector<std::string> problems;
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return {std::string("cannot check the policies: pipe: ") + std::strerror(errno)};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setsigmask(&attr, &child_mask);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::string self = "/proc/self/exe", flag = "--check-config", path = file.string();
  char* argv[] = {self.data(), flag.data(), path.data(), nullptr};
  // Marked as a reload's check (main.cpp): a changed server.user takes effect
  // on restart, so this process (the user already) need not be able to become it.
  constexpr std::string_view marked = "PORTCULLIS_RELOAD_CHECK=";
  std::string marker = std::string(marked) + "1";
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::string_view(*e).substr(0, marked.size()) != marked) env.push_back(*e);
  env.push_back(marker.data());
  env.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, self.c_str(), &actions, &attr, argv, env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(out[1]);
  if (rc != 0) {
    close(out[0]);
    return {std::string("cannot check the policies: ") + std::strerror(rc)};
  }
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + check_timeout;
  bool timed_out = false, stopping = false, exited = false;
  int status = 0;
  // A TERM or INT (held pending: the supervisor blocks them) ends the check at
  // once, so that the stop does not wait for a slow policy import; looked at
  // every tenth of a second.
  const auto stop_pending = [] {
    sigset_t pending;
    sigpending(&pending);
    return sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1;
  };
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    if (stop_pending() || meanwhile(pid)) {
      stopping = true;
      break;
    }
    // The check may have ended with the pipe still open: a process its
    // policies started holds it (and may write on). What the check wrote is
    // in the pipe already.
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    const int n = poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 100)));
    if (n <= 0) continue;
    char buf[4096];
    const ssize_t got = read(out[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (text.size() < max_check_output) text.append(buf, static_cast<std::size_t>(got));
  }
  if (exited) {  // (drained without waiting, and no more than is kept: the holder may write on)
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    char buf[4096];
    for (ssize_t got; text.size() < max_check_output && (got = read(out[0], buf, sizeof buf)) > 0;)
      text.append(buf, static_cast<std::size_t>(got));
  }
  close(out[0]);
  if (timed_out || stopping) kill(pid, SIGKILL);
  while (!exited && waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (stopping) return {"the daemon is stopping: the reload's check was abandoned"};
  if (timed_out) return {fmt::format("the policy check did not finish within {} s", check_timeout.count())};
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) problems.push_back(line);
  if (problems.empty()) problems.push_back("the policy check " + describe(status));
  return problems;
}

}  // namespace

supervisor::supervisor(std::shared_ptr<const config> cfg, client_table& clients, worker_main run_worker)
    : cfg_(std::move(cfg)), clients_(clients), run_worker_(std::move(run_worker)), workers_(clients.workers()) {
  sigemptyset(&handled_);
  sigaddset(&handled_, SIGCHLD);
  add_server_signals(handled_);
  // Fixed until a restart, whatever a reload says.
  for (const auto& l : cfg_->server.listen) listening_ += (listening_.empty() ? "" : ", ") + l;
  for (const auto& l : cfg_->server.listen_tls) listening_ += (listening_.empty() ? "" : ", ") + l + " (implicit TLS)";
}

int supervisor::run() {
  // Blocked here and taken with sigtimedwait; each worker gets the old mask
  // back and installs its own handlers (server_signal_queue).
  sigprocmask(SIG_BLOCK, &handled_, &before_);
  // A --check-config child then imports the policies with no capability at all.
  keep_capabilities_from_children();
  spdlog::info("supervisor {}: starting {} workers", getpid(), workers_.size());
  notify_status(fmt::format("starting {} workers", workers_.size()));
  for (unsigned w = 0; w < workers_.size(); ++w) start(w);
  while (!(stopping_ && running() == 0)) {
    auto now = clock::now();
    auto wake = now + idle_wake;
    for (const auto& w : workers_)
      if (!w.pid && !stopping_) wake = std::min(wake, w.restart_at);
    if (stopping_) wake = std::min(wake, kill_at_);
    if (!stopping_ && (!started_ || reloading_ || serving() != running())) wake = std::min(wake, now + readiness_poll);
    const auto wait = std::max(clock::duration::zero(), wake - now);
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(wait);
    const timespec ts{static_cast<time_t>(s.count()),
                      static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(wait - s).count())};
    siginfo_t info;
    const int sig = sigtimedwait(&handled_, &info, &ts);
    if (sig == SIGCHLD) reap();
    else if (sig == SIGHUP) reload();
    else if (sig == SIGTERM || sig == SIGINT) stop(sig);
    now = clock::now();
    if (!stopping_) {
      for (unsigned w = 0; w < workers_.size(); ++w)
        if (!workers_[w].pid && now >= workers_[w].restart_at) start(w);
    } else if (now >= kill_at_ && running() > 0) {
      spdlog::error("supervisor: {} worker(s) still running {} s past the grace period; killing them", running(),
                    stop_margin.count());
      for (const auto& w : workers_)
        if (w.pid) kill(w.pid, SIGKILL);
      kill_at_ = clock::time_point::max();
    }
    report_readiness();
  }
  spdlog::info("supervisor: every worker has stopped");
  return failed_ ? 1 : 0;
}

void supervisor::start(unsigned w) {
  auto& wk = workers_[w];
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // SIGCHLD as before; SIGHUP/SIGTERM/SIGINT stay blocked (pending) until
    // the worker's server has its handlers (server::run lets them in): one
    // arriving while the worker starts is then acted on, not fatal.
    sigset_t mask = before_;
    sigdelset(&mask, SIGCHLD);
    add_server_signals(mask);
    sigprocmask(SIG_SETMASK, &mask, nullptr);
    // The supervisor gone (killed), its workers drain and stop instead of serving on unsupervised.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) std::_Exit(0);
    forget_notify_socket();
    std::exit(run_worker_(w, cfg_));
  }
  wk.started = clock::now();
  if (pid < 0) {
    wk.delay = std::min<clock::duration>(std::max<clock::duration>(wk.delay * 2, restart_delay_first), restart_delay_max);
    wk.restart_at = wk.started + wk.delay;
    spdlog::error("supervisor: cannot start worker {}: {}; trying again in {}", w, std::strerror(errno), seconds(wk.delay));
    return;
  }
  wk.pid = pid;
  spdlog::info("supervisor: worker {} is process {}", w, pid);
}

void supervisor::reap(pid_t theirs) {
  // Every child that ended, one at a time (waitid's WNOWAIT looks before
  // anything is collected): a worker, or a process the supervisor adopted
  // as process 1 of a container (one a policy left running: never left a
  // zombie), but not `theirs`, a reload's check, which check_config
  // collects itself (and after which this runs again).
  for (;;) {
    siginfo_t ended{};
    if (waitid(P_ALL, 0, &ended, WEXITED | WNOHANG | WNOWAIT) != 0 || ended.si_pid == 0) return;
    if (theirs != 0 && ended.si_pid == theirs) return;
    int status = 0;
    const pid_t pid = waitpid(ended.si_pid, &status, WNOHANG);
    if (pid != ended.si_pid) return;
    const auto it = std::find_if(workers_.begin(), workers_.end(), [pid](const worker& w) { return w.pid == pid; });
    if (it == workers_.end()) continue;  // (an adopted one: nothing more to do)
    const auto w = static_cast<unsigned>(it - workers_.begin());
    const bool was_ready = clients_.ready(w);
    // Its sessions are gone with it: their connections no longer count against their clients.
    clients_.forget_worker(w);
    it->pid = 0;
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (stopping_) {
      if (!clean) failed_ = true;
      spdlog::log(clean ? spdlog::level::info : spdlog::level::err, "supervisor: worker {} (process {}) {}", w, pid,
                  describe(status));
      continue;
    }
    if (it->first && !was_ready && WIFEXITED(status)) {
      // It said why (cannot listen, policies that do not load): as a single process would, give up.
      spdlog::critical("supervisor: worker {} (process {}) could not start ({}); stopping", w, pid, describe(status));
      failed_ = true;
      stop(SIGTERM);
      continue;
    }
    it->first = false;
    const auto now = clock::now();
    it->delay = now - it->started >= stable_run
                    ? clock::duration::zero()
                    : std::min<clock::duration>(std::max<clock::duration>(it->delay * 2, restart_delay_first),
                                                restart_delay_max);
    it->restart_at = now + it->delay;
    spdlog::error("supervisor: worker {} (process {}) {}; its connections were dropped; restarting it in {}", w, pid,
                  describe(status), seconds(it->delay));
  }
}

void supervisor::reload() {
  if (stopping_) return;
  notify_reloading("reloading " + cfg_->file.string());
  const auto keep_running = [this](const std::vector<std::string>& problems) {
    for (const auto& p : problems) spdlog::error("reload: {}", p);
    spdlog::error("reload: keeping the running configuration");
    metrics::count(metrics::family::reloads_total, {"failed"});  // (the workers count the ones they make)
    if (started_ && !reloading_) notify_ready(status() + "; the last reload was refused (see the log)");
  };
  // Checked once here, so that a bad file is reported once, not by every
  // worker: the config (load_config), then what needs the policies, the
  // certificates and the users file, in a --check-config child.
  std::shared_ptr<const config> fresh;
  try {
    fresh = load_config(cfg_->file);
  } catch (const config_error& e) {
    keep_running(e.problems());
    return;
  } catch (const std::exception& e) {  // anything else load_config may throw: the daemon serves on
    keep_running({cfg_->file.string() + ": " + e.what()});
    return;
  }
  if (!cfg_->server.listen_tls.empty() && !fresh->tls.enabled) {
    keep_running({"the listen_tls ports stay open until a restart and need [tls] cert and key"});
    return;
  }
  // While the check runs (up to check_timeout), a worker that dies is
  // reaped and restarted as in run(): its clients must not wait for a slow
  // policy import. A TERM or INT abandons the check (check_config).
  const auto tend_workers = [this](pid_t check) {
    sigset_t child;
    sigemptyset(&child);
    sigaddset(&child, SIGCHLD);
    const timespec now_only{0, 0};
    if (sigtimedwait(&child, nullptr, &now_only) == SIGCHLD) reap(check);
    const auto now = clock::now();
    for (unsigned w = 0; w < workers_.size() && !stopping_; ++w)
      if (!workers_[w].pid && now >= workers_[w].restart_at) start(w);
    return stopping_;
  };
  auto problems = check_config(fresh->file, before_, tend_workers);
  reap();  // what ended behind the check (its SIGCHLD may have been taken meanwhile)
  if (!problems.empty()) {
    keep_running(problems);
    return;
  }
  if (worker_count(fresh->server) != workers_.size())
    spdlog::warn("reload: server.workers changed; that takes effect on restart");
  if (fresh->server.user != cfg_->server.user) spdlog::warn("reload: server.user changed; that takes effect on restart");
  // For the workers started from now on (a crashed one restarted): the new
  // settings, but those of start-up that a reload does not change (a
  // restarted worker binding new listen addresses would serve them alone, or
  // fail for ever on a port taken; one of other threads or user would differ
  // from its siblings).
  cfg_ = with_restart_only_settings_of(*cfg_, *fresh);
  // Each count read before its SIGHUP: the reload after it moves the count.
  reload_waits_.clear();
  for (unsigned w = 0; w < workers_.size(); ++w) {
    if (!workers_[w].pid) continue;
    reload_waits_.push_back({w, workers_[w].pid, clients_.reloads(w), clients_.refused_reloads(w)});
    kill(workers_[w].pid, SIGHUP);
  }
  reloading_ = true;
  reload_deadline_ = clock::now() + check_timeout;
}

std::size_t supervisor::serving() const {
  std::size_t n = 0;
  for (unsigned w = 0; w < workers_.size(); ++w)
    if (workers_[w].pid && clients_.ready(w)) ++n;
  return n;
}

void supervisor::report_readiness() {
  if (stopping_) return;
  const std::size_t ready = serving();
  if (reloading_) {
    // A worker that died meanwhile is restarted with the new configuration: nothing to wait for.
    const auto finished = [&](const reload_wait& r) {
      return workers_[r.worker].pid != r.pid || clients_.reloads(r.worker) != r.reloads_before;
    };
    const auto unfinished = std::count_if(reload_waits_.begin(), reload_waits_.end(), std::not_fn(finished));
    if (unfinished > 0 && clock::now() < reload_deadline_) return;
    if (unfinished > 0)
      spdlog::warn("reload: {} of {} workers have not finished their reload within {} s (a policy's hook or import "
                   "still busy?); they run their previous configuration until they do",
                   unfinished, reload_waits_.size(), check_timeout.count());
    reloading_ = false;
    // A worker that refused what the check passed (a policy failing to import
    // there) keeps its old configuration: the daemon now runs two.
    const auto refused = std::count_if(reload_waits_.begin(), reload_waits_.end(), [&](const reload_wait& r) {
      return workers_[r.worker].pid == r.pid && clients_.refused_reloads(r.worker) != r.refused_before;
    });
    if (refused > 0)
      spdlog::error("reload: {} of {} workers refused {} and keep their previous configuration (see their lines above)",
                    refused, reload_waits_.size(), cfg_->file.string());
    if (started_) {
      std::string told = status();
      if (refused > 0) told += fmt::format("; reload refused by {} of {} workers (see the log)", refused, reload_waits_.size());
      if (unfinished > 0)
        told += fmt::format("; reload not finished by {} of {} workers (see the log)", unfinished, reload_waits_.size());
      if (refused == 0 && unfinished == 0) told += "; reloaded " + cfg_->file.string();
      notify_ready(told);
      ready_told_ = ready;
      return;
    }
  }
  if (!started_) {
    if (ready < workers_.size()) return;
    started_ = true;
    ready_told_ = ready;
    notify_ready(status());
    return;
  }
  if (ready != ready_told_) {
    ready_told_ = ready;
    notify_status(status());
  }
}

std::string supervisor::status() const {
  const std::size_t ready = serving();
  if (ready == workers_.size()) return fmt::format("serving on {} with {} workers", listening_, ready);
  return fmt::format("serving on {} with {} of {} workers (starting the others)", listening_, ready, workers_.size());
}

void supervisor::stop(int sig) {
  if (!stopping_) {
    spdlog::info("supervisor: signal {}: stopping every worker", sig == SIGINT ? "INT" : "TERM");
    notify_stopping("stopping: the workers drain their sessions");
    stopping_ = true;
    kill_at_ = clock::now() + cfg_->server.shutdown_grace + stop_margin;
  }
  for (const auto& w : workers_)
    if (w.pid) kill(w.pid, sig);
}

std::size_t supervisor::running() const {
  return static_cast<std::size_t>(std::count_if(workers_.begin(), workers_.end(), [](const worker& w) { return w.pid != 0; }));
}

}  // namespace portcullis
