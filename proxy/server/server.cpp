#include "server/server.hpp"

#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "bindings/core.hpp"
#include "checks/arc_sealer.hpp"
#include "checks/dkim_signer.hpp"
#include "checks/sender_checker.hpp"
#include "dns/resolver.hpp"
#include "log.hpp"
#include "metrics/metrics.hpp"
#include "net/io_pool.hpp"
#include "net/close_on_exec.hpp"
#include "net/network.hpp"
#include "net/proxy_reader.hpp"
#include "net/session_executor.hpp"
#include "policy/python_engine.hpp"
#include "policy/python_policy.hpp"
#include "server/metrics_listener.hpp"
#include "server/server_signals.hpp"
#include "server/service_notifier.hpp"
#include "session/client_table.hpp"
#include "session/session.hpp"
#include "upstream/upstream_pool.hpp"

namespace portcullis {

namespace {

constexpr std::chrono::seconds refusal_timeout{5};  // writing a 421 to a client we will not serve
// A refusal on an implicit-TLS port: its handshake, and the wait for the
// client's close_notify, kept short (refusals come when the daemon is at its
// limits), and at most this many at once: past it, closed with no word.
constexpr std::chrono::seconds refusal_tls_timeout{2};
constexpr unsigned max_tls_refusals = 32;
constexpr std::chrono::milliseconds drain_poll{50};
// After shutdown_grace, what sessions waiting in a transaction get to say 421 and end.
constexpr std::chrono::seconds last_moment{1};
// For I/O threads still in a plain hook once the context stopped (the policy engine gives its threads as long).
constexpr std::chrono::seconds io_thread_grace{5};

// For `systemctl status`.
std::string serving_status(const config& cfg) {
  std::vector<std::string> addresses = cfg.server.listen;
  for (const auto& l : cfg.server.listen_tls) addresses.push_back(l + " (implicit TLS)");
  return fmt::format("serving on {}", fmt::join(addresses, ", "));
}

// Null without [tls]; throws tls_error when a certificate or key cannot be used.
std::shared_ptr<tls_server_context> make_tls(const config& cfg) {
  return cfg.tls.enabled ? std::make_shared<tls_server_context>(cfg.tls) : nullptr;
}

// Null without [auth] users_file; throws auth::users_file_error listing file:line problems.
std::shared_ptr<const auth::users_file> load_users(const config& cfg) {
  if (!cfg.auth.enabled || cfg.auth.users_file.empty()) return nullptr;
  auto users = std::make_shared<const auth::users_file>(auth::users_file::load(cfg.auth.users_file));
  for (const auto& w : users->warnings()) spdlog::warn("{}", w);  // (mixed hash costs)
  return users;
}

// Null when nothing will speak TLS to the upstream.
std::shared_ptr<tls_client_context> make_upstream_tls(const config& cfg) {
  const auto& u = cfg.upstream;
  const bool wanted = u.scheme == upstream_config::kind::smtps ||
                      (u.scheme == upstream_config::kind::smtp && u.starttls != starttls_mode::never);
  return wanted ? std::make_shared<tls_client_context>(u) : nullptr;
}

}  // namespace

bound_listener::~bound_listener() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<bound_listener> bind_listeners(const config& cfg, bool reuse_port) {
  std::vector<bound_listener> out;
  asio::io_context scratch;  // only to open the sockets: the server's own context adopts them
  const auto bind = [&](const std::string& address, listener_role role, std::string_view what) {
    try {
      tcp::acceptor a(scratch);
      const auto ep = parse_endpoint(address);
      if (const auto ec = open_close_on_exec(a, ep.protocol())) throw boost::system::system_error(ec);
      a.set_option(tcp::acceptor::reuse_address(true));
      // Every worker listens on its own socket; the kernel spreads new
      // connections over them by a hash of the addresses (README "Workers").
      if (reuse_port) a.set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true));
      // "[::]:25" is IPv6's alone, as Postfix and nginx bind it: else it
      // takes "0.0.0.0:25" too, which then cannot bind (or, with
      // SO_REUSEPORT, shares IPv4 clients with it). An IPv4-mapped address
      // ([::ffff:192.0.2.1]:25) is IPv4's, and binds only without it.
      if (ep.protocol() == tcp::v6() && !ep.address().to_v6().is_v4_mapped()) a.set_option(asio::ip::v6_only(true));
      // Replies go out one write per batch (a whole pipelined group at
      // once): Nagle's algorithm would only hold the next batch back until
      // the client's delayed ACK of the previous one. Set on the listener,
      // every accepted connection inherits it (Linux copies the option):
      // no setsockopt per connection.
      a.set_option(tcp::no_delay(true));
      a.bind(ep);
      out.emplace_back(a.release(), ep.protocol(), address, role);
    } catch (const boost::system::system_error& e) {
      throw std::runtime_error(fmt::format("cannot listen on {}{}: {}", address, what, e.code().message()));
    }
  };
  for (const auto& l : cfg.server.listen) bind(l, listener_role::smtp, "");
  for (const auto& l : cfg.server.listen_tls) bind(l, listener_role::implicit_tls, "");
  if (!cfg.metrics.listen.empty()) bind(cfg.metrics.listen, listener_role::metrics, " ([metrics] listen)");
  return out;
}

