#include "config/config.hpp"

#include <arpa/inet.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>
#include <toml.hpp>

namespace portcullis {

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += s + "\n";
  return out;
}

std::string first_line(std::string_view s) {
  s = s.substr(0, s.find('\n'));
  if (s.starts_with("[error] ")) s.remove_prefix(8);
  return std::string(s);
}

// Walks one TOML table: typed getters record problems with file:line and
// remember which keys were read, so whatever is left is an unknown key.
class table_reader {
 public:
  table_reader(const toml::value& table, std::string name, std::vector<std::string>& problems)
      : table_(table), name_(std::move(name)), problems_(problems) {}

  ~table_reader() {
    for (const auto& [key, value] : table_.as_table())
      if (!read_.count(key)) problem(value, "unknown key '" + qualified(key) + "'");
  }

  template <class T>
  void get(const std::string& key, T& out) {
    read_.insert(key);
    if (!table_.contains(key)) return;
    const auto& v = table_.at(key);
    try {
      out = toml::get<T>(v);
    } catch (const toml::exception&) {
      problem(v, "'" + qualified(key) + "' has the wrong type (want " + type_name<T>() + ")");
    }
  }

  void get_seconds(const std::string& key, std::chrono::seconds& out, long min = 1) {
    long n = static_cast<long>(out.count());
    get(key, n);
    if (n < min) problem_at(key, "'" + qualified(key) + "' must be at least " + std::to_string(min));
    out = std::chrono::seconds(n);
  }

  template <class T>
  void get_count(const std::string& key, T& out, long min = 1) {
    long n = static_cast<long>(out);
    get(key, n);
    if (n < min) problem_at(key, "'" + qualified(key) + "' must be at least " + std::to_string(min));
    out = static_cast<T>(n);
  }

  void get_path(const std::string& key, std::filesystem::path& out, const std::filesystem::path& base) {
    std::string s;
    get(key, s);
    if (!s.empty()) out = base / s;
  }

  // A list of tables ("certificates = [{cert = ..., key = ...}]"): each read by its own reader.
  template <class F>
  void each_table(const std::string& key, F&& read) {
    read_.insert(key);
    if (!table_.contains(key)) return;
    const auto& v = table_.at(key);
    if (!v.is_array()) {
      problem(v, "'" + qualified(key) + "' must be a list of tables");
      return;
    }
    std::size_t i = 0;
    for (const auto& item : v.as_array()) {
      if (!item.is_table()) {
        problem(item, "'" + qualified(key) + "' must be a list of tables");
        continue;
      }
      table_reader nested(item, qualified(key) + "[" + std::to_string(i++) + "]", problems_);
      read(nested);
    }
  }

  void require(const std::string& key) {
    if (!table_.contains(key)) {
      const auto& loc = table_.location();
      problems_.push_back(loc.file_name() + ":" + std::to_string(loc.line()) + ": '" + qualified(key) + "' is required");
    }
  }

  void problem_at(const std::string& key, const std::string& msg) {
    if (table_.contains(key)) problem(table_.at(key), msg);
  }

  void problem(const toml::value& v, const std::string& msg) {
    const auto& loc = v.location();
    problems_.push_back(loc.file_name() + ":" + std::to_string(loc.line()) + ": " + msg);
  }

 private:
  template <class T>
  static std::string type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_same_v<T, std::string>) return "a string";
    else return "a list of strings";
  }
  std::string qualified(const std::string& key) const { return name_.empty() ? key : name_ + "." + key; }

  const toml::value& table_;
  std::string name_;
  std::vector<std::string>& problems_;
  std::set<std::string> read_;
};

std::string default_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

// "192.0.2.1", "192.0.2.0/24", "2001:db8::/32" (checked here without Asio;
// net/network.cpp does the matching).
bool is_network(const std::string& s) {
  const auto slash = s.find('/');
  const std::string host = s.substr(0, slash);
  unsigned char buf[16];
  const bool v4 = inet_pton(AF_INET, host.c_str(), buf) == 1;
  if (!v4 && inet_pton(AF_INET6, host.c_str(), buf) != 1) return false;
  if (slash == std::string::npos) return true;
  const std::string bits = s.substr(slash + 1);
  if (bits.empty() || bits.size() > 3 || bits.find_first_not_of("0123456789") != std::string::npos) return false;
  return std::stoul(bits) <= (v4 ? 32u : 128u);
}

