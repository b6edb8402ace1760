// portcullis: the SMTP policy proxy daemon (see CONTRACT.md, "Command line").
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "checks/arc_sealer.hpp"
#include "checks/dkim_signer.hpp"
#include "config/config.hpp"
#include "log.hpp"
#include "metrics/metrics.hpp"
#include "auth/users_file.hpp"
#include "net/tls_context.hpp"
#include "policy/python_engine.hpp"
#include "server/server.hpp"
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

}  // namespace

int main(int argc, char** argv) {
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
    {
      try {
        if (cfg->tls.enabled) portcullis::tls_server_context tls(cfg->tls);
        if (cfg->upstream.tls_verify) portcullis::tls_client_context upstream_tls(cfg->upstream);
        if (!cfg->auth.users_file.empty()) portcullis::auth::users_file::load(cfg->auth.users_file);
        if (cfg->dkim_sign.enabled) portcullis::checks::dkim_signer signer(cfg->dkim_sign);
        if (cfg->arc_seal.enabled) portcullis::checks::arc_sealer sealer(cfg->arc_seal, cfg->server.hostname);
      } catch (const portcullis::tls_error& e) {
        std::cerr << e.what() << "\n";
        return 1;
      } catch (const portcullis::auth::users_file_error& e) {
        for (const auto& p : e.problems()) std::cerr << p << "\n";
        return 1;
      } catch (const std::runtime_error& e) {  // a [dkim_sign] or [arc_seal] key that cannot be used
        std::cerr << argv[2] << ": " << e.what() << "\n";
        return 1;
      }
    }
    // Loading every policy is part of the check: a policy that does not import fails it.
    if (!cfg->policy.files.empty()) {
      try {
        portcullis::python_engine engine(*cfg);
      } catch (const std::exception& e) {
        std::cerr << argv[2] << ": policy.files: " << e.what() << "\n";
        return 1;
      }
    }
    std::cout << argv[2] << ": ok\n";
    return 0;
  }
  std::signal(SIGPIPE, SIG_IGN);
  // A spill file past RLIMIT_FSIZE: the write fails with EFBIG and the
  // client gets 452 4.3.1, instead of the signal killing the daemon.
  std::signal(SIGXFSZ, SIG_IGN);
  const unsigned workers = portcullis::worker_count(cfg->server);
  spdlog::info("portcullis {} starting as {}{}", PORTCULLIS_VERSION, cfg->server.hostname,
               workers > 1 ? fmt::format(" with {} workers", workers) : std::string());
  const auto serve = [](std::shared_ptr<const portcullis::config> c, portcullis::client_table& clients, unsigned worker) {
    try {
      portcullis::server daemon(std::move(c), clients, worker);
      return daemon.run();
    } catch (const std::exception& e) {
      spdlog::critical("cannot start: {}", e.what());
      return 1;
    }
  };
  try {
    // Before any fork: every worker inherits these shared mappings.
    portcullis::client_table clients(workers);
    portcullis::make_process_kv(cfg->store.memory_entries);  // pc.store's memory backend
    portcullis::metrics::make_process_metrics();             // one scrape sums every worker
    // One process, as before: no supervisor.
    if (workers == 1) return serve(std::move(cfg), clients, 0);
    // Forked before any thread or the interpreter starts (supervisor.hpp).
    portcullis::supervisor parent(std::move(cfg), clients,
                                  [&](unsigned worker, std::shared_ptr<const portcullis::config> c) {
                                    portcullis::log_as_worker();
                                    return serve(std::move(c), clients, worker);
                                  });
    return parent.run();
  } catch (const std::exception& e) {
    spdlog::critical("cannot start: {}", e.what());
    return 1;
  }
}