server::server(std::shared_ptr<const config> cfg, client_table& clients, unsigned worker,
               std::vector<bound_listener> listeners)
    : clients_(clients),
      worker_(worker),
      signals_(io_),
      upstream_pool_(std::make_shared<upstream_pool>(io_)),
      engine_(cfg->policy.files.empty() ? nullptr : std::make_shared<python_engine>(*cfg)),
      env_(nullptr) {
  for (auto& l : listeners) {
    if (l.role() == listener_role::metrics)
      metrics_socket_.emplace(std::move(l));
    else
      listeners_.push_back({tcp::acceptor(io_, l.protocol(), l.release()), l.address(),
                            l.role() == listener_role::implicit_tls});
  }
  env_.failed_logins().share(clients_);
  auto g = make_generation(cfg);
  g->pol = make_policy(*cfg, engine_ ? engine_->first_generation() : 0);
  use_generation(std::move(g));
  upstream_pool_->configure(cfg);
}

namespace {

// The nameservers the system resolver would ask (resolv.conf(5)).
bool resolv_conf_has_nameserver() {
  std::ifstream in("/etc/resolv.conf");
  std::string word, line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (fields >> word && word == "nameserver") return true;
  }
  return false;
}

dns::resolver_options resolver_options_of(const dns_config& d) {
  dns::resolver_options o;
  o.nameserver = d.nameserver;
  o.timeout = d.timeout;
  o.cache_bytes = d.cache_size;
  return o;
}

}  // namespace

std::shared_ptr<dns::resolver> server::resolver_for(const config& cfg) {
  if (cfg.dns.nameserver.empty() && !resolv_conf_has_nameserver()) return nullptr;
  if (!resolver_ || !(resolver_dns_ == cfg.dns)) {
    resolver_ = std::make_shared<dns::resolver>(resolver_options_of(cfg.dns));
    resolver_dns_ = cfg.dns;
  }
  return resolver_;
}

std::shared_ptr<checks::sender_checks> server::make_checks(const config& cfg, const std::shared_ptr<dns::resolver>& resolver) {
  const bool any_check = cfg.checks.spf || cfg.checks.dkim || cfg.checks.dmarc || cfg.checks.arc;
  if (!any_check) return nullptr;
  if (!resolver)
    throw std::invalid_argument("[checks] need DNS: set [dns] nameserver, or a nameserver in /etc/resolv.conf");
  checks::sender_checker_settings settings;
  settings.spf = cfg.checks.spf;
  settings.dkim = cfg.checks.dkim;
  settings.dmarc = cfg.checks.dmarc;
  settings.arc = cfg.checks.arc;
  settings.receiver = cfg.server.hostname;
  settings.spf_skip_networks = cfg.checks.spf_skip_networks;
  settings.threads = cfg.checks.threads;
  settings.max_dkim_signatures = cfg.checks.dkim_signatures;
  const bool same = checker_ && checker_->resolver() == resolver && checker_->settings() == settings;
  auto checker = same ? checker_ : std::make_shared<checks::sender_checker>(resolver, settings);
  checker_ = checker;
  return checker;
}

