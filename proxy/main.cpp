// portcullis: the SMTP policy proxy daemon (see CONTRACT.md, "Command line").
#include <malloc.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "checks/arc_sealer.hpp"
#include "checks/dkim_signer.hpp"
#include "config/config.hpp"
#include "crash_report.hpp"
#include "log.hpp"
#include "metrics/metrics.hpp"
#include "auth/users_file.hpp"
#include "net/tls_context.hpp"
#include "policy/python_engine.hpp"
#include "server/privileges.hpp"
#include "server/server.hpp"
#include "server/server_signals.hpp"
#include "server/supervisor.hpp"
#include "session/client_table.hpp"
#include "store/shared_kv.hpp"

namespace {

constexpr const char* usage =
    "usage: portcullis --config FILE        run in the foreground, log to stderr\n"
    "       portcullis --check-config FILE  check the config, print problems, exit 0 or 1\n"
    "       portcullis --version\n"
    "       portcullis --help                print this\n";

// Every check (the cross-checks between tables too) is load_config's, so
// that start-up, --check-config and a SIGHUP reload refuse the same files.
std::shared_ptr<const portcullis::config> load_or_report(const char* file) {
  try {
    return portcullis::load_config(file);
  } catch (const portcullis::config_error& e) {
    for (const auto& p : e.problems()) std::cerr << p << "\n";
  } catch (const std::exception& e) {  // (not a config problem: out of memory, ...) still told, not an abort
    std::cerr << file << ": " << e.what() << "\n";
  }
  return nullptr;
}

spdlog::level::level_enum spdlog_level(portcullis::log_level l) {
  using portcullis::log_level;
  switch (l) {
    case log_level::trace: return spdlog::level::trace;
    case log_level::debug: return spdlog::level::debug;
    case log_level::info: return spdlog::level::info;
    case log_level::warning: return spdlog::level::warn;
    case log_level::error: return spdlog::level::err;
    case log_level::critical: return spdlog::level::critical;
  }
  return spdlog::level::info;
}

// Set by the supervisor for the --check-config child of a reload: a changed
// server.user takes effect on restart (the reload warns), so that check does
// not ask whether this process could become it.
constexpr const char* reload_check_env = "PORTCULLIS_RELOAD_CHECK";

// server.user, looked up (the config check did too, but the database may
// have changed since); nullopt without it, or when it is the user the daemon
// runs as already (root started as root, or the unit's User=): nothing to
// change. Throws when it cannot be used.
std::optional<portcullis::run_as> user_to_run_as(const portcullis::config& cfg) {
  if (cfg.server.user.empty()) return std::nullopt;
  auto user = portcullis::lookup_user(cfg.server.user);
  if (!user) throw std::runtime_error("\"" + cfg.server.user + "\": no such user");
  if (user->uid == geteuid()) return std::nullopt;
  if (geteuid() != 0)
    throw std::runtime_error(fmt::format("\"{}\" needs the daemon started as root (it runs as uid {}); "
                                         "start it as root or as that user, or remove server.user",
                                         user->name, geteuid()));
  return user;
}

// "FILE:LINE: table.key: " of a problem found after load_config: the line of
// the key, else of the nearest table above it that is written, else none.
std::string located(const portcullis::config& cfg, const std::vector<std::string>& path) {
  std::string name;
  for (const auto& step : path)
    name += step.find_first_not_of("0123456789") == std::string::npos ? "[" + step + "]"
                                                                      : (name.empty() ? "" : ".") + step;
  for (auto upto = path.size(); upto > 0; --upto)
    if (auto where = portcullis::config_line_of(cfg, {path.begin(), path.begin() + static_cast<std::ptrdiff_t>(upto)}))
      return *where + name + ": ";
  return cfg.file.string() + ": " + name + ": ";
}

// Run as `user`: what a reload reads again must stay readable, where
// messages spill must be writable (the rest is read at start as that user
// anyway). Every problem, located.
std::vector<std::string> access_problems_as(const portcullis::run_as& user, const portcullis::config& cfg) {
  std::vector<std::string> problems;
  if (access(cfg.file.c_str(), R_OK) != 0) {
    const int error = errno;
    problems.push_back(fmt::format("{}: user {} cannot read {} ({}); a SIGHUP reload reads it again", cfg.file.string(),
                                   user.name, cfg.file.string(), std::strerror(error)));
  }
  if (auto why = portcullis::spill_directory_problem(cfg.server.message_spill_dir))
    problems.push_back(located(cfg, {"server", "message_spill_dir"}) + "as user " + user.name + ", " + *why);
  return problems;
}

void check_access_as(const portcullis::run_as& user, const portcullis::config& cfg) {
  const auto problems = access_problems_as(user, cfg);
  if (!problems.empty()) throw std::runtime_error(problems.front());
}

// --check-config after load_config: whether this process could start with
// it (server.user), then everything read at start-up that load_config does
// not open (certificates, the users file, signing keys, the policies), as
// the user who will read it. Every problem, as "FILE:LINE: key: what".
std::vector<std::string> start_up_problems(const portcullis::config& cfg) {
  std::vector<std::string> problems;
  const auto add = [&](const std::vector<std::string>& path, const std::string& what) {
    problems.push_back(located(cfg, path) + what);
  };
  // As root with server.user: checked as that user, who will read these files.
  if (geteuid() != 0 && std::getenv(reload_check_env) != nullptr) {
    // (A reload: the user does not change; see reload_check_env.)
  } else {
    try {
      if (const auto user = user_to_run_as(cfg)) {
        portcullis::become_user(*user, false);
        const auto more = access_problems_as(*user, cfg);
        problems.insert(problems.end(), more.begin(), more.end());
      }
    } catch (const std::exception& e) {
      add({"server", "user"}, e.what());
    }
  }
  // Each certificate pair alone, so that every bad one is told.
  if (cfg.tls.enabled) {
    const auto pair_problem = [&](const std::filesystem::path& cert, const std::filesystem::path& key,
                                  std::vector<std::string> where) {
      portcullis::tls_config one;
      one.enabled = true;
      one.cert = cert;
      one.key = key;
      try {
        portcullis::tls_server_context tls(one);
      } catch (const portcullis::tls_error& e) {
        // Its message starts with the file it could not use.
        const std::string what = e.what();
        where.push_back(what.rfind(key.string() + ":", 0) == 0 ? "key" : "cert");
        add(where, what);
      }
    };
    pair_problem(cfg.tls.cert, cfg.tls.key, {"tls"});
    for (std::size_t i = 0; i < cfg.tls.certificates.size(); ++i)
      pair_problem(cfg.tls.certificates[i].cert, cfg.tls.certificates[i].key, {"tls", "certificates", std::to_string(i)});
  }
  if (cfg.upstream.tls_verify) {
    try {
      portcullis::tls_client_context upstream_tls(cfg.upstream);
    } catch (const portcullis::tls_error& e) {
      std::string what = e.what();
      const std::string prefix = "upstream.tls_ca_file: ";
      if (what.rfind(prefix, 0) == 0) what.erase(0, prefix.size());
      add({"upstream", cfg.upstream.tls_ca_file.empty() ? "tls_verify" : "tls_ca_file"}, what);
    }
  }
  if (!cfg.auth.users_file.empty()) {
    try {
      const auto users = portcullis::auth::users_file::load(cfg.auth.users_file);
      for (const auto& w : users.warnings()) spdlog::warn("{}", w);  // (mixed hash costs: not a problem)
    } catch (const portcullis::auth::users_file_error& e) {
      for (const auto& p : e.problems()) add({"auth", "users_file"}, p);
    }
  }
  if (cfg.dkim_sign.enabled) {
    // Each key alone; the table's own key_file comes first, then [[dkim_sign.keys]].
    const bool own = portcullis::config_line_of(cfg, {"dkim_sign", "key_file"}).has_value();
    for (std::size_t i = 0; i < cfg.dkim_sign.keys.size(); ++i) {
      auto one = cfg.dkim_sign;
      one.keys = {cfg.dkim_sign.keys[i]};
      try {
        portcullis::checks::dkim_signer signer(one);
      } catch (const std::runtime_error& e) {
        add(own && i == 0 ? std::vector<std::string>{"dkim_sign", "key_file"}
                          : std::vector<std::string>{"dkim_sign", "keys", std::to_string(i - (own ? 1 : 0)), "key_file"},
            e.what());
      }
    }
  }
  if (cfg.arc_seal.enabled) {
    try {
      portcullis::checks::arc_sealer sealer(cfg.arc_seal, cfg.server.hostname);
    } catch (const std::runtime_error& e) {
      add({"arc_seal", "key_file"}, e.what());
    }
  }
  // Loading every policy is part of the check: a policy that does not import
  // fails it. (The policies load together, in one interpreter: the first
  // that fails is told.)
  if (!cfg.policy.files.empty()) {
    try {
      portcullis::python_engine engine(cfg);
    } catch (const std::exception& e) {
      // A setting a policy refused in its own table is told at its line of
      // the config (portcullis._engine finds it): not under policy.files.
      const std::string what = e.what(), own = cfg.file.string() + ":";
      if (what.starts_with(own) && what.size() > own.size() && std::isdigit(static_cast<unsigned char>(what[own.size()])))
        problems.push_back(what);
      else
        add({"policy", "files"}, what);
    }
  }
  return problems;
}

// glibc gives threads that contend for malloc arenas of their own, up to 8
// per core, and each arena keeps the high-water mark of what was freed in it
// (message buffers of a MiB). The daemon has many threads (I/O, checks,
// policy) but little contention: two arenas cut the peak RSS of 20 sessions
// relaying 1 MiB messages by about 5 MiB at no cost in CPU (bench/bench.py).
//
// glibc also raises its mmap threshold to the largest block freed, so after
// the first big message the stores' buffers (up to message_memory_threshold)
// come from the arenas and stay there once freed. A fixed threshold of
// 128 KiB (glibc's starting value) gives them back at free: 57.1 -> 53.2 MiB
// peak RSS in the same case, the CPU per message within the noise.
//
// Set before any thread exists; the environment (MALLOC_ARENA_MAX,
// MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES) still decides what it names.
void tune_malloc() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const auto set_by_environment = [tunables](const char* variable, const char* tunable) {
    return std::getenv(variable) != nullptr || (tunables != nullptr && std::strstr(tunables, tunable) != nullptr);
  };
  if (!set_by_environment("MALLOC_ARENA_MAX", "arena_max")) mallopt(M_ARENA_MAX, 2);
  if (!set_by_environment("MALLOC_MMAP_THRESHOLD_", "mmap_threshold")) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
}

}  // namespace