void check_networks(table_reader& t, const std::string& key, const std::vector<std::string>& entries) {
  for (const auto& e : entries)
    if (!is_network(e)) t.problem_at(key, "'" + e + "' is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)");
}

// "HOST:PORT" or "[V6]:PORT"
bool split_host_port(const std::string& s, std::string& host, std::string& port) {
  std::size_t colon;
  if (!s.empty() && s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    host = s.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0) return false;
    host = s.substr(0, colon);
  }
  port = s.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return false;
  return std::stoul(port) > 0 && std::stoul(port) < 65536;
}

void read_server(table_reader& t, server_config& s) {
  t.get("hostname", s.hostname);
  t.get("listen", s.listen);
  t.get("listen_tls", s.listen_tls);
  t.get_count("max_message_size", s.max_message_size);
  t.get_count("max_recipients", s.max_recipients);
  t.get("require_tls", s.require_tls);
  t.get("require_auth", s.require_auth);
  t.get("proxy_protocol", s.proxy_protocol);
  t.get("proxy_trusted", s.proxy_trusted);
  check_networks(t, "proxy_trusted", s.proxy_trusted);
  t.get_count("max_line_length", s.max_line_length, 512);  // RFC 5321 §4.5.3.1.4 minimum
  t.get_count("max_errors", s.max_errors);
  t.get_seconds("idle_timeout", s.idle_timeout);
  t.get_seconds("data_timeout", s.data_timeout);
  t.get_count("max_connections", s.max_connections);
  t.get_count("max_connections_per_client", s.max_connections_per_client);
  t.get_seconds("shutdown_grace", s.shutdown_grace, 0);
  t.get_count("threads", s.threads, 0);
  for (const auto& l : s.listen) {
    std::string h, p;
    if (!split_host_port(l, h, p)) t.problem_at("listen", "bad listen address '" + l + "' (want HOST:PORT)");
  }
  for (const auto& l : s.listen_tls) {
    std::string h, p;
    if (!split_host_port(l, h, p)) t.problem_at("listen_tls", "bad listen address '" + l + "' (want HOST:PORT)");
  }
  if (s.hostname.empty()) s.hostname = default_hostname();
}

void read_upstream(table_reader& t, upstream_config& u, const std::filesystem::path& base) {
  t.get("url", u.url);
  t.get("starttls", u.starttls);
  t.get_seconds("timeout", u.timeout);
  t.get("helo", u.helo);
  t.get("tls_verify", u.tls_verify);
  t.get_path("tls_ca_file", u.tls_ca_file, base);
  t.get("tls_name", u.tls_name);
  t.get("client_info", u.client_info);
  if (u.client_info != "none" && u.client_info != "xclient" && u.client_info != "xforward")
    t.problem_at("client_info", "upstream.client_info must be \"none\", \"xclient\" or \"xforward\"");
  if (u.starttls != "never" && u.starttls != "opportunistic" && u.starttls != "required")
    t.problem_at("starttls", "upstream.starttls must be \"never\", \"opportunistic\" or \"required\"");
  const std::string& url = u.url;
  if (url.starts_with("maildir:")) {
    u.scheme = upstream_config::kind::maildir;
    const std::string path = url.substr(8);
    if (path.empty()) t.problem_at("url", "maildir: needs a path");
    u.maildir = base / path;
  } else if (url.starts_with("smtp://") || url.starts_with("smtps://")) {
    const bool tls = url.starts_with("smtps://");
    u.scheme = tls ? upstream_config::kind::smtps : upstream_config::kind::smtp;
    std::string hostport = url.substr(tls ? 8 : 7);
    if (!hostport.empty() && hostport.back() == '/') hostport.pop_back();
    if (hostport.find(':') == std::string::npos || (hostport.front() == '[' && hostport.back() == ']'))
      hostport += tls ? ":465" : ":25";
    if (!split_host_port(hostport, u.host, u.port)) t.problem_at("url", "bad upstream url '" + url + "'");
  } else {
    t.problem_at("url", "upstream.url must be smtp://HOST:PORT, smtps://HOST:PORT or maildir:PATH");
  }
}

}  // namespace

config_error::config_error(std::vector<std::string> problems)
    : std::runtime_error(join(problems)), problems_(std::move(problems)) {}