void server::use_generation(std::shared_ptr<generation> g) {
  const auto resolver = g->resolver;
  const auto dns = g->cfg->dns;
  env_.replace(std::move(g));
  // pc.dns asks the resolver of the checks and the upstream, or one made
  // with [dns] at its first lookup (a policy that never looks anything up
  // costs no resolver).
  if (resolver) {
    bindings::set_resolver(resolver);
  } else {
    bindings::set_resolver_options(resolver_options_of(dns));
  }
}

std::shared_ptr<generation> server::make_generation(std::shared_ptr<const config> cfg) {
  auto g = std::make_shared<generation>();
  g->cfg = cfg;
  // Certificates and the users_file are read again on every reload: a renewed
  // certificate needs only a SIGHUP.
  g->tls = make_tls(*cfg);
  g->relay = std::make_shared<relay_guard>(cfg->relay);
  g->users = load_users(*cfg);
  g->proxy_trusted = std::make_shared<network_list>(cfg->server.proxy_trusted);
  // One resolver for the checks, an upstream given by name (a numeric one
  // needs none) and the client's host name that XCLIENT/XFORWARD tell it.
  boost::system::error_code numeric;
  asio::ip::make_address(cfg->upstream.host, numeric);
  const bool smtp_upstream = cfg->upstream.scheme != upstream_config::kind::maildir;
  const bool upstream_needs_dns = smtp_upstream && (numeric || cfg->upstream.client_info != client_info_mode::none);
  const bool any_check = cfg->checks.spf || cfg->checks.dkim || cfg->checks.dmarc || cfg->checks.arc;
  if (upstream_needs_dns || any_check) g->resolver = resolver_for(*cfg);
  g->checks = make_checks(*cfg, g->resolver);
  // The key is read again on every reload: a rotated key needs only a SIGHUP.
  if (cfg->dkim_sign.enabled) g->signer = std::make_shared<checks::dkim_signer>(cfg->dkim_sign);
  if (cfg->arc_seal.enabled)
    g->sealer = std::make_shared<checks::arc_sealer>(cfg->arc_seal, cfg->server.hostname);
  g->make_upstream = [cfg, tls = make_upstream_tls(*cfg), &pool = env_.blocking_pool(), kept = upstream_pool_,
                       resolver = upstream_needs_dns ? g->resolver : nullptr](
                         const session_log& log, const connection_state& client, asio::any_io_executor io) {
    return portcullis::make_upstream(*cfg, log, client, std::move(io), pool, tls, kept, resolver);
  };
  return g;
}

std::optional<std::string> server::cannot_serve_listeners(const config& cfg) const {
  const bool implicit_tls = std::any_of(listeners_.begin(), listeners_.end(), [](const listener& l) { return l.implicit_tls; });
  if (implicit_tls && !cfg.tls.enabled)
    return "the listen_tls ports stay open until a restart and need [tls] cert and key";
  return std::nullopt;
}

std::shared_ptr<policy> server::make_policy(const config& cfg, policy_generation loaded) {
  if (cfg.policy.files.empty()) return std::make_shared<upstream_decides>();
  return std::make_shared<python_policy>(engine_, cfg, loaded);
}

server::~server() {
  // (Its engine, if it started, is in a handler io_ drops unrun: stopped with it.)
  if (engine_starter_.joinable()) engine_starter_.join();
}

// 12 hex digits: unique in this run across every worker (the shared counter
// through a bijection of 48-bit numbers), not guessable from the outside (the seed).
std::string server::next_session_id() {
  constexpr std::uint64_t mask = 0xFFFFFFFFFFFFULL;
  const std::uint64_t n = (clients_.session_seed() + clients_.next_session_number() * 0x9E3779B97F4A7C15ULL) & mask;
  return fmt::format("{:012X}", n);
}