int main(int argc, char** argv) {
  tune_malloc();
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::cout << usage;  // asked for: stdout and success; a wrong command line gets it on stderr, exit 2
    return 0;
  }
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::cout << "portcullis " << PORTCULLIS_VERSION << "\n";
    return 0;
  }
  if (argc != 3 || (std::strcmp(argv[1], "--config") != 0 && std::strcmp(argv[1], "--check-config") != 0)) {
    std::cerr << usage;
    return 2;
  }
  const bool check_only = std::strcmp(argv[1], "--check-config") == 0;
  auto cfg = load_or_report(argv[2]);
  if (!cfg) return 1;
  portcullis::init_logging();
  // log.level, unless PORTCULLIS_LOG_LEVEL (read by init_logging) says otherwise.
  if (!std::getenv("PORTCULLIS_LOG_LEVEL")) spdlog::set_level(spdlog_level(cfg->log.level));
  if (cfg->log.format == portcullis::log_format::json) portcullis::log_as_json();
  if (check_only) {
    const auto problems = start_up_problems(*cfg);
    for (const auto& p : problems) std::cerr << p << "\n";
    if (!problems.empty()) return 1;
    std::cout << argv[2] << ": ok\n";
    return 0;
  }
  portcullis::install_crash_report();
  std::signal(SIGPIPE, SIG_IGN);
  // A spill file past RLIMIT_FSIZE: the write fails with EFBIG and the
  // client gets 452 4.3.1, instead of the signal killing the daemon.
  std::signal(SIGXFSZ, SIG_IGN);
  // SIGUSR1, SIGUSR2 and SIGALRM mean nothing to the daemon (README
  // "Signals"), and their default action would kill it (a stray `kill
  // -USR1`, a log rotator's habit): caught by a handler that does nothing,
  // in the supervisor and (inherited by fork) every worker. Caught, not
  // SIG_IGN: exec resets a handler, so a process a policy starts gets their
  // default as usual, where an ignored signal would stay ignored in it.
  // SIGQUIT keeps its default, a core dump.
  struct sigaction nothing {};
  nothing.sa_handler = [](int) {};
  nothing.sa_flags = SA_RESTART;
  sigemptyset(&nothing.sa_mask);
  for (const int sig : {SIGUSR1, SIGUSR2, SIGALRM}) sigaction(sig, &nothing, nullptr);
  const unsigned workers = portcullis::worker_count(cfg->server);
  spdlog::info("portcullis {} starting as {}{}", PORTCULLIS_VERSION, cfg->server.hostname,
               workers > 1 ? fmt::format(" with {} workers", workers) : std::string());
  // Bound, then (with server.user) that user, and then no capability left:
  // only then do the interpreter, the policies and every file they read start.
  const auto serve = [](std::shared_ptr<const portcullis::config> c, portcullis::client_table& clients, unsigned worker,
                        const std::optional<portcullis::run_as>& user) {
    std::vector<portcullis::bound_listener> listeners;
    try {
      listeners = portcullis::bind_listeners(*c, clients.workers() > 1);
    } catch (const std::exception& e) {
      spdlog::critical("{}", e.what());
      return 1;
    }
    try {
      if (user) {
        portcullis::become_user(*user, false);
        check_access_as(*user, *c);
      }
      portcullis::drop_capabilities();
      portcullis::server daemon(std::move(c), clients, worker, std::move(listeners));
      return daemon.run();
    } catch (const std::exception& e) {
      portcullis::log_lines(spdlog::level::critical, "cannot start: ", e.what());
      return 1;
    }
  };
  try {
    std::optional<portcullis::run_as> user;
    try {
      user = user_to_run_as(*cfg);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(located(*cfg, {"server", "user"}) + e.what());
    }
    if (!user && geteuid() == 0 && !cfg->policy.files.empty())
      spdlog::warn("policies run as root; set server.user");
    // Before any fork: every worker inherits these shared mappings.
    portcullis::client_table clients(workers);
    portcullis::make_process_kv(cfg->store.memory_entries);  // pc.store's memory backend
    portcullis::metrics::make_process_metrics();             // one scrape sums every worker
    // One process, as before: no supervisor. Its signals wait, blocked, until
    // its server handles them, as a worker's do (server_signals.hpp).
    if (workers == 1) {
      portcullis::mask_server_signals(SIG_BLOCK);
      return serve(std::move(cfg), clients, 0, user);
    }
    // The supervisor becomes the user before it forks, keeping only the
    // right to bind a port below 1024: every worker (a restarted one too)
    // binds its own SO_REUSEPORT sockets, then drops even that
    // (privileges.hpp). Root is held by no process that outlives start-up.
    if (user) {
      portcullis::become_user(*user, true);
      check_access_as(*user, *cfg);
    }
    // The workers' SO_REUSEPORT sockets would join those of another daemon
    // of this user on the same addresses (one started twice by mistake, an
    // old one still running) and quietly share its clients. Bound once here
    // without it and let go: an address in use fails as one process's does.
    try {
      portcullis::bind_listeners(*cfg, false);
    } catch (const std::exception& e) {
      spdlog::critical("{}", e.what());  // (as a single process says it)
      return 1;
    }
    // Forked before any thread or the interpreter starts (supervisor.hpp).
    portcullis::supervisor parent(std::move(cfg), clients,
                                  [&](unsigned worker, std::shared_ptr<const portcullis::config> c) {
                                    portcullis::log_as_worker();
                                    return serve(std::move(c), clients, worker, std::nullopt);
                                  });
    return parent.run();
  } catch (const std::exception& e) {
    portcullis::log_lines(spdlog::level::critical, "cannot start: ", e.what());
    return 1;
  }
}
