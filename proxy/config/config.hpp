// The daemon's configuration: CONTRACT.md's TOML file as typed values.
// Loading validates everything up front; errors carry file and line.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace portcullis {

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
  unsigned threads = 0;                       // I/O threads; 0: one per core
};

struct upstream_config {
  enum class kind { smtp, smtps, maildir };
  std::string url = "smtp://127.0.0.1:25";
  kind scheme = kind::smtp;
  std::string host = "127.0.0.1";
  std::string port = "25";
  std::filesystem::path maildir;
  std::string starttls = "opportunistic";
  std::chrono::seconds timeout{60};
  std::string helo;  // our EHLO name upstream; default server.hostname
  // Upstream TLS: verification of the upstream's certificate.
  bool tls_verify = false;             // opportunistic TLS is usually unauthenticated (as Postfix's "may")
  std::filesystem::path tls_ca_file;   // empty: the system's CA store
  std::string tls_name;                // the name to expect (and send as SNI); default: the url's host
  // Tell the upstream the real client: "xclient" (Postfix XCLIENT: its
  // restrictions and logs see the client), "xforward" (logs only), "none".
  std::string client_info = "none";
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
  std::string on_error = "tempfail";
  unsigned threads = 16;  // for plain (sync) hooks; async hooks share one event loop
};

struct checks_config {
  bool spf = true, dkim = true, dmarc = true, authentication_results = true;
};

struct dns_config {
  std::string nameserver;  // "host:port"; empty: the system resolver
  std::chrono::seconds timeout{5};
};

struct config {
  std::filesystem::path file;  // where it was read from
  server_config server;
  upstream_config upstream;
  tls_config tls;
  auth_config auth;
  relay_config relay;
  policy_config policy;
  checks_config checks;
  dns_config dns;
};

// Every problem found, one "file:line: message" each.
class config_error : public std::runtime_error {
 public:
  explicit config_error(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

// Reads and validates; throws config_error listing every problem.
std::shared_ptr<const config> load_config(const std::filesystem::path& file);

}  // namespace portcullis