int server::run() {
  const auto cfg = env_.current()->cfg;
  for (auto& l : listeners_) {
    boost::system::error_code ec;
    l.acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      spdlog::critical("cannot listen on {}: {}", l.address, ec.message());
      return 1;
    }
    spdlog::info("listening on {}{}", l.address, l.implicit_tls ? " (implicit TLS)" : cfg->tls.enabled ? " (STARTTLS)" : "");
  }
  if (metrics_socket_) {
    const auto address = metrics_socket_->address();
    try {
      metrics_ = std::make_unique<metrics_listener>(
          tcp::acceptor(io_, metrics_socket_->protocol(), metrics_socket_->release()),
          [this](std::string_view path) { return answer_http(path); });
      spdlog::info("metrics on http://{}/metrics", address);
    } catch (const boost::system::system_error& e) {
      spdlog::critical("cannot listen on {} ([metrics] listen): {}", address, e.code().message());
      return 1;
    }
    metrics_socket_.reset();
    metrics_->start();
  }
  spdlog::info("upstream {}", cfg->upstream.url);
  if (!cfg->relay.enabled)
    spdlog::info("no [relay] table: the upstream decides who may relay");
  else
    spdlog::info("relay: anyone may send to {}; other domains need AUTH{}", fmt::join(cfg->relay.local_domains, ", "),
                 cfg->relay.trusted_networks.empty()
                     ? std::string()
                     : fmt::format(" or a client in {}", fmt::join(cfg->relay.trusted_networks, ", ")));
  for (auto& l : listeners_)
    asio::co_spawn(asio::make_strand(io_), accept_loop(l.acceptor, l.implicit_tls), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::critical("accept loop ended: {}", ex.what());
      }
    });
  asio::co_spawn(io_, handle_signals(), asio::detached);
  // Blocked until now (server_signals.hpp): signals_ handles them from now on.
  mask_server_signals(SIG_UNBLOCK);
  clients_.set_ready(worker_);
  notify_ready(serving_status(*cfg));

  // Up to policy.threads spares stand in for I/O threads held in slow plain hooks.
  auto threads = std::make_shared<io_pool>(io_, io_thread_count(cfg->server), cfg->policy.threads);
  if (!threads->run(io_thread_grace)) {
    // A hook that never returns: its thread would return into the io_context
    // and what it serves, so nothing is destroyed; the engine answered every job.
    spdlog::warn("an I/O thread is still in a policy hook {} s after the stop; leaving it behind",
                 std::chrono::duration_cast<std::chrono::seconds>(io_thread_grace).count());
    spdlog::info("stopped");
    spdlog::shutdown();
    std::_Exit(engine_ && engine_->died() ? 1 : 0);
  }
  spdlog::info("stopped");
  return engine_ && engine_->died() ? 1 : 0;  // (a restart brings the policy engine back)
}

awaitable<void> server::accept_loop(tcp::acceptor& acceptor, bool implicit_tls) {
  for (;;) {
    boost::system::error_code ec;
    tcp::endpoint peer;  // filled by accept() itself: no getpeername() per connection
    tcp::socket socket(make_session_executor(io_));
    ec = co_await accept_close_on_exec(acceptor, socket, peer);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;  // shutting down
      spdlog::warn("accept: {}", ec.message());  // e.g. out of file descriptors: keep serving the others
      asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::use_awaitable);
      continue;
    }
    std::string why;
    if (!admit(peer.address(), why)) {
      asio::co_spawn(socket.get_executor(), refuse(std::move(socket), why, implicit_tls), asio::detached);
      continue;
    }
    const std::string id = next_session_id();
    auto s = std::make_shared<session>(std::move(socket), peer, id, env_, implicit_tls);
    {
      std::lock_guard lock(sessions_mutex_);
      sessions_[id] = s;
    }
    asio::co_spawn(s->executor(), s->run(), [this, s, id, addr = peer.address()](std::exception_ptr e) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          spdlog::error("{}: session failed: {}", id, ex.what());
        }
      }
      release(addr, id);
    });
  }
}

