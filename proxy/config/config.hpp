// The daemon's configuration: CONTRACT.md's TOML file as typed values.
// Loading validates everything up front; errors carry file and line.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis {

// The string-choice keys, as typed values. to_string gives the config's own
// spelling ("opportunistic", ...) for logs and for the Python side.

// upstream.starttls
enum class starttls_mode {
  never,          // never STARTTLS to the upstream
  opportunistic,  // STARTTLS when offered; in clear otherwise or after a failed handshake
  required,       // no TLS, no mail (451 4.7.5)
};
// upstream.client_info: how the upstream learns who the real client is.
enum class client_info_mode {
  none,
  xclient,   // Postfix XCLIENT: its restrictions and logs see the client
  xforward,  // Postfix XFORWARD: logs only
};
// policy.on_error: what a hook that raises or times out means.
enum class on_error_mode {
  tempfail,  // 451 4.3.0
  accept,    // as if the hook had returned None
};
// log.level
enum class log_level { trace, debug, info, warning, error, critical };
// log.format: "text" lines, or one JSON object a line (log_json.hpp)
enum class log_format { text, json };

std::string to_string(starttls_mode m);
std::string to_string(client_info_mode m);
std::string to_string(on_error_mode m);
std::string to_string(log_level l);
std::string to_string(log_format f);

struct server_config {
  std::string hostname;                       // banner, EHLO, Received
  std::vector<std::string> listen{"127.0.0.1:2525"};
  std::vector<std::string> listen_tls;
  std::uint64_t max_message_size = 52428800;  // SIZE (RFC 1870)
  std::size_t max_recipients = 1000;          // 452 4.5.3 past it
  bool require_tls = false;
  bool require_auth = false;
  bool proxy_protocol = false;
  std::vector<std::string> proxy_trusted{"127.0.0.0/8", "::1"};
  // Limits beyond the contract's keys; defaults follow RFC 5321 and Postfix.
  std::size_t max_line_length = 2048;         // command line incl. CRLF (RFC 5321 §4.5.3.1.4 allows more than 512)
  std::size_t max_errors = 10;                // bad commands before 421
  std::chrono::seconds idle_timeout{300};     // for a whole command line (RFC 5321 §4.5.3.2.7)
  std::chrono::seconds data_timeout{300};     // between DATA chunks (§4.5.3.2.5/6)
  std::size_t max_connections = 1000;
  std::size_t max_connections_per_client = 20;
  std::chrono::seconds shutdown_grace{30};    // SIGTERM: how long sessions may finish
  unsigned threads = 0;                       // I/O threads per worker; 0: the cores shared among the workers
  unsigned workers = 0;                       // processes sharing the listeners; 0: one per core
  // Where a message is held while it is received and relayed (store/message_store.hpp):
  // in memory up to the threshold while the budget (all sessions together)
  // lasts, else in an unlinked file in the spill directory.
  std::size_t message_memory_threshold = 256 * 1024;     // 4 KiB mail stays in memory; big mail costs no RSS
  std::size_t message_memory_budget = 64 * 1024 * 1024;  // 256 sessions mid-DATA at the threshold
  std::filesystem::path message_spill_dir;               // empty: the system's temporary directory
  // Run as this user once the listeners are bound (server/privileges.hpp); empty: as started.
  std::string user;
};

struct upstream_config {
  enum class kind { smtp, smtps, maildir };
  std::string url = "smtp://127.0.0.1:25";
  kind scheme = kind::smtp;
  std::string host = "127.0.0.1";
  std::string port = "25";
  std::filesystem::path maildir;
  starttls_mode starttls = starttls_mode::opportunistic;
  std::chrono::seconds timeout{60};  // per reply, and per step of a write (RFC 5321 §4.5.3.2)
  // For the reply to the message's final dot: RFC 5321 §4.5.3.2.6 gives the
  // server 10 minutes (it may run content filters first), and a client that
  // gives up sooner makes the message a duplicate (RFC 1047): the upstream
  // queues it, the client hears 451 and sends it again. Postfix's
  // smtp_data_done_timeout. Never below `timeout`; left out, `timeout` when
  // that is given (every reply then waits as long), else this.
  std::chrono::seconds data_done_timeout{600};
  std::string helo;  // our EHLO name upstream; default server.hostname
  // Upstream TLS: verification of the upstream's certificate.
  bool tls_verify = false;             // opportunistic TLS is usually unauthenticated (as Postfix's "may")
  std::filesystem::path tls_ca_file;   // empty: the system's CA store
  std::string tls_name;                // the name to expect (and send as SNI); default: the url's host
  client_info_mode client_info = client_info_mode::none;  // tell the upstream the real client
  // Idle connections kept for the next sessions (0: every session opens and
  // QUITs its own), and how long one may stay idle: well under the 5 minutes
  // an MTA waits for our next command (RFC 5321 §4.5.3.2.7).
  std::size_t pool_size = 16;
  std::chrono::seconds pool_idle_timeout{30};

