// The daemon: listeners, admission limits, signals (SIGHUP reload,
// SIGTERM/SIGINT drain), and the I/O threads that run every session.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "asio.hpp"
#include "server/server_signals.hpp"
#include "session/environment.hpp"

namespace portcullis {

class session;
class python_engine;
class upstream_pool;
namespace dns {
class resolver;
}
namespace checks {
class sender_checker;
}

class client_table;
class metrics_listener;
struct http_answer;

// What a bound socket serves.
enum class listener_role { smtp, implicit_tls, metrics };

// A socket bound before the server that listens on it exists: before the
// daemon drops to server.user (port 25 needs root or CAP_NET_BIND_SERVICE).
// It listens only once the server is ready to serve (server::run), so that
// a connection is never queued to a daemon still loading its policies.
class bound_listener {
 public:
  bound_listener(int fd, tcp protocol, std::string address, listener_role role)
      : fd_(fd), protocol_(protocol), address_(std::move(address)), role_(role) {}
  bound_listener(bound_listener&& o) noexcept
      : fd_(std::exchange(o.fd_, -1)), protocol_(o.protocol_), address_(std::move(o.address_)), role_(o.role_) {}
  bound_listener& operator=(bound_listener&&) = delete;
  ~bound_listener();
  tcp protocol() const { return protocol_; }
  const std::string& address() const { return address_; }
  listener_role role() const { return role_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
  tcp protocol_;
  std::string address_;  // as configured
  listener_role role_;
};

// Binds every listen and listen_tls address of `cfg`, and [metrics] listen,
// with SO_REUSEPORT when several workers each bind their own; an IPv6
// address takes IPv6 connections only (IPV6_V6ONLY: "[::]:25" beside
// "0.0.0.0:25"). Throws std::runtime_error("cannot listen on ADDRESS: why").
std::vector<bound_listener> bind_listeners(const config& cfg, bool reuse_port);

class server {
 public:
  // Worker `worker` of clients.workers(), serving `listeners`: the counts per
  // client address live in `clients` (shared by every worker process).
  server(std::shared_ptr<const config> cfg, client_table& clients, unsigned worker, std::vector<bound_listener> listeners);
  ~server();
  // Listens and serves until SIGTERM/SIGINT and the drain are over. Returns the exit code.
  int run();

 private:
  awaitable<void> accept_loop(tcp::acceptor& acceptor, bool implicit_tls);
  awaitable<void> handle_signals();
  awaitable<void> drain();
  awaitable<void> refuse(tcp::socket socket, std::string reason, bool implicit_tls);
  void reload();
  // A reload is over, whatever its outcome: told to the supervisor (or systemd).
  void reload_done(bool accepted);
  // Everything a generation holds but its policy; throws (config_error,
  // tls_error, users_file_error, std::invalid_argument) when something cannot be used.
  std::shared_ptr<generation> make_generation(std::shared_ptr<const config> cfg);
  // Can the listeners open now serve sessions of `cfg`? The reason they cannot, if not.
  std::optional<std::string> cannot_serve_listeners(const config& cfg) const;
  // The sender checks `cfg` asks for (null: none), on the resolver its [dns] describes.
  // The resolver for `cfg`'s [dns]: the one in use when [dns] is the same (its
  // cache kept), else a new one; null without any nameserver to ask.
  std::shared_ptr<dns::resolver> resolver_for(const config& cfg);
  std::shared_ptr<checks::sender_checks> make_checks(const config& cfg, const std::shared_ptr<dns::resolver>& resolver);
  // From now on new sessions run in `g` (and pc.dns asks its resolver).
  void use_generation(std::shared_ptr<generation> g);
  // The policy for sessions of `cfg`: its Python policies of generation `loaded`, or none.
  std::shared_ptr<policy> make_policy(const config& cfg, std::uint64_t loaded);
  bool admit(const asio::ip::address& client, std::string& why);
  void release(const asio::ip::address& client, const std::string& id);
  std::string next_session_id();
  // [metrics] listen: /metrics and /healthz.
  http_answer answer_http(std::string_view path);

  client_table& clients_;
  unsigned worker_;
  asio::io_context io_;
  // HUP, TERM, INT: made before the policy engine, whose threads let them in
  // (python_engine.cpp let_stop_signals_in), so that one the kernel gives
  // such a thread is queued here, not fatal; and let go of (ignored) after it.
  server_signal_queue signals_;
  // Idle upstream connections shared by every session (they close before io_ stops: drain()).
  std::shared_ptr<upstream_pool> upstream_pool_;
  std::shared_ptr<python_engine> engine_;  // only with [policy] files; before env_, which uses it
  // The resolver and the sender checker of the last generation made, kept by
  // the next one while its settings are the same (a reload keeps the cache).
  std::shared_ptr<dns::resolver> resolver_;
  dns_config resolver_dns_;
  std::shared_ptr<checks::sender_checker> checker_;
  session_environment env_;
  struct listener {
    tcp::acceptor acceptor;
    std::string address;
    bool implicit_tls;
  };
  std::vector<listener> listeners_;
  std::optional<bound_listener> metrics_socket_;  // until run() serves it
  std::unique_ptr<metrics_listener> metrics_;
  // Reloads by SIGHUP order: started, and the newest installed (reload()).
  std::uint64_t reloads_started_ = 0;
  std::atomic<unsigned> tls_refusals_{0};  // refusals on implicit-TLS ports in progress
  std::uint64_t reload_installed_ = 0;
  // A reload that brought the first policies: the engine starts (the
  // interpreter, the import) on this thread, not on an I/O thread, which
  // would stop serving meanwhile; reloads wait until it is done.
  std::thread engine_starter_;
  std::atomic<bool> engine_starting_{false};

  std::mutex sessions_mutex_;  // guards the two below (sessions live on many threads)
  std::unordered_map<std::string, std::weak_ptr<session>> sessions_;
  std::size_t total_ = 0;  // of this process (clients_ counts those of every worker)
};

}  // namespace portcullis