bool server::admit(const asio::ip::address& client, std::string& why) {
  const auto cfg = env_.current()->cfg;
  std::lock_guard lock(sessions_mutex_);
  if (env_.stopping()) {
    why = "shutting down";
    metrics::count(metrics::family::connections_refused_total, {"shutting_down"});
    return false;
  }
  // Counted across every worker: the limits are the daemon's, not each process's.
  switch (clients_.admit(worker_, unmapped(client), cfg->server.max_connections_per_client, cfg->server.max_connections)) {
    case client_table::admission::admitted:
      ++total_;
      metrics::count(metrics::family::connections_total);
      return true;
    case client_table::admission::too_many_connections:
      why = "too many connections";
      metrics::count(metrics::family::connections_refused_total, {"max_connections"});
      return false;
    case client_table::admission::too_many_from_client:
      why = "too many connections from your address";
      metrics::count(metrics::family::connections_refused_total, {"max_connections_per_client"});
      return false;
    case client_table::admission::table_full:
      why = "too many clients";
      metrics::count(metrics::family::connections_refused_total, {"client_table_full"});
      return false;
  }
  return false;
}

void server::release(const asio::ip::address& client, const std::string& id) {
  std::lock_guard lock(sessions_mutex_);
  sessions_.erase(id);
  --total_;
  clients_.release(worker_, unmapped(client));
}

http_answer server::answer_http(std::string_view path) {
  if (path == "/metrics") {
    metrics::get(metrics::family::connections_open).set(static_cast<double>(clients_.connections()));
    return {200, "text/plain; version=0.0.4; charset=utf-8", metrics::exposition()};
  }
  if (path == "/healthz") {
    if (env_.stopping()) return {503, "text/plain; charset=utf-8", "stopping\n"};
    const double last = metrics::get(metrics::family::upstream_last_reply_seconds).value();
    const auto now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    return {200, "text/plain; charset=utf-8",
            last == 0 ? "serving\nupstream: no reply yet\n"
                      : fmt::format("serving\nupstream: last reply {:.0f} s ago\n", std::max(0.0, now - last))};
  }
  return {404, "text/plain; charset=utf-8", "not found: try /metrics or /healthz\n"};
}

awaitable<void> server::refuse(tcp::socket socket, std::string reason, bool implicit_tls) {
  boost::system::error_code ec;
  const auto peer = socket.remote_endpoint(ec);
  spdlog::warn("refused {}: {}", ec ? std::string("client") : peer.address().to_string(), reason);
  line_stream stream(std::move(socket));
  const auto gen = env_.current();
  const auto r = smtp::reply{421, "4.7.0", gen->cfg->server.hostname + " " + reason + ", try again later"};
  const std::string wire = r.wire();
  if (!implicit_tls) {
    const bool written = co_await stream.write(std::string_view(wire), refusal_timeout);
    (void)written;
    stream.close();
    co_return;
  }
  // On an implicit-TLS port the 421 is said inside TLS (RFC 8314 §3): in
  // clear text, the client's handshake reads it as garbage and never learns
  // it may try again. A handshake costs CPU and time, which a flood of
  // refused connections must not take: bounded, and so many at once.
  struct counted {
    std::atomic<unsigned>& n;
    const unsigned before = n.fetch_add(1);
    ~counted() { --n; }
  } count{tls_refusals_};
  if (!gen->tls || count.before >= max_tls_refusals) {
    stream.close();
    co_return;
  }
  // Behind a load balancer, its PROXY header comes first: taken off, or the
  // handshake reads it as a broken record and the client hears no 421.
  if (gen->cfg->server.proxy_protocol && !ec && gen->proxy_trusted->contains(peer.address())) {
    const auto read = co_await read_proxy_header(stream, std::chrono::steady_clock::now() + refusal_tls_timeout);
    if (read.what != proxy_header_read::outcome::read) {
      stream.close();
      co_return;
    }
  }
  if (co_await stream.start_tls(gen->tls->context(), ssl::stream_base::server, {}, refusal_tls_timeout) &&
      co_await stream.write(std::string_view(wire), refusal_tls_timeout))
    co_await stream.close_after_drain(refusal_tls_timeout);  // (close_notify, the client's awaited that long)
  stream.close();
}