  // The same settings: a pooled connection made under one serves the other.
  bool operator==(const upstream_config&) const = default;
};

struct tls_config {
  struct pair {
    std::filesystem::path cert, key;
  };
  bool enabled = false;
  std::filesystem::path cert, key;   // the default pair
  std::vector<pair> certificates;    // more pairs, chosen by SNI (RFC 6066)
};

struct auth_config {
  bool enabled = false;                 // [auth] present: AUTH PLAIN/LOGIN offered
  std::filesystem::path users_file;     // empty: only on_auth hooks decide
  bool allow_plaintext = false;         // offer AUTH without TLS (never on the internet)
  std::size_t max_failures = 3;         // per session, then 421 4.7.0
  std::size_t max_failures_per_client = 10;    // per client address within failure_window, then 421 4.7.0
  std::chrono::seconds failure_window{600};
};

struct relay_config {
  bool enabled = false;
  std::vector<std::string> local_domains;
  std::vector<std::string> trusted_networks;
};

struct policy_config {
  std::vector<std::filesystem::path> files;
  std::chrono::seconds timeout{10};
  on_error_mode on_error = on_error_mode::tempfail;
  unsigned threads = 16;  // for plain (sync) hooks; async hooks share one event loop
};

struct checks_config {
  bool spf = false;   // RFC 7208, before on_mail (tx.spf)
  // Clients SPF does not check (result none): this host's own processes, as
  // policyd-spf's skip_addresses.
  std::vector<std::string> spf_skip_networks;  // none: every client is checked, this host's too
  bool dkim = false;  // RFC 6376, before on_data (tx.dkim)
  unsigned dkim_signatures = 5;  // evaluated per message; the others are neutral
  bool dmarc = false;  // RFC 7489, after dkim, before on_data (tx.dmarc); needs spf and dkim
  bool arc = false;    // RFC 8617: the chain validated before on_data (tx.arc) (checks/arc_verifier); left out: `dkim`
  bool authentication_results = false;  // RFC 8601 header on relayed mail
  unsigned threads = 8;  // run libspf2, DKIM and DMARC, which block on DNS (never an I/O thread)
};

// pc.store (python/portcullis/store.py reads url, prefix and timeout from the config text itself).
struct store_config {
  std::string url = "memory:";  // "memory:" (shared by the workers) or redis://, rediss://, unix:// (redis-py's forms)
  std::size_t memory_entries = 65536;  // keys the memory store holds; read at start-up only (one mapping, made before fork)

  bool operator==(const store_config&) const = default;
};

struct dns_config {
  std::string nameserver;  // "IP:PORT"; empty: the nameservers of /etc/resolv.conf
  std::chrono::seconds timeout{5};  // per lookup
  std::size_t cache_size = 8 * 1024 * 1024;  // bytes of cached answers, by TTL

  bool operator==(const dns_config&) const = default;
};

// One DKIM signing key: the domains it signs for (d=), its selector (s=)
// and its PEM file (RSA or Ed25519, by the key).
struct dkim_key_config {
  std::vector<std::string> domains;  // lower-cased
  std::string selector;
  std::filesystem::path key_file;

  bool operator==(const dkim_key_config&) const = default;
};

// Signing outbound mail with DKIM (RFC 6376): mail whose From domain is one
// of a key's `domains`, from an authenticated client or one in `networks`,
// gets a signature made with every key for that domain (RSA and Ed25519
// side by side, RFC 8463 §1) as the last change before it goes upstream; a
// policy may choose the domain, and so the keys, per message.
struct dkim_sign_config {
  bool enabled = false;  // some key signs for some domain
  // The table's own domains/selector/key_file first, then each [[dkim_sign.keys]].
  std::vector<dkim_key_config> keys;
  std::vector<std::string> networks{"127.0.0.0/8", "::1"};  // clients signed for without AUTH
  bool subdomains = false;  // a From domain under one of the domains is signed as that domain

  bool operator==(const dkim_sign_config&) const = default;
};

// ARC sealing (RFC 8617) of every relayed message, as the last change.
struct arc_seal_config {
  bool enabled = false;
  std::string domain;  // d=, lower-cased
  std::string selector;
  std::filesystem::path key_file;  // RSA

  bool operator==(const arc_seal_config&) const = default;
};

struct metrics_config {
  std::string listen;  // IP:PORT for /metrics and /healthz; empty: none

  bool operator==(const metrics_config&) const = default;
};

struct log_config {
  log_level level = log_level::info;  // at start-up; PORTCULLIS_LOG_LEVEL overrides
  log_format format = log_format::text;
};