std::shared_ptr<const config> load_config(const std::filesystem::path& file) {
  auto cfg = std::make_shared<config>();
  cfg->file = file;
  std::vector<std::string> problems;
  toml::value root;
  try {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw config_error({file.string() + ": cannot open: " + std::strerror(errno)});
    root = toml::parse(in, file.string());
  } catch (const toml::exception& e) {
    throw config_error({e.location().file_name() + ":" + std::to_string(e.location().line()) + ": " +
                        first_line(e.what())});
  }
  const auto base = std::filesystem::absolute(file).parent_path();

  // Known tables are checked key by key; any other table belongs to a policy
  // (portcullis.config["aliases"]) and is left to it.
  const std::set<std::string> known{"server", "upstream", "tls", "auth", "relay", "policy", "checks", "dns"};
  {
    for (const auto& [key, value] : root.as_table()) {
      const auto& loc = value.location();
      const std::string where = loc.file_name() + ":" + std::to_string(loc.line()) + ": ";
      if (known.count(key) && !value.is_table()) problems.push_back(where + "'" + key + "' must be a table");
      else if (!value.is_table()) problems.push_back(where + "unknown key '" + key + "' (settings belong in a table)");
    }
    auto section = [&](const char* name, auto&& read) {
      if (!root.contains(name) || !root.at(name).is_table()) return false;
      table_reader t(root.at(name), name, problems);
      read(t);
      return true;
    };
    section("server", [&](table_reader& t) { read_server(t, cfg->server); });
    if (cfg->server.hostname.empty()) cfg->server.hostname = default_hostname();
    section("upstream", [&](table_reader& t) { read_upstream(t, cfg->upstream, base); });
    cfg->tls.enabled = section("tls", [&](table_reader& t) {
      t.require("cert");
      t.require("key");
      t.get_path("cert", cfg->tls.cert, base);
      t.get_path("key", cfg->tls.key, base);
      t.each_table("certificates", [&](table_reader& pair_reader) {
        tls_config::pair pair;
        pair_reader.require("cert");
        pair_reader.require("key");
        pair_reader.get_path("cert", pair.cert, base);
        pair_reader.get_path("key", pair.key, base);
        cfg->tls.certificates.push_back(std::move(pair));
      });
    });
    cfg->auth.enabled = section("auth", [&](table_reader& t) {
      t.get_path("users_file", cfg->auth.users_file, base);
      t.get("allow_plaintext", cfg->auth.allow_plaintext);
      t.get_count("max_failures", cfg->auth.max_failures);
      t.get_count("max_failures_per_client", cfg->auth.max_failures_per_client);
      t.get_seconds("failure_window", cfg->auth.failure_window);
    });
    cfg->relay.enabled = section("relay", [&](table_reader& t) {
      t.get("local_domains", cfg->relay.local_domains);
      t.get("trusted_networks", cfg->relay.trusted_networks);
      check_networks(t, "trusted_networks", cfg->relay.trusted_networks);
    });
    section("policy", [&](table_reader& t) {
      std::vector<std::string> files;
      t.get("files", files);
      for (const auto& f : files) cfg->policy.files.push_back(base / f);
      t.get_seconds("timeout", cfg->policy.timeout);
      t.get("on_error", cfg->policy.on_error);
      t.get_count("threads", cfg->policy.threads);
      if (cfg->policy.on_error != "tempfail" && cfg->policy.on_error != "accept")
        t.problem_at("on_error", "policy.on_error must be \"tempfail\" or \"accept\"");
    });
    section("checks", [&](table_reader& t) {
      t.get("spf", cfg->checks.spf);
      t.get("dkim", cfg->checks.dkim);
      t.get("dmarc", cfg->checks.dmarc);
      t.get("authentication_results", cfg->checks.authentication_results);
    });
    section("dns", [&](table_reader& t) {
      t.get("nameserver", cfg->dns.nameserver);
      t.get_seconds("timeout", cfg->dns.timeout);
      std::string h, p;
      if (!cfg->dns.nameserver.empty() && !split_host_port(cfg->dns.nameserver, h, p))
        t.problem_at("nameserver", "dns.nameserver must be HOST:PORT");
    });
  }
  if (cfg->upstream.helo.empty()) cfg->upstream.helo = cfg->server.hostname;
  if (cfg->upstream.tls_name.empty()) cfg->upstream.tls_name = cfg->upstream.host;
  if (!problems.empty()) throw config_error(std::move(problems));
  return cfg;
}

}  // namespace portcullis