awaitable<void> server::handle_signals() {
  for (;;) {
    const int sig = co_await signals_.next();
    if (sig == SIGHUP) {
      reload();
      continue;
    }
    spdlog::info("signal {}: no new connections; draining sessions", sig == SIGTERM ? "TERM" : "INT");
    notify_stopping("stopping: draining sessions");
    co_await drain();
    co_return;
  }
}

void server::reload() {
  // The newest SIGHUP's reload wins: one that ends after a newer one was
  // installed (its policies took longer to load) is dropped, not installed over it.
  const std::uint64_t this_reload = ++reloads_started_;
  // Counted once for the daemon, by worker 0 (every worker reloads).
  const auto counted = [worker = worker_](const char* outcome) {
    if (worker == 0) metrics::count(metrics::family::reloads_total, {outcome});
  };
  const auto keep_running = [this, counted](const std::vector<std::string>& problems) {
    for (const auto& p : problems) spdlog::error("reload: {}", p);
    spdlog::error("reload: keeping the running configuration");
    counted("failed");
    reload_done(false);
  };
  const auto old = env_.current()->cfg;
  notify_reloading("reloading " + old->file.string());
  if (engine_starting_) {
    spdlog::error("reload: the policies the last reload brought are still loading; send SIGHUP again once they are");
    counted("failed");
    reload_done(false);
    return;
  }
  // Exactly the checks of start-up (load_config runs them all), then what
  // only a running server can tell: whether its open listeners can be served.
  std::shared_ptr<const config> loaded_cfg;
  std::shared_ptr<const config> fresh;
  std::shared_ptr<generation> next;
  try {
    loaded_cfg = load_config(old->file);
    if (auto why = cannot_serve_listeners(*loaded_cfg)) throw std::invalid_argument(*why);
    fresh = with_restart_only_settings_of(*old, *loaded_cfg);
    next = make_generation(fresh);
  } catch (const config_error& e) {
    keep_running(e.problems());
    return;
  } catch (const auth::users_file_error& e) {
    keep_running(e.problems());
    return;
  } catch (const std::exception& e) {  // tls_error, a bad network list, a listener it cannot serve
    spdlog::error("reload: {}; keeping the running configuration", e.what());
    counted("failed");
    reload_done(false);
    return;
  }
  const auto& asked = *loaded_cfg;  // (against what runs: the settings of start-up, for these)
  if (asked.server.listen != old->server.listen || asked.server.listen_tls != old->server.listen_tls)
    spdlog::warn("reload: listen addresses changed; they take effect on restart");
  if (asked.metrics.listen != old->metrics.listen)
    spdlog::warn("reload: [metrics] listen changed; that takes effect on restart");
  if (asked.server.user != old->server.user) spdlog::warn("reload: server.user changed; that takes effect on restart");
  // Both sized once, in run(): the I/O threads and their spares, and the
  // policy engine's most threads for plain hooks.
  if (asked.server.threads != old->server.threads)
    spdlog::warn("reload: server.threads changed; that takes effect on restart");
  if (asked.policy.threads != old->policy.threads)
    spdlog::warn("reload: policy.threads changed; that takes effect on restart");
  // (With workers, the supervisor says so for the daemon.)
  if (worker_count(old->server) == 1 && worker_count(asked.server) != 1)
    spdlog::warn("reload: server.workers changed; that takes effect on restart");
  auto swap_in = [this, fresh, next, counted, this_reload](policy_generation loaded) {
    if (this_reload < reload_installed_) {
      // (Its policies retire with this object, as an old generation's do: on_unload runs.)
      const auto dropped = make_policy(*fresh, loaded);
      // Nothing reported: the newer reload reports its own outcome (as a dropped older failure does).
      spdlog::info("reload: a newer reload was installed first; this older one is dropped");
      return;
    }
    reload_installed_ = this_reload;
    counted("ok");
    next->pol = make_policy(*fresh, loaded);
    use_generation(next);
    // Kept upstream connections serve the new sessions only if [upstream] is unchanged.
    upstream_pool_->configure(fresh);
    spdlog::info("reload: {} reloaded; new sessions use it", fresh->file.string());
    reload_done(true);
  };
  if (fresh->policy.files.empty()) {
    swap_in(0);
    return;
  }
  if (!engine_) {
    // Policies where there were none: the interpreter starts now, on a
    // thread of its own (an I/O thread, often the worker's only one, would
    // stop serving for the whole import), and is swapped in on an I/O thread.
    if (engine_starter_.joinable()) engine_starter_.join();  // (an earlier start, over: its handler posted)
    engine_starting_ = true;
    engine_starter_ = std::thread([this, fresh, swap_in, counted] {
      std::shared_ptr<python_engine> started;
      std::string why;
      try {
        started = std::make_shared<python_engine>(*fresh);
      } catch (const std::exception& e) {
        why = e.what();
      }
      asio::post(io_, [this, started, why, swap_in, counted] {
        if (started) engine_ = started;
        engine_starting_ = false;
        if (!started) {
          log_lines(spdlog::level::err, "reload: ", "policies did not load, keeping the running configuration: " + why);
          counted("failed");
          reload_done(false);
          return;
        }
        swap_in(engine_->first_generation());
      });
    });
    return;
  }
  // Sessions in progress keep the policies they started with; the policy
  // thread loads the new ones and we swap only if that worked.
  engine_->reload(*fresh, [this, swap_in, counted, this_reload](std::optional<std::string> error,
                                                                policy_generation loaded) {
    asio::post(io_, [this, error = std::move(error), swap_in, counted, loaded, this_reload] {
      if (error && this_reload < reload_installed_) {  // (a newer reload is running: its outcome stands)
        log_lines(spdlog::level::err, "reload: ",
                  "policies of an older reload did not load (a newer one was installed): " + *error);
        return;
      }
      if (error) {
        log_lines(spdlog::level::err, "reload: ",
                  "policies did not load, keeping the running ones and configuration: " + *error);
        counted("failed");
        reload_done(false);
        return;
      }
      swap_in(loaded);
    });
  });
}