struct config {
  std::filesystem::path file;  // where it was read from
  // The bytes parsed: policies read their tables (pc.config) from these same
  // bytes, never from the file again, which may have changed since.
  std::string text;
  server_config server;
  upstream_config upstream;
  tls_config tls;
  auth_config auth;
  relay_config relay;
  policy_config policy;
  checks_config checks;
  dns_config dns;
  store_config store;
  dkim_sign_config dkim_sign;
  arc_seal_config arc_seal;
  metrics_config metrics;
  log_config log;
};

// Every problem found, one "file:line: message" each.
class config_error : public std::runtime_error {
 public:
  explicit config_error(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

// Reads and validates; throws config_error listing every problem, each as
// "FILE:LINE: key: what is wrong". Start-up, --check-config and a SIGHUP
// reload all go through here, so they make exactly the same checks
// (including the cross-checks between tables: listen_tls needs [tls], ...).
std::shared_ptr<const config> load_config(const std::filesystem::path& file);

// Where `path` (a table, a key, a list's index as digits, ...) is written in
// the text `cfg` was read from: "FILE:LINE: ", for the problems found after
// load_config (--check-config's certificates, keys, users file, policies);
// nullopt when it is not written there.
std::optional<std::string> config_line_of(const config& cfg, const std::vector<std::string>& path);

// Why messages cannot be stored in the spill directory (`configured`, or
// when empty $TMPDIR, else /tmp), tried as the message store does it: a new
// unlinked file. nullopt when they can. load_config runs it (so start-up,
// --check-config and a reload do), as the user who runs it.
std::optional<std::string> spill_directory_problem(const std::filesystem::path& configured);

// Nesting bound checked before the text reaches the TOML parser, which
// recurses once per level (a 10,000-deep array overflows the stack): arrays,
// inline tables, table headers and dotted keys together.
inline constexpr std::size_t max_config_nesting = 32;

// Value ranges (inclusive). Durations are whole seconds; a day bounds every
// one of them, far below what std::chrono arithmetic in nanoseconds can hold.
inline constexpr std::chrono::seconds max_config_duration{86400};
inline constexpr std::uint64_t max_config_message_size = 1ull << 30;  // 1 GiB
inline constexpr std::uint64_t max_config_message_memory_threshold = 1ull << 30;  // no message needs more in memory
inline constexpr std::uint64_t max_config_message_memory_budget = 1ull << 40;
inline constexpr std::size_t min_config_line_length = 512;           // RFC 5321 §4.5.3.1.4-6
inline constexpr std::size_t max_config_line_length = 65536;
inline constexpr std::size_t max_config_recipients = 100000;
inline constexpr std::size_t max_config_errors = 1000;
inline constexpr std::size_t max_config_connections = 1000000;
inline constexpr std::size_t max_config_pool_size = 1000;  // idle upstream connections: each is a socket on both ends
// Below the 5 minutes an upstream waits for a command (RFC 5321 §4.5.3.2.7), with room to spare.
inline constexpr std::chrono::seconds max_config_pool_idle_timeout{240};
inline constexpr unsigned max_config_threads = 1024;
inline constexpr unsigned max_config_workers = 256;
inline constexpr unsigned max_config_policy_threads = 1024;
inline constexpr unsigned max_config_check_threads = 256;
inline constexpr unsigned max_config_dkim_signatures = 100;
inline constexpr std::uint64_t min_config_dns_cache = 64 * 1024;
inline constexpr std::uint64_t max_config_dns_cache = 1ull << 32;
inline constexpr std::size_t max_config_auth_failures = 1000000;
inline constexpr std::uint64_t min_config_store_entries = 1024;
inline constexpr std::uint64_t max_config_store_entries = 1ull << 24;

// RFC 5321 §4.1.2 Domain (RFC 1035 §2.3.1 labels, RFC 1123 §2.1): labels of
// letters, digits and '-', 1-63 octets, not starting or ending with '-';
// 253 octets in all; no trailing dot; the last label not all digits (RFC
// 3696 §2: that would read as an IPv4 address).
bool is_domain(std::string_view s);

// server.workers, 0 resolved: one per core (at least one).
unsigned worker_count(const server_config& s);

// The config in force after a reload: `loaded`, with the settings only a
// restart changes (listen, listen_tls, [metrics] listen, user, threads,
// workers, policy.threads) kept as `running` has them, so that what runs,
// its status line and the next reload's comparisons agree with what is served.
std::shared_ptr<const config> with_restart_only_settings_of(const config& running, const config& loaded);
// I/O threads of each worker: server.threads, or (0) the cores shared among the workers.
unsigned io_thread_count(const server_config& s);

}  // namespace portcullis
