// What every session shares with the server: the current config snapshot,
// the policy, the pool for blocking work, and the shutdown flag.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include "asio.hpp"
#include "config/config.hpp"
#include "net/network.hpp"
#include "net/tls_context.hpp"
#include "auth/users_file.hpp"
#include "policy/policy.hpp"
#include "server/auth_failures.hpp"
#include "session/relay_guard.hpp"

namespace portcullis {

class server_context {
 public:
  // What SIGHUP rebuilds together: a new config brings its policies and certificates.
  struct generation {
    std::shared_ptr<const config> cfg;
    std::shared_ptr<policy> pol;
    std::shared_ptr<tls_server_context> tls;           // null without [tls]
    std::shared_ptr<tls_client_context> upstream_tls;  // null for a maildir: upstream or starttls = "never"
    std::shared_ptr<const relay_guard> relay;
    std::shared_ptr<const auth::users_file> users;     // null without [auth] users_file
    std::shared_ptr<const network_list> proxy_trusted;  // who may send a PROXY header
  };

  explicit server_context(generation g) : current_(std::move(g)) {}

  // A session takes one snapshot at its start: SIGHUP changes only new sessions.
  std::shared_ptr<const config> current_config() const {
    std::lock_guard lock(mutex_);
    return current_.cfg;
  }
  std::shared_ptr<policy> current_policy() const {
    std::lock_guard lock(mutex_);
    return current_.pol;
  }
  std::shared_ptr<tls_client_context> current_upstream_tls() const {
    std::lock_guard lock(mutex_);
    return current_.upstream_tls;
  }
  // The server's TLS context; null without [tls].
  std::shared_ptr<const relay_guard> current_relay() const {
    std::lock_guard lock(mutex_);
    return current_.relay;
  }
  std::shared_ptr<const auth::users_file> current_users() const {
    std::lock_guard lock(mutex_);
    return current_.users;
  }
  auth_failures& failed_logins() { return auth_failures_; }
  std::shared_ptr<const network_list> current_proxy_trusted() const {
    std::lock_guard lock(mutex_);
    return current_.proxy_trusted;
  }
  std::shared_ptr<tls_server_context> current_tls() const {
    std::lock_guard lock(mutex_);
    return current_.tls;
  }
  void replace(generation g) {
    std::lock_guard lock(mutex_);
    current_ = std::move(g);
  }

  asio::thread_pool& blocking_pool() { return blocking_; }
  bool stopping() const { return stopping_.load(); }
  void set_stopping() { stopping_ = true; }

 private:
  mutable std::mutex mutex_;
  generation current_;
  auth_failures auth_failures_;
  asio::thread_pool blocking_{2};  // file I/O (maildir); never an I/O thread
  std::atomic<bool> stopping_{false};
};

}  // namespace portcullis
