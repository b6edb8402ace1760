// What a session runs in: the generation of settings it took at its start
// (config, policy, certificates, relay rules, users, and where mail goes),
// plus what every session shares with the others: the pool for blocking
// work, the failed-login records, the memory budget for messages and the
// shutdown flag.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

#include "asio.hpp"
#include "auth/users_file.hpp"
#include "checks/sender_checks.hpp"
#include "config/config.hpp"
#include "net/network.hpp"
#include "net/tls_context.hpp"
#include "policy/policy.hpp"
#include "session/auth_failures.hpp"
#include "session/relay_guard.hpp"
#include "store/message_store.hpp"
#include "upstream/upstream.hpp"

namespace portcullis {

namespace dns {
class resolver;
}
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
  std::shared_ptr<checks::sender_checks> checks;      // null unless [checks] asks for one
  std::shared_ptr<checks::mail_signer> signer;        // null without [dkim_sign]
  std::shared_ptr<checks::mail_sealer> sealer;        // null without [arc_seal]
  std::shared_ptr<dns::resolver> resolver;            // of the checks and a named upstream; null when neither
  upstream_factory make_upstream;
};

class session_environment {
 public:
  // `g` may be null until the first replace() (the server makes its first generation after this).
  explicit session_environment(std::shared_ptr<const generation> g) : current_(std::move(g)) { take_limits(); }

  std::shared_ptr<const generation> current() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void replace(std::shared_ptr<const generation> g) {
    std::lock_guard lock(mutex_);
    current_ = std::move(g);
    take_limits();
  }

  asio::thread_pool& blocking_pool() { return blocking_; }
  auth_failures& failed_logins() { return auth_failures_; }
  // server.message_memory_budget, shared by every session's messages (a store
  // holds it too: it may outlive its session in a policy job).
  const std::shared_ptr<message_memory>& messages_memory() const { return message_memory_; }
  bool stopping() const { return stopping_.load(); }
  void set_stopping() { stopping_ = true; }

 private:
  // One budget across reloads: the bytes held now stay counted, the limit is the new one.
  void take_limits() {
    if (current_ && current_->cfg) message_memory_->set_limit(current_->cfg->server.message_memory_budget);
  }

  mutable std::mutex mutex_;
  std::shared_ptr<const generation> current_;
  auth_failures auth_failures_;
  std::shared_ptr<message_memory> message_memory_ =
      std::make_shared<message_memory>(server_config{}.message_memory_budget);
  asio::thread_pool blocking_{2};  // file I/O (maildir), crypt(3); never an I/O thread
  std::atomic<bool> stopping_{false};
};

}  // namespace portcullis
