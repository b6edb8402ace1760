#include "config/config.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <toml.hpp>
#include <utility>

#include "smtp/text.hpp"

namespace portcullis {

namespace {

// The spellings of each string-choice key, in the order the errors list them.
template <class E>
using choices = std::initializer_list<std::pair<const char*, E>>;

const choices<starttls_mode> starttls_names = {
    {"never", starttls_mode::never}, {"opportunistic", starttls_mode::opportunistic}, {"required", starttls_mode::required}};
const choices<client_info_mode> client_info_names = {
    {"none", client_info_mode::none}, {"xclient", client_info_mode::xclient}, {"xforward", client_info_mode::xforward}};
const choices<on_error_mode> on_error_names = {{"tempfail", on_error_mode::tempfail}, {"accept", on_error_mode::accept}};
const choices<log_level> log_level_names = {{"trace", log_level::trace},     {"debug", log_level::debug},
                                            {"info", log_level::info},       {"warning", log_level::warning},
                                            {"error", log_level::error},     {"critical", log_level::critical}};
const choices<log_format> log_format_names = {{"text", log_format::text}, {"json", log_format::json}};

template <class E>
std::string name_of(const choices<E>& names, E value) {
  for (const auto& [name, v] : names)
    if (v == value) return name;
  return "?";
}

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

// A value from the file, quoted for an error message: control characters
// escaped (a CR LF in a hostname must not split the message it is reported
// in), long values cut.
std::string as_shown(std::string_view s) {
  constexpr std::size_t shown = 80;
  std::string out = "\"";
  for (unsigned char c : s.substr(0, shown)) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '"' || c == '\\') out += std::string("\\") + static_cast<char>(c);
    else if (c < 0x20 || c == 0x7f) {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > shown) out += "...";
  return out + "\"";
}

// ---------------------------------------------------------------------------
// The nesting bound, checked on the raw text before toml11 sees it.
//
// toml11 parses arrays and inline tables by recursion, and builds (and later
// destroys) the tables of a dotted key or a [a.b.c] header by recursion too:
// a 10,000-deep array overflows the stack. This scan follows just enough of
// TOML's lexical structure (strings of the four kinds, comments, table
// headers, keys versus values) to measure the depth of what toml11 would
// build: every array and table, counting the tables a dotted key or header
// opens ("x = [[1]]": 2; "[a.b]" then "c.d = [1]": 4). Where unsure it
// counts more, never less. Returns the 1-based line where the depth first
// passes `max`, or 0.
std::size_t too_deep_at(std::string_view s, std::size_t max) {
  enum class context { key, header, value };
  context where = context::key;
  std::size_t line = 1;
  std::size_t table_depth = 0;     // levels of the current [table] header ([a.b]: 2; [[a.b]]: 3)
  std::size_t statement_depth = 0; // levels of the top-level dotted key whose value is being read
  std::size_t key_parts = 1;       // parts of the dotted key being read
  bool key_started = false;        // a key character seen on this key (so '[' is no header)
  std::size_t header_parts = 1;
  bool header_array = false;
  std::size_t pending = 0;         // levels of an inline table's dotted key whose value comes next
  std::vector<std::pair<char, std::size_t>> open;  // each open '[' or '{' of the value, and its weight
  std::size_t open_depth = 0;      // the weights' sum
  const auto depth = [&] { return table_depth + statement_depth + open_depth; };

  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '\n') {
      ++line;
      if (open.empty()) {  // a statement ends with its line (arrays may go on)
        where = context::key;
        key_parts = 1;
        key_started = false;
        statement_depth = 0;
        pending = 0;
      }
      continue;
    }
    if (c == '#') {  // a comment, to the end of the line
      while (i + 1 < s.size() && s[i + 1] != '\n') ++i;
      continue;
    }
    if (c == '"' || c == '\'') {
      if (where == context::key) key_started = true;
      const bool basic = c == '"';
      if (s.substr(i, 3) == (basic ? "\"\"\"" : "'''")) {
        // Multi-line string: to the closing triple (plus up to two more quotes, TOML 1.0).
        i += 3;
        for (; i < s.size(); ++i) {
          if (s[i] == '\n') ++line;
          if (basic && s[i] == '\\') {
            if (i + 1 < s.size() && s[i + 1] == '\n') ++line;
            ++i;
            continue;
          }
          if (s.substr(i, 3) == (basic ? "\"\"\"" : "'''")) {
            i += 2;
            for (int extra = 0; extra < 2 && i + 1 < s.size() && s[i + 1] == c; ++extra) ++i;
            break;
          }
        }
        continue;
      }
      // One-line string: it ends at its quote, or (unterminated: toml11 stops there) at the line's end.
      for (++i; i < s.size() && s[i] != c && s[i] != '\n'; ++i)
        if (basic && s[i] == '\\' && i + 1 < s.size() && s[i + 1] != '\n') ++i;
      if (i < s.size() && s[i] == '\n') --i;  // the newline is handled above
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') continue;

    if (where == context::header) {
      if (c == '.') {
        ++header_parts;
      } else if (c == ']') {
        table_depth = header_parts + (header_array ? 1 : 0);
        if (header_array && i + 1 < s.size() && s[i + 1] == ']') ++i;
        if (table_depth > max) return line;
        where = context::key;
        key_started = true;  // nothing but a comment may follow on this line
      }
      continue;
    }
    if (c == '[' && where == context::key && open.empty() && !key_started) {
      where = context::header;
      header_parts = 1;
      header_array = i + 1 < s.size() && s[i + 1] == '[';
      if (header_array) ++i;
      continue;
    }
    if (c == '[' || c == '{') {
      const std::size_t weight = 1 + pending;
      pending = 0;
      open.emplace_back(c, weight);
      open_depth += weight;
      if (depth() > max) return line;
      where = c == '{' ? context::key : context::value;
      key_parts = 1;
      key_started = false;
      continue;
    }
    if (c == ']' || c == '}') {
      if (!open.empty()) {
        open_depth -= open.back().second;
        open.pop_back();
      }
      pending = 0;
      where = context::value;
      continue;
    }
    if (c == ',') {
      pending = 0;
      if (!open.empty() && open.back().first == '{') {
        where = context::key;
        key_parts = 1;
        key_started = false;
      }
      continue;
    }
    if (where == context::key) {
      if (c == '.') {
        ++key_parts;
      } else if (c == '=') {
        // "a.b.c = v": a and b are tables, c is v's own level (counted when v is an array or table).
        const std::size_t levels = key_parts - 1;
        if (open.empty()) {
          statement_depth = levels;
          pending = 0;
        } else {
          pending = levels;
        }
        if (depth() + pending > max) return line;
        where = context::value;
      } else {
        key_started = true;
      }
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------
// Syntax of names and addresses.

bool all_digits(std::string_view s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos; }

bool is_ip(const std::string& s, bool& v6) {
  unsigned char buf[16];
  if (inet_pton(AF_INET, s.c_str(), buf) == 1) {
    v6 = false;
    return true;
  }
  v6 = true;
  return inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// RFC 5321 §4.1.3 address-literal: "[192.0.2.1]" or "[IPv6:2001:db8::1]".
bool is_address_literal(std::string_view s) {
  if (s.size() < 3 || s.front() != '[' || s.back() != ']') return false;
  std::string inner(s.substr(1, s.size() - 2));
  unsigned char buf[16];
  if (inner.size() > 5 && (inner.compare(0, 5, "IPv6:") == 0 || inner.compare(0, 5, "ipv6:") == 0))
    return inet_pton(AF_INET6, inner.c_str() + 5, buf) == 1;
  return inet_pton(AF_INET, inner.c_str(), buf) == 1;
}

// "192.0.2.1", "192.0.2.0/24", "2001:db8::/32" (checked here without Asio;
// net/network.cpp does the matching).
bool is_network(const std::string& s) {
  const auto slash = s.find('/');
  const std::string host = s.substr(0, slash);
  bool v6 = false;
  if (!is_ip(host, v6)) return false;
  if (slash == std::string::npos) return true;
  const std::string bits = s.substr(slash + 1);
  if (bits.size() > 3 || !all_digits(bits)) return false;
  return std::stoul(bits) <= (v6 ? 128u : 32u);
}

bool is_port(const std::string& port) {
  return port.size() <= 5 && all_digits(port) && std::stoul(port) >= 1 && std::stoul(port) <= 65535;
}

// "HOST:PORT" or "[V6]:PORT": splits only; the caller says what HOST may be.
bool split_host_port(const std::string& s, std::string& host, std::string& port, bool& bracketed) {
  std::size_t colon;
  bracketed = !s.empty() && s.front() == '[';
  if (bracketed) {
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
  return !host.empty() && is_port(port);
}

// What the listeners (and dns.nameserver) bind or send to: an IP address
// literally, IPv6 in brackets; names are not resolved (a name that cannot be
// bound would pass the check and fail at start-up).
bool is_ip_endpoint(const std::string& s, std::string* canonical = nullptr) {
  std::string host, port;
  bool bracketed = false, v6 = false;
  if (!split_host_port(s, host, port, bracketed)) return false;
  if (!is_ip(host, v6) || v6 != bracketed) return false;
  if (canonical) {
    unsigned char buf[16] = {};
    inet_pton(v6 ? AF_INET6 : AF_INET, host.c_str(), buf);
    // An IPv4-mapped address (::ffff:a.b.c.d) is that IPv4 address: one listener, whichever way it is written.
    static constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const bool v4 = !v6 || std::memcmp(buf, mapped, sizeof mapped) == 0;
    *canonical = std::string(reinterpret_cast<char*>(buf) + (v6 && v4 ? 12 : 0), v4 ? 4 : 16) + ":" +
                 std::to_string(std::stoul(port));
  }
  return true;
}

// ---------------------------------------------------------------------------

// In the passwd database (files, or whatever nsswitch.conf names).
bool user_exists(const std::string& name) {
  passwd pw{}, *found = nullptr;
  std::vector<char> buf(16384);
  return getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr;
}

// Walks one TOML table: typed getters record problems as
// "FILE:LINE: table.key: what is wrong" and remember which keys were read, so
// whatever is left is an unknown key.
class table_reader {
 public:
  table_reader(const toml::value& table, std::string name, std::vector<std::string>& problems)
      : table_(table), name_(std::move(name)), problems_(problems) {}

  ~table_reader() {
    for (const auto& [key, value] : table_.as_table())
      if (!read_.count(key)) problem(value, key, "unknown key");
  }

  bool has(const std::string& key) const { return table_.contains(key); }

  // False when absent or of the wrong type (reported).
  template <class T>
  bool get(const std::string& key, T& out) {
    read_.insert(key);
    if (!table_.contains(key)) return false;
    const auto& v = table_.at(key);
    try {
      out = toml::get<T>(v);
      return true;
    } catch (const toml::exception&) {
      problem(v, key, std::string("wrong type (want ") + type_name<T>() + ")");
      return false;
    }
  }

  // An integer as the file writes it: toml11 reads one past 64 bits as the
  // nearest limit, which a message should not show as if written.
  std::string as_written(const std::string& key, std::int64_t n) const {
    const auto where = table_.at(key).location();
    const std::string& line = where.line_str();
    const std::size_t start = where.column() > 0 ? where.column() - 1 : 0;
    if (where.region() == 0 || start + where.region() > line.size()) return std::to_string(n);
    return line.substr(start, where.region());
  }

  void get_seconds(const std::string& key, std::chrono::seconds& out, std::chrono::seconds min,
                   std::chrono::seconds max = max_config_duration) {
    std::int64_t n = out.count();
    if (!get(key, n)) return;
    if (n < min.count() || n > max.count()) {
      problem_at(key, as_written(key, n) + " is out of range (want " + std::to_string(min.count()) + " to " +
                          std::to_string(max.count()) + " seconds)");
      return;
    }
    out = std::chrono::seconds(n);
  }

  template <class T>
  void get_count(const std::string& key, T& out, std::uint64_t min, std::uint64_t max) {
    std::int64_t n = static_cast<std::int64_t>(out);
    if (!get(key, n)) return;
    if (n < 0 || static_cast<std::uint64_t>(n) < min || static_cast<std::uint64_t>(n) > max) {
      problem_at(key, as_written(key, n) + " is out of range (want " + std::to_string(min) + " to " +
                          std::to_string(max) + ")");
      return;
    }
    out = static_cast<T>(n);
  }

  template <class E>
  void get_choice(const std::string& key, E& out, const choices<E>& names) {
    std::string s;
    if (!get(key, s)) return;
    for (const auto& [name, value] : names) {
      if (s == name) {
        out = value;
        return;
      }
    }
    std::string want;
    for (const auto& [name, value] : names) want += std::string(want.empty() ? "" : ", ") + "\"" + name + "\"";
    problem_at(key, as_shown(s) + " is not one of " + want);
  }

  void get_path(const std::string& key, std::filesystem::path& out, const std::filesystem::path& base) {
    std::string s;
    if (!get(key, s)) return;
    if (s.empty()) problem_at(key, "empty path");
    else if (s.find('\0') != std::string::npos) problem_at(key, "a path with a NUL in it (the system would end it there)");
    else out = base / s;
  }

  // A list of strings each checked by `ok`; a bad entry is reported at its own line.
  template <class F>
  void get_list(const std::string& key, std::vector<std::string>& out, F&& ok, const std::string& want) {
    if (!get(key, out)) return;
    const auto& items = table_.at(key).as_array();
    for (std::size_t i = 0; i < out.size() && i < items.size(); ++i)
      if (!ok(out[i])) problem(items[i], key, as_shown(out[i]) + " " + want);
  }

  // A list of tables ("certificates = [{cert = ..., key = ...}]"): each read by its own reader.
  template <class F>
  void each_table(const std::string& key, F&& read) {
    read_.insert(key);
    if (!table_.contains(key)) return;
    const auto& v = table_.at(key);
    if (!v.is_array()) {
      problem(v, key, "wrong type (want a list of tables)");
      return;
    }
    std::size_t i = 0;
    for (const auto& item : v.as_array()) {
      if (!item.is_table()) {
        problem(item, key, "wrong type (want a list of tables)");
        continue;
      }
      table_reader nested(item, qualified(key) + "[" + std::to_string(i++) + "]", problems_);
      read(nested);
    }
  }

  void require(const std::string& key) {
    if (!table_.contains(key)) problems_.push_back(where(table_) + qualified(key) + ": required");
  }

  // A key this version accepts but cannot honour: an error that says so.
  void not_implemented(const std::string& key, const std::string& what) {
    if (table_.contains(key)) problem_at(key, "this version " + what);
  }

  void problem_at(const std::string& key, const std::string& msg) {
    if (table_.contains(key)) problem(table_.at(key), key, msg);
  }

  void problem(const toml::value& v, const std::string& key, const std::string& msg) {
    problems_.push_back(where(v) + qualified(key) + ": " + msg);
  }

 private:
  template <class T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_same_v<T, std::string>) return "a string";
    else return "a list of strings";
  }
  static std::string where(const toml::value& v) {
    const auto& loc = v.location();
    return loc.file_name() + ":" + std::to_string(loc.line()) + ": ";
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

const std::string domain_want = "is not a domain name (RFC 5321 §4.1.2: labels of letters, digits and '-', joined by '.')";
const std::string endpoint_want = "is not IP:PORT (want 192.0.2.1:25 or [2001:db8::1]:25, port 1-65535; names are not resolved)";

// Whether two listeners (is_ip_endpoint's canonical forms) take each
// other's connections: one port, and one address or the wildcard (0.0.0.0,
// ::) of the other's family. IPv6 sockets are IPv6's alone (IPV6_V6ONLY), so
// "0.0.0.0:25" and "[::]:25" do not overlap. Overlapping sockets cannot both
// bind, or, with SO_REUSEPORT (workers), the more specific one takes its
// clients from the other (SMTP clients answered by the metrics listener).
bool endpoints_overlap(const std::string& a, const std::string& b) {
  const auto a_colon = a.rfind(':'), b_colon = b.rfind(':');  // (the port has no ':'; raw address bytes may)
  const std::string_view a_ip(a.data(), a_colon), b_ip(b.data(), b_colon);
  if (a.substr(a_colon) != b.substr(b_colon) || a_ip.size() != b_ip.size()) return false;
  const auto wildcard = [](std::string_view ip) { return ip.find_first_not_of('\0') == std::string_view::npos; };
  return a_ip == b_ip || wildcard(a_ip) || wildcard(b_ip);
}

void read_listeners(table_reader& t, const std::string& key, std::vector<std::string>& out,
                    std::vector<std::pair<std::string, std::string>>& seen) {
  t.get_list(key, out, [](const std::string& s) { return is_ip_endpoint(s); }, endpoint_want);
  for (const auto& l : out) {
    std::string canonical;
    if (!is_ip_endpoint(l, &canonical)) continue;
    for (const auto& [other, shown] : seen)
      if (endpoints_overlap(canonical, other))
        t.problem_at(key, other == canonical ? as_shown(l) + " is listed twice (a second socket on it cannot bind)"
                                             : as_shown(l) + " overlaps " + as_shown(shown) +
                                                   " (one port, and an address the other's wildcard covers)");
    seen.emplace_back(canonical, l);
  }
}

// A [dkim_sign] key (the table's own, or one of `keys`), appended to `keys`
// unless it has no domains. `signing` ("selector._domainkey.domain" -> key
// file) refuses a second key for one DNS name, which holds one public key.
void read_dkim_key(table_reader& t, const std::filesystem::path& base, std::vector<dkim_key_config>& keys,
                   std::map<std::string, std::filesystem::path>& signing) {
  t.require("domains");
  t.require("selector");
  t.require("key_file");
  dkim_key_config key;
  t.get_list("domains", key.domains, [](const std::string& d) { return is_domain(d); }, domain_want);
  for (auto& d : key.domains) d = smtp::to_lower(d);
  // The selector is a name under _domainkey (RFC 6376 §3.1): labels, dot-separated.
  if (t.get("selector", key.selector) && !is_domain(key.selector))
    t.problem_at("selector", as_shown(key.selector) + " is not a selector (DNS labels: letters, digits, hyphens, dots)");
  t.get_path("key_file", key.key_file, base);
  for (const auto& d : key.domains) {
    const auto [first, fresh] = signing.emplace(smtp::to_lower(key.selector) + "._domainkey." + d, key.key_file);
    if (!fresh)
      t.problem_at("selector", "s=" + key.selector + " of " + d + " is signed with " +
                                   first->second.filename().string() + " already (one public key a selector)");
  }
  if (!key.domains.empty()) keys.push_back(std::move(key));
}

void read_server(table_reader& t, server_config& s, const std::filesystem::path& base) {
  if (t.get("hostname", s.hostname) && !is_domain(s.hostname)) t.problem_at("hostname", as_shown(s.hostname) + " " + domain_want);
  std::vector<std::pair<std::string, std::string>> listening;  // (canonical, as written)
  read_listeners(t, "listen", s.listen, listening);
  read_listeners(t, "listen_tls", s.listen_tls, listening);
  if (s.listen.empty() && s.listen_tls.empty())
    t.problem_at(t.has("listen") ? "listen" : "listen_tls", "nothing to listen on (listen and listen_tls are both empty)");
  t.get_count("max_message_size", s.max_message_size, 1, max_config_message_size);
  // RFC 5321 §4.5.3.1.8 asks for at least 100; fewer is allowed (submission limits), never 0.
  t.get_count("max_recipients", s.max_recipients, 1, max_config_recipients);
  t.get("require_tls", s.require_tls);
  t.get("require_auth", s.require_auth);
  t.get("proxy_protocol", s.proxy_protocol);
  t.get_list("proxy_trusted", s.proxy_trusted, is_network, "is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)");
  t.get_count("max_line_length", s.max_line_length, min_config_line_length, max_config_line_length);
  t.get_count("max_errors", s.max_errors, 1, max_config_errors);
  t.get_seconds("idle_timeout", s.idle_timeout, std::chrono::seconds(1));
  t.get_seconds("data_timeout", s.data_timeout, std::chrono::seconds(1));
  t.get_count("max_connections", s.max_connections, 1, max_config_connections);
  t.get_count("max_connections_per_client", s.max_connections_per_client, 1, max_config_connections);
  t.get_seconds("shutdown_grace", s.shutdown_grace, std::chrono::seconds(0));
  t.get_count("threads", s.threads, 0, max_config_threads);
  // 0 is allowed for both: every message then goes to a file.
  t.get_count("message_memory_threshold", s.message_memory_threshold, 0, max_config_message_memory_threshold);
  t.get_count("message_memory_budget", s.message_memory_budget, 0, max_config_message_memory_budget);
  t.get_path("message_spill_dir", s.message_spill_dir, base);
  if (!s.message_spill_dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(s.message_spill_dir, ec))
      t.problem_at("message_spill_dir", as_shown(s.message_spill_dir.string()) + " is not a directory");
    else if (auto why = spill_directory_problem(s.message_spill_dir)) t.problem_at("message_spill_dir", *why);
  }
  t.get_count("workers", s.workers, 0, max_config_workers);
  // Looked up here, so that --check-config and a reload report an unknown
  // user too; start-up looks it up again when it drops to it (privileges.hpp).
  if (t.get("user", s.user)) {
    if (s.user.empty()) t.problem_at("user", "empty (remove it to keep the user the daemon was started as)");
    else if (!user_exists(s.user)) t.problem_at("user", as_shown(s.user) + ": no such user");
  }
}

void read_upstream(table_reader& t, upstream_config& u, const std::filesystem::path& base) {
  t.get("url", u.url);
  t.get_choice("starttls", u.starttls, starttls_names);
  t.get_seconds("timeout", u.timeout, std::chrono::seconds(1));
  // The final dot's reply never waits less than any other reply: given below
  // `timeout` it is refused. Left out, it is `timeout` when that is given
  // (CONTRACT.md: "seconds per upstream reply"), else 600 s.
  std::chrono::seconds done{0};  // stays 0 when left out, or out of range (that problem is told)
  t.get_seconds("data_done_timeout", done, std::chrono::seconds(1));
  if (!t.has("data_done_timeout")) {
    if (t.has("timeout")) u.data_done_timeout = u.timeout;
  } else if (done.count() > 0) {
    u.data_done_timeout = done;
    if (done < u.timeout)
      t.problem_at("data_done_timeout", std::to_string(done.count()) + " is below upstream.timeout (" +
                                            std::to_string(u.timeout.count()) +
                                            "): the reply to the final dot may take longer than any other, never less");
  }
  if (t.get("helo", u.helo) && !is_domain(u.helo) && !is_address_literal(u.helo))
    t.problem_at("helo", as_shown(u.helo) + " " + domain_want + " or address literal ([192.0.2.1], [IPv6:2001:db8::1])");
  t.get("tls_verify", u.tls_verify);
  t.get_path("tls_ca_file", u.tls_ca_file, base);
  bool v6 = false;
  if (t.get("tls_name", u.tls_name) && !is_domain(u.tls_name) && !is_ip(u.tls_name, v6))
    t.problem_at("tls_name", as_shown(u.tls_name) + " is not a domain name or IP address");
  t.get_choice("client_info", u.client_info, client_info_names);
  t.get_count("pool_size", u.pool_size, 0, max_config_pool_size);
  t.get_seconds("pool_idle_timeout", u.pool_idle_timeout, std::chrono::seconds(1), max_config_pool_idle_timeout);
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
    if (!hostport.empty() && (hostport.find(':') == std::string::npos || (hostport.front() == '[' && hostport.back() == ']')))
      hostport += tls ? ":465" : ":25";
    bool bracketed = false;
    const bool ok = split_host_port(hostport, u.host, u.port, bracketed) &&
                    (bracketed ? is_ip(u.host, v6) && v6 : is_domain(u.host) || (is_ip(u.host, v6) && !v6));
    if (!ok)
      t.problem_at("url", as_shown(url) + " has a bad host or port (want smtp://HOST:PORT: a domain name, an IPv4 "
                                        "address or [IPv6], port 1-65535)");
  } else {
    t.problem_at("url", as_shown(url) + " is not smtp://HOST:PORT, smtps://HOST:PORT or maildir:PATH");
  }
}

}  // namespace

std::string to_string(starttls_mode m) { return name_of(starttls_names, m); }
std::string to_string(client_info_mode m) { return name_of(client_info_names, m); }
std::string to_string(on_error_mode m) { return name_of(on_error_names, m); }
std::string to_string(log_level l) { return name_of(log_level_names, l); }
std::string to_string(log_format f) { return name_of(log_format_names, f); }

std::shared_ptr<const config> with_restart_only_settings_of(const config& running, const config& loaded) {
  auto kept = std::make_shared<config>(loaded);
  kept->server.listen = running.server.listen;
  kept->server.listen_tls = running.server.listen_tls;
  kept->metrics.listen = running.metrics.listen;
  kept->server.user = running.server.user;
  kept->server.threads = running.server.threads;
  kept->server.workers = running.server.workers;
  kept->policy.threads = running.policy.threads;
  return kept;
}

unsigned worker_count(const server_config& s) {
  return s.workers ? s.workers : std::max(1u, std::thread::hardware_concurrency());
}

unsigned io_thread_count(const server_config& s) {
  return s.threads ? s.threads : std::max(1u, std::thread::hardware_concurrency() / worker_count(s));
}

bool is_domain(std::string_view s) {
  constexpr std::size_t max_name = 253, max_label = 63;  // RFC 1035 §2.3.4
  if (s.empty() || s.size() > max_name) return false;
  std::string_view last;
  while (true) {
    const auto dot = s.find('.');
    const std::string_view label = s.substr(0, dot);
    if (label.empty() || label.size() > max_label || label.front() == '-' || label.back() == '-') return false;
    for (const char c : label)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-')) return false;
    last = label;
    if (dot == std::string_view::npos) break;
    s.remove_prefix(dot + 1);
  }
  return !all_digits(last);
}

config_error::config_error(std::vector<std::string> problems)
    : std::runtime_error(join(problems)), problems_(std::move(problems)) {}

namespace {

// The whole file, or config_error naming it and why (a directory, an I/O
// error): what a stream would throw as std::ios_base::failure, which the
// callers (start-up, --check-config, a reload) do not take for a bad config.
std::string read_config_file(const std::filesystem::path& file) {
  const std::string f = file.string();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw config_error({f + ": cannot open: " + std::strerror(errno)});
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } close_it{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw config_error({f + ": cannot read: " + std::strerror(errno)});
  if (S_ISDIR(st.st_mode)) throw config_error({f + ": cannot read: " + std::strerror(EISDIR)});
  std::string text;
  char buf[16384];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw config_error({f + ": cannot read: " + std::strerror(errno)});
    if (got == 0) break;
    text.append(buf, static_cast<std::size_t>(got));
  }
  return text;
}

}  // namespace

std::shared_ptr<const config> load_config(const std::filesystem::path& file) {
  auto cfg = std::make_shared<config>();
  cfg->file = file;
  const std::string f = file.string();
  std::vector<std::string> problems;
  toml::value root;
  {
    const std::string text = read_config_file(file);
    if (const auto line = too_deep_at(text, max_config_nesting))
      throw config_error({f + ":" + std::to_string(line) + ": nested more than " + std::to_string(max_config_nesting) +
                          " levels deep (arrays, inline tables, table headers and dotted keys together)"});
    cfg->text = text;
    try {
      std::istringstream stream(text);
      root = toml::parse(stream, f);
    } catch (const toml::exception& e) {
      throw config_error({e.location().file_name() + ":" + std::to_string(e.location().line()) + ": " +
                          first_line(e.what())});
    }
  }
  const auto base = std::filesystem::absolute(file).parent_path();

  // Known tables are checked key by key; any other table belongs to a policy
  // (portcullis.config["aliases"]) and is left to it.
  const std::set<std::string> known{"server", "upstream", "tls",       "auth",  "relay",   "policy",
                                    "checks", "dns",      "dkim_sign", "arc_seal", "store", "metrics", "log"};
  for (const auto& [key, value] : root.as_table()) {
    const auto& loc = value.location();
    const std::string where = loc.file_name() + ":" + std::to_string(loc.line()) + ": ";
    if (known.count(key) && !value.is_table()) problems.push_back(where + key + ": wrong type (want a table)");
    else if (!value.is_table()) problems.push_back(where + key + ": unknown key (settings belong in a table)");
  }
  auto section = [&](const char* name, auto&& read) {
    if (!root.contains(name) || !root.at(name).is_table()) return false;
    table_reader t(root.at(name), name, problems);
    read(t);
    return true;
  };
  // Where a key was written, for the checks across tables.
  auto at = [&](const char* table, const char* key) {
    const auto& loc = root.at(table).at(key).location();
    return loc.file_name() + ":" + std::to_string(loc.line()) + ": " + table + "." + key + ": ";
  };

  section("server", [&](table_reader& t) { read_server(t, cfg->server, base); });
  if (cfg->server.message_spill_dir.empty()) {
    if (auto why = spill_directory_problem({}))
      problems.push_back(f + ": server.message_spill_dir: not set, and " + *why + "; set TMPDIR or server.message_spill_dir");
  }
  if (cfg->server.hostname.empty()) {
    cfg->server.hostname = default_hostname();
    if (!is_domain(cfg->server.hostname))
      problems.push_back(f + ": server.hostname: not set, and this machine's name " + as_shown(cfg->server.hostname) +
                         " " + domain_want + "; set server.hostname");
  }
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
    t.get_count("max_failures", cfg->auth.max_failures, 1, max_config_auth_failures);
    t.get_count("max_failures_per_client", cfg->auth.max_failures_per_client, 1, max_config_auth_failures);
    t.get_seconds("failure_window", cfg->auth.failure_window, std::chrono::seconds(1));
  });
  cfg->relay.enabled = section("relay", [&](table_reader& t) {
    t.get_list("local_domains", cfg->relay.local_domains, [](const std::string& d) { return is_domain(d); },
               domain_want);
    t.get_list("trusted_networks", cfg->relay.trusted_networks, is_network,
               "is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)");
  });
  section("policy", [&](table_reader& t) {
    std::vector<std::string> files;
    t.get_list("files", files, [](const std::string& p) { return !p.empty(); }, "is an empty path");
    for (const auto& p : files) cfg->policy.files.push_back(base / p);
    t.get_seconds("timeout", cfg->policy.timeout, std::chrono::seconds(1));
    t.get_choice("on_error", cfg->policy.on_error, on_error_names);
    t.get_count("threads", cfg->policy.threads, 1, max_config_policy_threads);
  });
  section("checks", [&](table_reader& t) {
    t.get("spf", cfg->checks.spf);
    t.get_list("spf_skip_networks", cfg->checks.spf_skip_networks, is_network,
               "is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)");
    t.get("dkim", cfg->checks.dkim);
    t.get_count("dkim_signatures", cfg->checks.dkim_signatures, 1, max_config_dkim_signatures);
    // Left out, ARC goes with DKIM (CONTRACT.md sets tx.arc, and names no key for it).
    if (!t.get("arc", cfg->checks.arc)) cfg->checks.arc = cfg->checks.dkim;
    t.get("authentication_results", cfg->checks.authentication_results);
    t.get_count("threads", cfg->checks.threads, 1, max_config_check_threads);
    // DMARC judges the SPF and DKIM results: without one of them it would fail mail that passes.
    if (t.get("dmarc", cfg->checks.dmarc) && cfg->checks.dmarc && !(cfg->checks.spf && cfg->checks.dkim))
      t.problem_at("dmarc", "needs spf = true and dkim = true (DMARC passes on an aligned SPF or DKIM pass)");
  });
  section("dns", [&](table_reader& t) {
    if (t.get("nameserver", cfg->dns.nameserver) && !is_ip_endpoint(cfg->dns.nameserver))
      t.problem_at("nameserver", as_shown(cfg->dns.nameserver) + " " + endpoint_want);
    t.get_seconds("timeout", cfg->dns.timeout, std::chrono::seconds(1), std::chrono::seconds(60));
    t.get_count("cache_size", cfg->dns.cache_size, min_config_dns_cache, max_config_dns_cache);
  });
  cfg->dkim_sign.enabled = section("dkim_sign", [&](table_reader& t) {
    auto& k = cfg->dkim_sign;
    std::map<std::string, std::filesystem::path> signing;  // "selector._domainkey.domain" -> its key file
    // An empty table signs nothing.
    const bool own_key = t.has("domains") || t.has("selector") || t.has("key_file");
    if (own_key) read_dkim_key(t, base, k.keys, signing);
    t.each_table("keys", [&](table_reader& r) { read_dkim_key(r, base, k.keys, signing); });
    t.get_list("networks", k.networks, is_network, "is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)");
    t.get("subdomains", k.subdomains);
    if (!own_key && k.keys.empty())  // (no keys table, or keys = [])
      for (const char* setting : {"networks", "subdomains"})
        t.problem_at(setting, "needs a key to sign with (domains, selector and key_file, or keys)");
  });
  if (cfg->dkim_sign.keys.empty()) cfg->dkim_sign.enabled = false;
  cfg->arc_seal.enabled = section("arc_seal", [&](table_reader& t) {
    auto& k = cfg->arc_seal;
    t.require("domain");
    t.require("selector");
    t.require("key_file");
    if (t.get("domain", k.domain) && !is_domain(k.domain)) t.problem_at("domain", as_shown(k.domain) + " " + domain_want);
    k.domain = smtp::to_lower(k.domain);
    if (t.get("selector", k.selector) && !is_domain(k.selector))
      t.problem_at("selector", as_shown(k.selector) + " is not a selector (DNS labels: letters, digits, hyphens, dots)");
    t.get_path("key_file", k.key_file, base);
  });
  section("store", [&](table_reader& t) {
    auto& k = cfg->store;
    if (t.get("url", k.url) && k.url != "memory:" && !k.url.starts_with("redis://") &&
        !k.url.starts_with("rediss://") && !k.url.starts_with("unix://"))
      t.problem_at("url", as_shown(k.url) + " is not \"memory:\", redis://HOST:PORT/DB, rediss://... or unix://PATH");
    t.get_count("memory_entries", k.memory_entries, min_config_store_entries, max_config_store_entries);
    std::string prefix;  // (Python's: the Redis key prefix)
    t.get("prefix", prefix);
    std::chrono::seconds timeout{};  // (Python's: Redis connect and reply timeout)
    t.get_seconds("timeout", timeout, std::chrono::seconds(1), std::chrono::seconds(60));
  });
  section("metrics", [&](table_reader& t) {
    if (t.get("listen", cfg->metrics.listen) && !is_ip_endpoint(cfg->metrics.listen))
      t.problem_at("listen", as_shown(cfg->metrics.listen) + " " + endpoint_want);
  });
  section("log", [&](table_reader& t) {
    t.get_choice("level", cfg->log.level, log_level_names);
    t.get_choice("format", cfg->log.format, log_format_names);
  });

  // Settings that need another table: refusing to start beats running
  // without the TLS or the AUTH the operator asked for. Here, not in main,
  // so that a SIGHUP reload checks them too.
  if (!cfg->server.listen_tls.empty() && !cfg->tls.enabled)
    problems.push_back(at("server", "listen_tls") + "needs a [tls] table with cert and key");
  if (std::string metrics; is_ip_endpoint(cfg->metrics.listen, &metrics)) {
    for (const auto* list : {&cfg->server.listen, &cfg->server.listen_tls})
      for (const auto& l : *list)
        if (std::string smtp; is_ip_endpoint(l, &smtp) && endpoints_overlap(smtp, metrics))
          problems.push_back(at("metrics", "listen") + as_shown(cfg->metrics.listen) +
                             (smtp == metrics ? " is an SMTP listener too" : " overlaps the SMTP listener " + as_shown(l)));
  }
  if (cfg->server.require_tls && !cfg->tls.enabled)
    problems.push_back(at("server", "require_tls") + "needs a [tls] table with cert and key");
  if (cfg->server.require_auth && !cfg->auth.enabled)
    problems.push_back(at("server", "require_auth") + "needs an [auth] table");
  // AUTH is offered on TLS connections only, unless allow_plaintext: with no
  // [tls] it would never be, and require_auth would refuse every MAIL.
  if (cfg->auth.enabled && !cfg->tls.enabled && !cfg->auth.allow_plaintext) {
    const auto& loc = root.at("auth").location();
    problems.push_back(loc.file_name() + ":" + std::to_string(loc.line()) +
                       ": auth: AUTH is offered over TLS only: needs a [tls] table with cert and key, or "
                       "allow_plaintext = true");
  }
  // The seal's cv= is the arc= of our Authentication-Results (RFC 8617 §5.1.1).
  if (cfg->arc_seal.enabled && !(cfg->checks.arc && cfg->checks.authentication_results) &&
      root.at("arc_seal").contains("domain"))
    problems.push_back(at("arc_seal", "domain") +
                       "needs [checks] arc = true and authentication_results = true (the seal carries the chain's "
                       "validation, taken from our Authentication-Results)");

  if (cfg->upstream.helo.empty()) cfg->upstream.helo = cfg->server.hostname;
  if (cfg->upstream.tls_name.empty()) cfg->upstream.tls_name = cfg->upstream.host;
  if (!problems.empty()) throw config_error(std::move(problems));
  return cfg;
}

