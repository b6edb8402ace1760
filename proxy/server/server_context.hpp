// What every session shares with the server: the current config snapshot,
// the policy, the pool for blocking work, and the shutdown flag.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include "asio.hpp"
#include "config/config.hpp"
#include "net/tls_context.hpp"
#include "policy/policy.hpp"

namespace portcullis {

class server_context {
 public:
  server_context(std::shared_ptr<const config> cfg, std::shared_ptr<policy> pol, std::shared_ptr<tls_server_context> tls)
      : config_(std::move(cfg)), policy_(std::move(pol)), tls_(std::move(tls)) {}

  // A session takes one snapshot at its start: SIGHUP changes only new sessions.
  std::shared_ptr<const config> current_config() const {
    std::lock_guard lock(mutex_);
    return config_;
  }
  std::shared_ptr<policy> current_policy() const {
    std::lock_guard lock(mutex_);
    return policy_;
  }
  // The server's TLS context; null without [tls].
  std::shared_ptr<tls_server_context> current_tls() const {
    std::lock_guard lock(mutex_);
    return tls_;
  }
  void replace(std::shared_ptr<const config> cfg, std::shared_ptr<policy> pol, std::shared_ptr<tls_server_context> tls) {
    std::lock_guard lock(mutex_);
    config_ = std::move(cfg);
    policy_ = std::move(pol);
    tls_ = std::move(tls);
  }

  asio::thread_pool& blocking_pool() { return blocking_; }
  bool stopping() const { return stopping_.load(); }
  void set_stopping() { stopping_ = true; }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const config> config_;
  std::shared_ptr<policy> policy_;
  std::shared_ptr<tls_server_context> tls_;
  asio::thread_pool blocking_{2};  // file I/O (maildir); never an I/O thread
  std::atomic<bool> stopping_{false};
};

}  // namespace portcullis
