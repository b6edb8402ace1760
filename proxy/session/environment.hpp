// What a session runs in: the generation of settings it took at its start
// (config, policy, certificates, relay rules, users, and where mail goes),
// plus what every session shares with the others: the pool for blocking
// work, the failed-login records and the shutdown flag.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

#include "asio.hpp"
#include "auth/users_file.hpp"
#include "config/config.hpp"
#include "net/network.hpp"
#include "net/tls_context.hpp"
#include "policy/policy.hpp"
#include "session/auth_failures.hpp"
#include "session/relay_guard.hpp"
#include "upstream/upstream.hpp"

namespace portcullis {

class session_log;

// Opens the session's way to the upstream (not yet connected: it connects at
// the first MAIL). The server makes SMTP or Maildir ones; tests script their own.
using upstream_factory = std::function<std::unique_ptr<upstream>(const session_log& log, const connection_state& client,
                                                                  asio::any_io_executor io)>;

// What SIGHUP rebuilds together, and a session holds whole from start to end:
// one snapshot, never a mix of two reloads.
struct generation {
  std::shared_ptr<const config> cfg;
  std::shared_ptr<policy> pol;
  std::shared_ptr<tls_server_context> tls;            // null without [tls]
  std::shared_ptr<const relay_guard> relay;
  std::shared_ptr<const auth::users_file> users;      // null without [auth] users_file
  std::shared_ptr<const network_list> proxy_trusted;  // who may send a PROXY header
  upstream_factory make_upstream;
};

class session_environment {
 public:
  explicit session_environment(std::shared_ptr<const generation> g) : current_(std::move(g)) {}

  std::shared_ptr<const generation> current() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void replace(std::shared_ptr<const generation> g) {
    std::lock_guard lock(mutex_);
    current_ = std::move(g);
  }

  asio::thread_pool& blocking_pool() { return blocking_; }
  auth_failures& failed_logins() { return auth_failures_; }
  bool stopping() const { return stopping_.load(); }
  void set_stopping() { stopping_ = true; }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const generation> current_;
  auth_failures auth_failures_;
  asio::thread_pool blocking_{2};  // file I/O (maildir), crypt(3); never an I/O thread
  std::atomic<bool> stopping_{false};
};

}  // namespace portcullis