std::optional<std::string> spill_directory_problem(const std::filesystem::path& configured) {
  std::filesystem::path dir = configured;
  if (dir.empty()) {  // as message_store does: $TMPDIR, else /tmp
    std::error_code ec;
    dir = std::filesystem::temp_directory_path(ec);
    if (ec) dir = "/tmp";
  }
  // As the store makes its files (message_store.cpp): O_TMPFILE, else mkstemp.
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    std::string name = (dir / "portcullis-check-XXXXXX").string();
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(name.c_str());
  }
  if (fd < 0) {
    const int error = errno;
    return as_shown(dir.string()) + ": cannot create a file in it (" + std::strerror(error) +
           "); messages above server.message_memory_threshold are stored there";
  }
  ::close(fd);
  return std::nullopt;
}

std::optional<std::string> config_line_of(const config& cfg, const std::vector<std::string>& path) {
  try {
    std::istringstream stream(cfg.text);
    const auto root = toml::parse(stream, cfg.file.string());
    const toml::value* v = &root;
    for (const auto& step : path) {
      const bool index = step.find_first_not_of("0123456789") == std::string::npos;
      if (index) {
        const auto i = std::stoul(step);
        if (!v->is_array() || i >= v->as_array().size()) return std::nullopt;
        v = &v->as_array()[i];
      } else {
        if (!v->is_table() || !v->contains(step)) return std::nullopt;
        v = &v->at(step);
      }
    }
    const auto& loc = v->location();
    return loc.file_name() + ":" + std::to_string(loc.line()) + ": ";
  } catch (const std::exception&) {  // (parsed once already: not expected)
    return std::nullopt;
  }
}

}  // namespace portcullis