void server::reload_done(bool accepted) {
  clients_.count_reload(worker_, accepted);
  const auto cfg = env_.current()->cfg;
  notify_ready(accepted ? serving_status(*cfg) + "; reloaded " + cfg->file.string()
                        : serving_status(*cfg) + "; the last reload was refused (see the log)");
}

awaitable<void> server::drain() {
  env_.set_stopping();
  for (auto& l : listeners_) {
    boost::system::error_code ignored;
    l.acceptor.close(ignored);
  }
  {
    std::lock_guard lock(sessions_mutex_);
    for (auto& [id, weak] : sessions_)
      if (auto s = weak.lock()) asio::post(s->executor(), [s] { s->stop(); });
  }
  const auto grace = env_.current()->cfg->server.shutdown_grace;
  auto deadline = std::chrono::steady_clock::now() + grace;
  bool told = false;
  asio::steady_timer timer(io_);
  for (;;) {
    {
      std::lock_guard lock(sessions_mutex_);
      if (total_ == 0) break;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline && !told) {
        // A session waiting for the client's next command in a transaction
        // hears 421 now (RFC 5321 §3.8), its transaction logged and ended
        // upstream (it was dropped without a word); a moment more for that.
        for (auto& [id, weak] : sessions_)
          if (auto s = weak.lock()) asio::post(s->executor(), [s] { s->stop(true); });
        told = true;
        deadline = now + last_moment;
      } else if (now >= deadline) {
        spdlog::warn("grace period over; dropping {} session(s); their unfinished mail was not acknowledged", total_);
        break;
      }
    }
    timer.expires_after(drain_poll);
    co_await timer.async_wait(asio::use_awaitable);
  }
  co_await upstream_pool_->close_all();  // QUIT to every kept upstream connection
  if (metrics_) metrics_->close();  // (it answered /healthz with 503 while the sessions drained)
  io_.stop();
}

}  // namespace portcullis
