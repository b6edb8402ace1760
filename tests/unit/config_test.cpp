// Tests for the TOML config loader (CONTRACT.md "Configuration"): defaults,
// every key, paths relative to the config's folder, and every problem
// reported with file:line.
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A folder of its own under the system's temp folder, removed afterwards.
class ConfigTest : public testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("portcullis-config-test-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter++) + "-" + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path write(const std::string& text, const std::string& name = "portcullis.toml") {
    const fs::path file = dir_ / name;
    fs::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << text;
    return file;
  }

  // The problems load_config reports (none: it loaded).
  std::vector<std::string> problems(const fs::path& file) {
    try {
      load_config(file);
    } catch (const config_error& e) {
      EXPECT_FALSE(e.problems().empty());
      EXPECT_NE(std::string(e.what()), "");
      return e.problems();
    }
    return {};
  }

  fs::path dir_;
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& p : v) s += "  " + p + "\n";
  return s;
}

bool has(const std::vector<std::string>& problems, const std::string& want) {
  return std::find(problems.begin(), problems.end(), want) != problems.end();
}

TEST_F(ConfigTest, Defaults) {
  const auto cfg = load_config(write(""));
  EXPECT_EQ(cfg->file, dir_ / "portcullis.toml");
  EXPECT_FALSE(cfg->server.hostname.empty());  // the machine's name
  EXPECT_EQ(cfg->server.listen, std::vector<std::string>{"127.0.0.1:2525"});
  EXPECT_TRUE(cfg->server.listen_tls.empty());
  EXPECT_EQ(cfg->server.max_message_size, 52428800u);
  EXPECT_EQ(cfg->server.message_memory_threshold, 262144u);
  EXPECT_EQ(cfg->server.message_memory_budget, 67108864u);
  EXPECT_EQ(cfg->server.message_spill_dir, fs::path());  // the system's temporary directory
  EXPECT_EQ(cfg->server.max_recipients, 1000u);
  EXPECT_FALSE(cfg->server.require_tls);
  EXPECT_FALSE(cfg->server.require_auth);
  EXPECT_FALSE(cfg->server.proxy_protocol);
  EXPECT_EQ(cfg->server.proxy_trusted, (std::vector<std::string>{"127.0.0.0/8", "::1"}));
  EXPECT_EQ(cfg->server.workers, 0u);  // one per core
  EXPECT_EQ(worker_count(cfg->server), std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_GE(io_thread_count(cfg->server), 1u);
  EXPECT_EQ(cfg->upstream.url, "smtp://127.0.0.1:25");
  EXPECT_EQ(cfg->upstream.scheme, upstream_config::kind::smtp);
  EXPECT_EQ(cfg->upstream.host, "127.0.0.1");
  EXPECT_EQ(cfg->upstream.port, "25");
  EXPECT_EQ(cfg->upstream.starttls, starttls_mode::opportunistic);
  EXPECT_EQ(cfg->upstream.client_info, client_info_mode::none);
  EXPECT_EQ(cfg->upstream.timeout, 60s);
  EXPECT_EQ(cfg->upstream.data_done_timeout, 600s);  // RFC 5321 §4.5.3.2.6, Postfix's smtp_data_done_timeout
  EXPECT_EQ(cfg->upstream.pool_size, 16u);
  EXPECT_EQ(cfg->upstream.pool_idle_timeout, 30s);
  EXPECT_EQ(cfg->upstream.helo, cfg->server.hostname);
  EXPECT_FALSE(cfg->tls.enabled);
  EXPECT_FALSE(cfg->auth.enabled);
  EXPECT_FALSE(cfg->relay.enabled);
  EXPECT_TRUE(cfg->relay.local_domains.empty());
  EXPECT_TRUE(cfg->relay.trusted_networks.empty());
  EXPECT_TRUE(cfg->policy.files.empty());
  EXPECT_EQ(cfg->policy.timeout, 10s);
  EXPECT_EQ(cfg->policy.on_error, on_error_mode::tempfail);
  EXPECT_EQ(cfg->policy.threads, 16u);
  // Checks are asked for, not assumed (each costs DNS lookups per message).
  EXPECT_FALSE(cfg->checks.spf);
  EXPECT_FALSE(cfg->checks.dkim);
  EXPECT_FALSE(cfg->checks.arc);
  EXPECT_FALSE(cfg->checks.dmarc);
  EXPECT_FALSE(cfg->checks.authentication_results);
  EXPECT_EQ(cfg->checks.threads, 8u);
  EXPECT_EQ(cfg->checks.spf_skip_networks, std::vector<std::string>{});
  EXPECT_EQ(cfg->checks.dkim_signatures, 5u);
  EXPECT_EQ(cfg->dns.nameserver, "");
  EXPECT_EQ(cfg->dns.timeout, 5s);
  EXPECT_EQ(cfg->dns.cache_size, 8u * 1024 * 1024);
  EXPECT_EQ(cfg->log.level, log_level::info);
  EXPECT_EQ(cfg->log.format, log_format::text);
  EXPECT_EQ(cfg->metrics.listen, "");  // no metrics listener unless asked for
}

// [dkim_sign]: the table's own key first, then each of `keys`; a key with no domains signs nothing.
TEST_F(ConfigTest, DkimSigningKeys) {
  const auto cfg = load_config(write(R"([dkim_sign]
domains = ["Example.Test"]
selector = "rsa"
key_file = "rsa.pem"
keys = [{domains = ["example.test", "other.test"], selector = "ed", key_file = "ed.pem"},
        {domains = [], selector = "spare", key_file = "spare.pem"}]
)"));
  ASSERT_TRUE(cfg->dkim_sign.enabled);
  ASSERT_EQ(cfg->dkim_sign.keys.size(), 2u);
  EXPECT_EQ(cfg->dkim_sign.keys[0].domains, std::vector<std::string>{"example.test"});
  EXPECT_EQ(cfg->dkim_sign.keys[0].selector, "rsa");
  EXPECT_EQ(cfg->dkim_sign.keys[0].key_file.filename(), "rsa.pem");
  EXPECT_EQ(cfg->dkim_sign.keys[1].domains, (std::vector<std::string>{"example.test", "other.test"}));
  EXPECT_EQ(cfg->dkim_sign.keys[1].selector, "ed");
  EXPECT_TRUE(cfg->dkim_sign.keys[1].key_file.is_absolute());  // (relative to the config file)
  // Only keys: the table's own three may go.
  const auto only = load_config(write("[dkim_sign]\nkeys = [{domains = [\"a.test\"], selector = \"s\", key_file = \"k\"}]\n"));
  EXPECT_TRUE(only->dkim_sign.enabled);
  EXPECT_EQ(only->dkim_sign.keys.size(), 1u);
  // No domain anywhere: nothing is signed.
  EXPECT_FALSE(load_config(write("[dkim_sign]\ndomains = []\nselector = \"s\"\nkey_file = \"k\"\n"))->dkim_sign.enabled);
}

// An empty [server] table changes nothing either.
TEST_F(ConfigTest, EmptyTablesKeepDefaults) {
  const auto cfg = load_config(
      write("[server]\n[upstream]\n[policy]\n[checks]\n[dns]\n[log]\n[dkim_sign]\n[store]\n[metrics]\n"));
  EXPECT_EQ(cfg->server.listen, std::vector<std::string>{"127.0.0.1:2525"});
  EXPECT_FALSE(cfg->server.hostname.empty());
  EXPECT_EQ(cfg->upstream.host, "127.0.0.1");
  EXPECT_EQ(cfg->policy.timeout, 10s);
  EXPECT_EQ(cfg->dns.timeout, 5s);
}

TEST_F(ConfigTest, EveryContractKey) {
  const auto cfg = load_config(write(R"(
[server]
hostname = "mx.example.test"
listen = ["127.0.0.1:2525", "[::1]:2525"]
listen_tls = ["0.0.0.0:465"]
max_message_size = 1048576
max_recipients = 50
require_tls = true
require_auth = true
proxy_protocol = true
proxy_trusted = ["10.0.0.0/8"]

[upstream]
url = "smtp://mail.example.test:10025"
starttls = "required"
timeout = 30

[tls]
cert = "cert.pem"
key = "key.pem"

[auth]
users_file = "users.txt"

[relay]
local_domains = ["example.test", "example.org"]
trusted_networks = ["192.0.2.0/24"]

[policy]
files = ["policies/aliases.py", "rules.py"]
timeout = 3
on_error = "accept"

[checks]
spf = true
spf_skip_networks = ["10.0.0.0/8"]
dkim = true
dkim_signatures = 7
dmarc = false
authentication_results = true
threads = 3

[dns]
nameserver = "[::1]:5353"
timeout = 2
cache_size = 1048576

[metrics]
listen = "127.0.0.1:9325"

[log]
level = "debug"
format = "json"
)"));
  EXPECT_EQ(cfg->server.hostname, "mx.example.test");
  EXPECT_EQ(cfg->server.listen, (std::vector<std::string>{"127.0.0.1:2525", "[::1]:2525"}));
  EXPECT_EQ(cfg->server.listen_tls, std::vector<std::string>{"0.0.0.0:465"});
  EXPECT_EQ(cfg->server.max_message_size, 1048576u);
  EXPECT_EQ(cfg->server.max_recipients, 50u);
  EXPECT_TRUE(cfg->server.require_tls);
  EXPECT_TRUE(cfg->server.require_auth);
  EXPECT_TRUE(cfg->server.proxy_protocol);
  EXPECT_EQ(cfg->server.proxy_trusted, std::vector<std::string>{"10.0.0.0/8"});
  EXPECT_EQ(cfg->upstream.url, "smtp://mail.example.test:10025");
  EXPECT_EQ(cfg->upstream.scheme, upstream_config::kind::smtp);
  EXPECT_EQ(cfg->upstream.host, "mail.example.test");
  EXPECT_EQ(cfg->upstream.port, "10025");
  EXPECT_EQ(cfg->upstream.starttls, starttls_mode::required);
  EXPECT_EQ(cfg->upstream.timeout, 30s);
  EXPECT_EQ(cfg->upstream.helo, "mx.example.test");  // defaults to server.hostname
  EXPECT_TRUE(cfg->tls.enabled);
  EXPECT_EQ(cfg->tls.cert, dir_ / "cert.pem");
  EXPECT_EQ(cfg->tls.key, dir_ / "key.pem");
  EXPECT_TRUE(cfg->auth.enabled);
  EXPECT_EQ(cfg->auth.users_file, dir_ / "users.txt");
  EXPECT_TRUE(cfg->relay.enabled);
  EXPECT_EQ(cfg->relay.local_domains, (std::vector<std::string>{"example.test", "example.org"}));
  EXPECT_EQ(cfg->relay.trusted_networks, std::vector<std::string>{"192.0.2.0/24"});
  EXPECT_EQ(cfg->policy.files, (std::vector<fs::path>{dir_ / "policies/aliases.py", dir_ / "rules.py"}));
  EXPECT_EQ(cfg->policy.timeout, 3s);
  EXPECT_EQ(cfg->policy.on_error, on_error_mode::accept);
  EXPECT_TRUE(cfg->checks.spf);
  EXPECT_EQ(cfg->checks.spf_skip_networks, std::vector<std::string>{"10.0.0.0/8"});
  EXPECT_TRUE(cfg->checks.dkim);
  EXPECT_TRUE(cfg->checks.arc);  // (left out: ARC goes with DKIM, as CONTRACT.md's tx.arc asks)
  EXPECT_EQ(cfg->checks.dkim_signatures, 7u);
  EXPECT_FALSE(cfg->checks.dmarc);
  EXPECT_TRUE(cfg->checks.authentication_results);
  EXPECT_EQ(cfg->checks.threads, 3u);
  EXPECT_EQ(cfg->dns.nameserver, "[::1]:5353");
  EXPECT_EQ(cfg->dns.timeout, 2s);
  EXPECT_EQ(cfg->dns.cache_size, 1048576u);
  EXPECT_EQ(cfg->log.level, log_level::debug);
  EXPECT_EQ(cfg->log.format, log_format::json);
  EXPECT_EQ(cfg->metrics.listen, "127.0.0.1:9325");
}

// Keys beyond the contract (limits with RFC/Postfix defaults).
TEST_F(ConfigTest, ExtraKeys) {
  fs::create_directories(dir_ / "spill");
  const auto cfg = load_config(write(R"(
[server]
max_line_length = 4096
max_errors = 3
idle_timeout = 60
data_timeout = 120
max_connections = 10
max_connections_per_client = 2
shutdown_grace = 0
threads = 4
message_memory_threshold = 0
message_memory_budget = 1048576
message_spill_dir = "spill"
workers = 3

[upstream]
helo = "proxy.example.test"
client_info = "xforward"
pool_size = 0
pool_idle_timeout = 5

[policy]
threads = 4
)"));
  EXPECT_EQ(cfg->server.max_line_length, 4096u);
  EXPECT_EQ(cfg->server.max_errors, 3u);
  EXPECT_EQ(cfg->server.idle_timeout, 60s);
  EXPECT_EQ(cfg->server.data_timeout, 120s);
  EXPECT_EQ(cfg->server.max_connections, 10u);
  EXPECT_EQ(cfg->server.max_connections_per_client, 2u);
  EXPECT_EQ(cfg->server.shutdown_grace, 0s);
  EXPECT_EQ(cfg->server.threads, 4u);
  EXPECT_EQ(cfg->server.message_memory_threshold, 0u);
  EXPECT_EQ(cfg->server.message_memory_budget, 1048576u);
  EXPECT_EQ(cfg->server.message_spill_dir, dir_ / "spill");  // relative to the config's folder
  EXPECT_EQ(cfg->server.workers, 3u);
  EXPECT_EQ(worker_count(cfg->server), 3u);
  EXPECT_EQ(io_thread_count(cfg->server), 4u);
  EXPECT_EQ(cfg->upstream.helo, "proxy.example.test");
  EXPECT_EQ(cfg->upstream.client_info, client_info_mode::xforward);
  EXPECT_EQ(cfg->upstream.pool_size, 0u);
  EXPECT_EQ(cfg->upstream.pool_idle_timeout, 5s);
  EXPECT_EQ(cfg->policy.threads, 4u);
}

// The final dot's reply waits at least as long as any other reply (RFC 5321 §4.5.3.2.6 gives it 10 minutes).
TEST_F(ConfigTest, DataDoneTimeoutIsNeverBelowTheReplyTimeout) {
  EXPECT_EQ(load_config(write("[upstream]\nurl = \"smtp://127.0.0.1:25\"\n"))->upstream.data_done_timeout, 600s);
  // Left out, it is a timeout given (CONTRACT.md: "seconds per upstream reply"), shorter or longer.
  EXPECT_EQ(load_config(write("[upstream]\ntimeout = 30\n"))->upstream.data_done_timeout, 30s);
  EXPECT_EQ(load_config(write("[upstream]\ntimeout = 900\n"))->upstream.data_done_timeout, 900s);
  const auto both = load_config(write("[upstream]\ntimeout = 10\ndata_done_timeout = 10\n"));
  EXPECT_EQ(both->upstream.timeout, 10s);
  EXPECT_EQ(both->upstream.data_done_timeout, 10s);
  EXPECT_EQ(load_config(write("[upstream]\ndata_done_timeout = 3600\n"))->upstream.data_done_timeout, 3600s);
  // Given below it: refused (and told once when out of range).
  const fs::path below = write("[upstream]\ntimeout = 60\ndata_done_timeout = 30\n");
  auto got = problems(below);
  EXPECT_EQ(got, std::vector<std::string>{below.string() +
                                          ":3: upstream.data_done_timeout: 30 is below upstream.timeout (60): the reply "
                                          "to the final dot may take longer than any other, never less"})
      << joined(got);
  const fs::path zero = write("[upstream]\ntimeout = 900\ndata_done_timeout = 0\n");
  got = problems(zero);
  EXPECT_EQ(got, std::vector<std::string>{zero.string() +
                                          ":3: upstream.data_done_timeout: 0 is out of range (want 1 to 86400 seconds)"})
      << joined(got);
}

struct upstream_case {
  std::string url;
  upstream_config::kind scheme;
  std::string host, port;
};

TEST_F(ConfigTest, UpstreamUrls) {
  using k = upstream_config::kind;
  const std::vector<upstream_case> cases = {
      {"smtp://127.0.0.1:25", k::smtp, "127.0.0.1", "25"},
      {"smtp://mx.example.test", k::smtp, "mx.example.test", "25"},
      {"smtp://mx.example.test:2525/", k::smtp, "mx.example.test", "2525"},
      {"smtps://mx.example.test", k::smtps, "mx.example.test", "465"},
      {"smtps://mx.example.test:4650", k::smtps, "mx.example.test", "4650"},
      {"smtp://[::1]:10025", k::smtp, "::1", "10025"},
      {"smtp://[::1]", k::smtp, "::1", "25"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.url);
    const auto cfg = load_config(write("[upstream]\nurl = \"" + c.url + "\"\n"));
    EXPECT_EQ(cfg->upstream.scheme, c.scheme);
    EXPECT_EQ(cfg->upstream.host, c.host);
    EXPECT_EQ(cfg->upstream.port, c.port);
  }
}

// Relative paths are relative to the config file's folder, not to the
// working directory; absolute ones stay as they are.
TEST_F(ConfigTest, RelativePathsResolveAgainstTheConfigFolder) {
  const fs::path file = write(R"(
[upstream]
url = "maildir:Maildir"

[tls]
cert = "certs/cert.pem"
key = "/etc/ssl/private/key.pem"

[auth]
users_file = "../users.txt"

[policy]
files = ["policies/aliases.py", "/opt/rules.py"]
)",
                              "etc/portcullis.toml");
  const fs::path folder = dir_ / "etc";
  const auto check = [&](const config& cfg) {
    EXPECT_EQ(cfg.upstream.scheme, upstream_config::kind::maildir);
    EXPECT_EQ(cfg.upstream.maildir, folder / "Maildir");
    EXPECT_EQ(cfg.tls.cert, folder / "certs/cert.pem");
    EXPECT_EQ(cfg.tls.key, fs::path("/etc/ssl/private/key.pem"));
    EXPECT_EQ(cfg.auth.users_file, folder / "../users.txt");
    EXPECT_EQ(cfg.policy.files, (std::vector<fs::path>{folder / "policies/aliases.py", fs::path("/opt/rules.py")}));
  };
  check(*load_config(file));

  // The same file named by a relative path from elsewhere.
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  try {
    const auto cfg = load_config("etc/portcullis.toml");
    fs::current_path(cwd);
    EXPECT_TRUE(cfg->upstream.maildir.is_absolute());
    EXPECT_EQ(fs::weakly_canonical(cfg->upstream.maildir), fs::weakly_canonical(folder / "Maildir"));
    EXPECT_EQ(fs::weakly_canonical(cfg->tls.cert), fs::weakly_canonical(folder / "certs/cert.pem"));
  } catch (...) {
    fs::current_path(cwd);
    throw;
  }
}

// A policy's own table is the policy's business (portcullis.config["aliases"]).
TEST_F(ConfigTest, PolicyTablesAreAllowed) {
  const auto cfg = load_config(write(R"(
[server]
hostname = "mx.example.test"

[aliases]
file = "aliases"
local_domains = ["example.test"]
anything = { nested = true }

[aliases.extra]
x = 1

[senders]
file = "senders"
)"));
  EXPECT_EQ(cfg->server.hostname, "mx.example.test");
}

// One problem each: the config text, and the problem "LINE: message" that
// must be reported as "FILE:LINE: message".
struct problem_case {
  std::string toml;
  std::string want;  // after "FILE:"
};

// Each row: a config, and the one problem "LINE: key: what" it must produce
// (as "FILE:LINE: key: what"). Every check of the loader has a row.
TEST_F(ConfigTest, ProblemsCarryFileAndLine) {
  const std::string range_1_day = " is out of range (want 1 to 86400 seconds)";
  const std::string not_domain =
      " is not a domain name (RFC 5321 §4.1.2: labels of letters, digits and '-', joined by '.')";
  const std::string not_endpoint =
      " is not IP:PORT (want 192.0.2.1:25 or [2001:db8::1]:25, port 1-65535; names are not resolved)";
  const std::string bad_url =
      " has a bad host or port (want smtp://HOST:PORT: a domain name, an IPv4 address or [IPv6], port 1-65535)";
  const std::string not_network = " is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)";
  const std::vector<problem_case> cases = {
      // Unknown keys, in a known table or at the top.
      {"[server]\nhostname = \"x\"\nbogus = 1\n", "3: server.bogus: unknown key"},
      {"\n\n[upstream]\n\ntimeot = 5\n", "5: upstream.timeot: unknown key"},
      {"[tls]\ncert = \"c\"\nkey = \"k\"\nchain = \"x\"\n", "4: tls.chain: unknown key"},
      {"[tls]\ncert = \"c\"\nkey = \"k\"\ncertificates = [{cert = \"a\", key = \"b\", x = 1}]\n",
       "4: tls.certificates[0].x: unknown key"},
      {"[auth]\nusers = \"u\"\n", "2: auth.users: unknown key"},
      {"[relay]\nlocal_domain = []\n", "2: relay.local_domain: unknown key"},
      {"[policy]\nfile = []\n", "2: policy.file: unknown key"},
      {"[checks]\nbimi = true\n", "2: checks.bimi: unknown key"},
      {"[arc_seal]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\nkeyfile = \"k\"\n", "5: arc_seal.keyfile: unknown key"},
      {"[dns]\nserver = \"x\"\n", "2: dns.server: unknown key"},
      {"[log]\nfile = \"x\"\n", "2: log.file: unknown key"},
      {"[metrics]\nport = 1\n", "2: metrics.port: unknown key"},
      {"hostname = \"x\"\n[server]\n", "1: hostname: unknown key (settings belong in a table)"},
      {"server = 1\n", "1: server: wrong type (want a table)"},
      {"log = \"json\"\n", "1: log: wrong type (want a table)"},
      // Wrong types.
      {"[server]\n\nmax_recipients = \"many\"\n", "3: server.max_recipients: wrong type (want an integer)"},
      {"[server]\nrequire_tls = \"yes\"\n", "2: server.require_tls: wrong type (want true or false)"},
      {"[server]\nlisten = \"127.0.0.1:25\"\n", "2: server.listen: wrong type (want a list of strings)"},
      {"[server]\nlisten = [25]\n", "2: server.listen: wrong type (want a list of strings)"},
      {"[server]\nhostname = 1\n", "2: server.hostname: wrong type (want a string)"},
      {"[upstream]\ntimeout = 1.5\n", "2: upstream.timeout: wrong type (want an integer)"},
      {"[upstream]\nstarttls = true\n", "2: upstream.starttls: wrong type (want a string)"},
      {"[checks]\nspf = 1\n", "2: checks.spf: wrong type (want true or false)"},
      {"[policy]\nfiles = \"rules.py\"\n", "2: policy.files: wrong type (want a list of strings)"},
      {"[tls]\ncert = \"c\"\nkey = \"k\"\ncertificates = \"x\"\n", "4: tls.certificates: wrong type (want a list of tables)"},
      // Required keys.
      {"[tls]\ncert = \"c\"\n", "1: tls.key: required"},
      // Durations: 1 s to a day (std::chrono arithmetic in nanoseconds must not overflow).
      {"[server]\nidle_timeout = 9999999999\n", "2: server.idle_timeout: 9999999999" + range_1_day},
      {"[server]\nidle_timeout = 86401\n", "2: server.idle_timeout: 86401" + range_1_day},
      {"[server]\nidle_timeout = 0\n", "2: server.idle_timeout: 0" + range_1_day},
      {"[server]\ndata_timeout = -1\n", "2: server.data_timeout: -1" + range_1_day},
      {"[server]\ndata_timeout = 9223372036854775807\n", "2: server.data_timeout: 9223372036854775807" + range_1_day},
      {"[server]\nshutdown_grace = -1\n", "2: server.shutdown_grace: -1 is out of range (want 0 to 86400 seconds)"},
      {"[server]\nshutdown_grace = 100000\n", "2: server.shutdown_grace: 100000 is out of range (want 0 to 86400 seconds)"},
      {"[upstream]\ntimeout = 0\n", "2: upstream.timeout: 0" + range_1_day},
      {"[upstream]\ntimeout = 31536000\n", "2: upstream.timeout: 31536000" + range_1_day},
      {"[upstream]\ndata_done_timeout = 86401\n", "2: upstream.data_done_timeout: 86401" + range_1_day},
      {"[upstream]\ndata_done_timeout = 1.5\n", "2: upstream.data_done_timeout: wrong type (want an integer)"},
      {"[upstream]\npool_size = -1\n", "2: upstream.pool_size: -1 is out of range (want 0 to 1000)"},
      {"[upstream]\npool_size = 1001\n", "2: upstream.pool_size: 1001 is out of range (want 0 to 1000)"},
      {"[upstream]\npool_idle_timeout = 0\n", "2: upstream.pool_idle_timeout: 0 is out of range (want 1 to 240 seconds)"},
      {"[upstream]\npool_idle_timeout = 300\n", "2: upstream.pool_idle_timeout: 300 is out of range (want 1 to 240 seconds)"},
      {"[policy]\ntimeout = -5\n", "2: policy.timeout: -5" + range_1_day},
      {"[policy]\ntimeout = 9999999999\n", "2: policy.timeout: 9999999999" + range_1_day},
      {"[auth]\nfailure_window = 0\n", "2: auth.failure_window: 0" + range_1_day},
      {"[auth]\nfailure_window = 9999999999\n", "2: auth.failure_window: 9999999999" + range_1_day},
      {"[dns]\ntimeout = 0\n", "2: dns.timeout: 0 is out of range (want 1 to 60 seconds)"},
      {"[dns]\ncache_size = 1000\n", "2: dns.cache_size: 1000 is out of range (want 65536 to 4294967296)"},
      {"[checks]\nthreads = 0\n", "2: checks.threads: 0 is out of range (want 1 to 256)"},
      {"[checks]\ndkim_signatures = 0\n", "2: checks.dkim_signatures: 0 is out of range (want 1 to 100)"},
      {"[checks]\nspf_skip_networks = [\"10.0.0.0/33\"]\n",
       "2: checks.spf_skip_networks: \"10.0.0.0/33\" is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)"},
      {"[dns]\ntimeout = 61\n", "2: dns.timeout: 61 is out of range (want 1 to 60 seconds)"},
      // Sizes and counts.
      {"[server]\nmax_recipients = 0\n", "2: server.max_recipients: 0 is out of range (want 1 to 100000)"},
      {"[server]\nmax_recipients = -1\n", "2: server.max_recipients: -1 is out of range (want 1 to 100000)"},
      {"[server]\nmax_recipients = 100001\n", "2: server.max_recipients: 100001 is out of range (want 1 to 100000)"},
      {"[server]\nmax_message_size = -1\n", "2: server.max_message_size: -1 is out of range (want 1 to 1073741824)"},
      {"[server]\nmax_message_size = 0\n", "2: server.max_message_size: 0 is out of range (want 1 to 1073741824)"},
      {"[server]\nmax_message_size = 1073741825\n",
       "2: server.max_message_size: 1073741825 is out of range (want 1 to 1073741824)"},
      {"[server]\nmax_line_length = 100\n", "2: server.max_line_length: 100 is out of range (want 512 to 65536)"},
      {"[server]\nmax_line_length = 511\n", "2: server.max_line_length: 511 is out of range (want 512 to 65536)"},
      {"[server]\nmax_line_length = 65537\n", "2: server.max_line_length: 65537 is out of range (want 512 to 65536)"},
      {"[server]\nmax_errors = 0\n", "2: server.max_errors: 0 is out of range (want 1 to 1000)"},
      {"[server]\nmax_errors = 1001\n", "2: server.max_errors: 1001 is out of range (want 1 to 1000)"},
      {"[server]\nmax_connections = 0\n", "2: server.max_connections: 0 is out of range (want 1 to 1000000)"},
      {"[server]\nmax_connections = -5\n", "2: server.max_connections: -5 is out of range (want 1 to 1000000)"},
      {"[server]\nworkers = 257\n", "2: server.workers: 257 is out of range (want 0 to 256)"},
      {"[server]\nworkers = -1\n", "2: server.workers: -1 is out of range (want 0 to 256)"},
      {"[server]\nmax_connections_per_client = 0\n",
       "2: server.max_connections_per_client: 0 is out of range (want 1 to 1000000)"},
      {"[server]\nthreads = -1\n", "2: server.threads: -1 is out of range (want 0 to 1024)"},
      {"[server]\nthreads = 4294967296\n", "2: server.threads: 4294967296 is out of range (want 0 to 1024)"},
      {"[server]\nmessage_memory_threshold = -1\n",
       "2: server.message_memory_threshold: -1 is out of range (want 0 to 1073741824)"},
      {"[server]\nmessage_memory_threshold = 1073741825\n",
       "2: server.message_memory_threshold: 1073741825 is out of range (want 0 to 1073741824)"},
      {"[server]\nmessage_memory_budget = -1\n",
       "2: server.message_memory_budget: -1 is out of range (want 0 to 1099511627776)"},
      {"[server]\nmessage_memory_budget = 1099511627777\n",
       "2: server.message_memory_budget: 1099511627777 is out of range (want 0 to 1099511627776)"},
      {"[server]\nmessage_spill_dir = \"\"\n", "2: server.message_spill_dir: empty path"},
      {"[server]\nmessage_spill_dir = \"nowhere\"\n",
       "2: server.message_spill_dir: \"" + (dir_ / "nowhere").string() + "\" is not a directory"},
      {"[policy]\nthreads = 0\n", "2: policy.threads: 0 is out of range (want 1 to 1024)"},
      {"[policy]\nthreads = 100000\n", "2: policy.threads: 100000 is out of range (want 1 to 1024)"},
      {"[auth]\nmax_failures = 0\n", "2: auth.max_failures: 0 is out of range (want 1 to 1000000)"},
      {"[auth]\nmax_failures_per_client = -3\n", "2: auth.max_failures_per_client: -3 is out of range (want 1 to 1000000)"},
      // Names: a CR LF would split the greeting or inject a command upstream.
      {"[server]\nhostname = \"mx\\r\\n250 injected\"\n", "2: server.hostname: \"mx\\r\\n250 injected\"" + not_domain},
      {"[server]\nhostname = \"mx.example.test\\n\"\n", "2: server.hostname: \"mx.example.test\\n\"" + not_domain},
      {"[server]\nhostname = \"mx example.test\"\n", "2: server.hostname: \"mx example.test\"" + not_domain},
      {"[server]\nhostname = \"mx\\u0000.test\"\n", "2: server.hostname: \"mx\\x00.test\"" + not_domain},
      {"[server]\nhostname = \"\"\n", "2: server.hostname: \"\"" + not_domain},
      {"[server]\nhostname = \"mx..test\"\n", "2: server.hostname: \"mx..test\"" + not_domain},
      {"[server]\nhostname = \"mx.test.\"\n", "2: server.hostname: \"mx.test.\"" + not_domain},
      {"[server]\nhostname = \"-mx.test\"\n", "2: server.hostname: \"-mx.test\"" + not_domain},
      {"[server]\nhostname = \"mx-.test\"\n", "2: server.hostname: \"mx-.test\"" + not_domain},
      {"[server]\nhostname = \"mx_1.test\"\n", "2: server.hostname: \"mx_1.test\"" + not_domain},
      {"[server]\nhostname = \"mx.tëst\"\n", "2: server.hostname: \"mx.tëst\"" + not_domain},
      {"[server]\nhostname = \"192.0.2.1\"\n", "2: server.hostname: \"192.0.2.1\"" + not_domain},
      {"[server]\nhostname = \"[192.0.2.1]\"\n", "2: server.hostname: \"[192.0.2.1]\"" + not_domain},
      {"[server]\nhostname = \"" + std::string(64, 'a') + ".test\"\n",
       "2: server.hostname: \"" + std::string(64, 'a') + ".test\"" + not_domain},
      {"[upstream]\nhelo = \"proxy\\r\\nRCPT TO:<x@evil.test>\"\n",
       "2: upstream.helo: \"proxy\\r\\nRCPT TO:<x@evil.test>\"" + not_domain +
           " or address literal ([192.0.2.1], [IPv6:2001:db8::1])"},
      {"[upstream]\nhelo = \"[::1]\"\n",
       "2: upstream.helo: \"[::1]\"" + not_domain + " or address literal ([192.0.2.1], [IPv6:2001:db8::1])"},
      {"[upstream]\ntls_name = \"mx test\"\n", "2: upstream.tls_name: \"mx test\" is not a domain name or IP address"},
      {"[relay]\nlocal_domains = [\"example.test\",\n  \"bad domain\"]\n",
       "3: relay.local_domains: \"bad domain\"" + not_domain},
      {"[relay]\nlocal_domains = [\"@example.test\"]\n", "2: relay.local_domains: \"@example.test\"" + not_domain},
      // Listeners: IP literal and port, nothing that cannot bind.
      {"[server]\nlisten = [\"localhost:3950\"]\n", "2: server.listen: \"localhost:3950\"" + not_endpoint},
      {"[server]\nlisten = [\"localhost\"]\n", "2: server.listen: \"localhost\"" + not_endpoint},
      {"[server]\nlisten = [\"127.0.0.1\"]\n", "2: server.listen: \"127.0.0.1\"" + not_endpoint},
      {"[server]\nlisten = [\"127.0.0.1:0\"]\n", "2: server.listen: \"127.0.0.1:0\"" + not_endpoint},
      {"[server]\nlisten = [\"127.0.0.1:65536\"]\n", "2: server.listen: \"127.0.0.1:65536\"" + not_endpoint},
      {"[server]\nlisten = [\"127.0.0.1:-25\"]\n", "2: server.listen: \"127.0.0.1:-25\"" + not_endpoint},
      {"[server]\nlisten = [\"::1:25\"]\n", "2: server.listen: \"::1:25\"" + not_endpoint},
      {"[server]\nlisten = [\"[127.0.0.1]:25\"]\n", "2: server.listen: \"[127.0.0.1]:25\"" + not_endpoint},
      {"[server]\nlisten = [\"256.0.0.1:25\"]\n", "2: server.listen: \"256.0.0.1:25\"" + not_endpoint},
      {"[server]\nlisten = [\"[fe80::1%eth0]:25\"]\n", "2: server.listen: \"[fe80::1%eth0]:25\"" + not_endpoint},
      {"[server]\nlisten = [\"127.0.0.1:25\\r\\n\"]\n", "2: server.listen: \"127.0.0.1:25\\r\\n\"" + not_endpoint},
      {"[server]\nlisten_tls = [\"0.0.0.0:\"]\n", "2: server.listen_tls: \"0.0.0.0:\"" + not_endpoint},
      {"[server]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:025\"]\n",
       "2: server.listen: \"127.0.0.1:025\" is listed twice (a second socket on it cannot bind)"},
      {"[server]\nlisten = [\"[::1]:25\"]\nlisten_tls = [\"[0:0::1]:25\"]\n[tls]\ncert = \"c\"\nkey = \"k\"\n",
       "3: server.listen_tls: \"[0:0::1]:25\" is listed twice (a second socket on it cannot bind)"},
      // A wildcard takes its family's connections on the port: a specific address beside it overlaps.
      {"[server]\nlisten = [\"0.0.0.0:25\", \"127.0.0.1:25\"]\n",
       "2: server.listen: \"127.0.0.1:25\" overlaps \"0.0.0.0:25\" (one port, and an address the other's wildcard covers)"},
      // An IPv4-mapped address is its IPv4 address.
      {"[server]\nlisten = [\"127.0.0.1:25\", \"[::ffff:127.0.0.1]:25\"]\n",
       "2: server.listen: \"[::ffff:127.0.0.1]:25\" is listed twice (a second socket on it cannot bind)"},
      {"[server]\nlisten = [\"0.0.0.0:25\", \"[::ffff:127.0.0.1]:25\"]\n",
       "2: server.listen: \"[::ffff:127.0.0.1]:25\" overlaps \"0.0.0.0:25\" (one port, and an address the other's wildcard covers)"},
      {"[server]\nlisten = [\"[::1]:25\"]\nlisten_tls = [\"[::]:25\"]\n[tls]\ncert = \"c\"\nkey = \"k\"\n",
       "3: server.listen_tls: \"[::]:25\" overlaps \"[::1]:25\" (one port, and an address the other's wildcard covers)"},
      {"[server]\nlisten = []\n", "2: server.listen: nothing to listen on (listen and listen_tls are both empty)"},
      {"[server]\nproxy_trusted = [\"10.0.0.0/33\"]\n", "2: server.proxy_trusted: \"10.0.0.0/33\"" + not_network},
      {"[relay]\ntrusted_networks = [\"example.test\"]\n", "2: relay.trusted_networks: \"example.test\"" + not_network},
      {"[dns]\nnameserver = \"127.0.0.1\"\n", "2: dns.nameserver: \"127.0.0.1\"" + not_endpoint},
      {"[dns]\nnameserver = \"ns.example.test:53\"\n", "2: dns.nameserver: \"ns.example.test:53\"" + not_endpoint},
      // The upstream url: scheme, host, port.
      {"[upstream]\nurl = \"http://mx.example.test\"\n",
       "2: upstream.url: \"http://mx.example.test\" is not smtp://HOST:PORT, smtps://HOST:PORT or maildir:PATH"},
      {"[upstream]\nurl = \"smtp://mx.example.test:99999\"\n", "2: upstream.url: \"smtp://mx.example.test:99999\"" + bad_url},
      {"[upstream]\nurl = \"smtp://mx.example.test:0\"\n", "2: upstream.url: \"smtp://mx.example.test:0\"" + bad_url},
      {"[upstream]\nurl = \"smtp://mx.example.test:smtp\"\n", "2: upstream.url: \"smtp://mx.example.test:smtp\"" + bad_url},
      {"[upstream]\nurl = \"smtp://\"\n", "2: upstream.url: \"smtp://\"" + bad_url},
      {"[upstream]\nurl = \"smtp://[::1\"\n", "2: upstream.url: \"smtp://[::1\"" + bad_url},
      {"[upstream]\nurl = \"smtp://[mx.example.test]:25\"\n", "2: upstream.url: \"smtp://[mx.example.test]:25\"" + bad_url},
      {"[upstream]\nurl = \"smtp://user@mx.example.test:25\"\n",
       "2: upstream.url: \"smtp://user@mx.example.test:25\"" + bad_url},
      {"[upstream]\nurl = \"smtp://mx example.test:25\"\n", "2: upstream.url: \"smtp://mx example.test:25\"" + bad_url},
      {"[upstream]\nurl = \"smtp://999.0.0.1:25\"\n", "2: upstream.url: \"smtp://999.0.0.1:25\"" + bad_url},
      {"[upstream]\nurl = \"maildir:\"\n", "2: upstream.url: maildir: needs a path"},
      // Choices.
      {"[upstream]\nstarttls = \"sometimes\"\n",
       "2: upstream.starttls: \"sometimes\" is not one of \"never\", \"opportunistic\", \"required\""},
      {"[upstream]\nstarttls = \"Required\"\n",
       "2: upstream.starttls: \"Required\" is not one of \"never\", \"opportunistic\", \"required\""},
      {"[upstream]\nclient_info = \"xclient \"\n",
       "2: upstream.client_info: \"xclient \" is not one of \"none\", \"xclient\", \"xforward\""},
      {"[policy]\non_error = \"reject\"\n", "2: policy.on_error: \"reject\" is not one of \"tempfail\", \"accept\""},
      {"[log]\nlevel = \"verbose\"\n",
       "2: log.level: \"verbose\" is not one of \"trace\", \"debug\", \"info\", \"warning\", \"error\", \"critical\""},
      {"[log]\nformat = \"xml\"\n", "2: log.format: \"xml\" is not one of \"text\", \"json\""},
      {"[policy]\nfiles = [\"a.py\", \"\"]\n", "2: policy.files: \"\" is an empty path"},
      {"[auth]\nusers_file = \"\"\n", "2: auth.users_file: empty path"},
      {"[auth]\nusers_file = \"users\\u0000.txt\"\n",
       "2: auth.users_file: a path with a NUL in it (the system would end it there)"},
      // Settings that need another table (start-up, --check-config and SIGHUP alike).
      {"[server]\nlisten_tls = [\"127.0.0.1:4650\"]\n", "2: server.listen_tls: needs a [tls] table with cert and key"},
      {"[server]\n\nrequire_tls = true\n", "3: server.require_tls: needs a [tls] table with cert and key"},
      {"[server]\nrequire_auth = true\n", "2: server.require_auth: needs an [auth] table"},
      // AUTH is offered over TLS only: with no [tls] and no allow_plaintext, never.
      {"[server]\nrequire_auth = true\n[auth]\n",
       "3: auth: AUTH is offered over TLS only: needs a [tls] table with cert and key, or allow_plaintext = true"},
      {"[checks]\ndmarc = true\n", "2: checks.dmarc: needs spf = true and dkim = true (DMARC passes on an aligned SPF or DKIM pass)"},
      {"[checks]\nspf = true\ndmarc = true\n",
       "3: checks.dmarc: needs spf = true and dkim = true (DMARC passes on an aligned SPF or DKIM pass)"},
      {"[arc_seal]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n",
       "2: arc_seal.domain: needs [checks] arc = true and authentication_results = true (the seal carries the chain's "
       "validation, taken from our Authentication-Results)"},
      {"[arc_seal]\ndomain = \"a.test\"\n", "1: arc_seal.selector: required"},
      // What this version does not do is an error, not silently ignored (issue 7 item 10).

      {"[dkim_sign]\ndomains = [\"example.test\"]\nselector = \"s1\"\n", "1: dkim_sign.key_file: required"},
      {"[dkim_sign]\nkey_file = \"dkim.key\"\n", "1: dkim_sign.selector: required"},
      {"[dkim_sign]\ndomains = [\"example..test\"]\nselector = \"s1\"\nkey_file = \"k\"\n",
       "2: dkim_sign.domains: \"example..test\" is not a domain name (RFC 5321 §4.1.2: labels of letters, digits and "
       "'-', joined by '.')"},
      {"[dkim_sign]\ndomains = [\"example.test\"]\nselector = \"s 1\"\nkey_file = \"k\"\n",
       "3: dkim_sign.selector: \"s 1\" is not a selector (DNS labels: letters, digits, hyphens, dots)"},
      {"[dkim_sign]\ndomains = [\"a.test\"]\nselector = \"s\"\nkey_file = \"k\"\nnetworks = [\"10.0.0.0/33\"]\n",
       "5: dkim_sign.networks: \"10.0.0.0/33\" is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)"},
      {"[dkim_sign]\nkeys = [{domains = [\"a.test\"], key_file = \"k\"}]\n", "2: dkim_sign.keys[0].selector: required"},
      {"[dkim_sign]\n[[dkim_sign.keys]]\ndomains = [\"a.test\"]\nselector = \"s\"\nkey_file = \"k\"\ncolour = 1\n",
       "6: dkim_sign.keys[0].colour: unknown key"},
      {"[dkim_sign]\nkeys = {domains = [\"a.test\"]}\n", "2: dkim_sign.keys: wrong type (want a list of tables)"},
      {"[dkim_sign]\nnetworks = []\n", "2: dkim_sign.networks: needs a key to sign with (domains, selector and key_file, or keys)"},
      {"[dkim_sign]\nkeys = []\nnetworks = [\"10.0.0.0/8\"]\n",
       "3: dkim_sign.networks: needs a key to sign with (domains, selector and key_file, or keys)"},
      {"[dkim_sign]\n\nsubdomains = true\n",
       "3: dkim_sign.subdomains: needs a key to sign with (domains, selector and key_file, or keys)"},
      // One DNS name, one public key: two keys cannot sign as the same selector of a domain.
      {"[dkim_sign]\ndomains = [\"a.test\"]\nselector = \"s\"\nkey_file = \"k\"\n"
       "[[dkim_sign.keys]]\ndomains = [\"b.test\", \"A.test\"]\nselector = \"S\"\nkey_file = \"k2\"\n",
       "7: dkim_sign.keys[0].selector: s=S of a.test is signed with k already (one public key a selector)"},
      {"[store]\nurl = \"http://127.0.0.1:6379/0\"\n",
       "2: store.url: \"http://127.0.0.1:6379/0\" is not \"memory:\", redis://HOST:PORT/DB, rediss://... or unix://PATH"},
      {"[store]\nmemory_entries = 10\n", "2: store.memory_entries: 10 is out of range (want 1024 to 16777216)"},
      {"[store]\ntimeout = 0\n", "2: store.timeout: 0 is out of range (want 1 to 60 seconds)"},
      {"[store]\ncolour = 1\n", "2: store.colour: unknown key"},
      {"[metrics]\nlisten = \"localhost:9325\"\n",
       "2: metrics.listen: \"localhost:9325\" is not IP:PORT (want 192.0.2.1:25 or [2001:db8::1]:25, port 1-65535; names are not resolved)"},
      {"[server]\nlisten = [\"127.0.0.1:2525\"]\n[metrics]\nlisten = \"127.0.0.1:2525\"\n",
       "4: metrics.listen: \"127.0.0.1:2525\" is an SMTP listener too"},
      {"[server]\nlisten = [\"0.0.0.0:2525\"]\n[metrics]\nlisten = \"127.0.0.1:2525\"\n",
       "4: metrics.listen: \"127.0.0.1:2525\" overlaps the SMTP listener \"0.0.0.0:2525\""},
      // Looked up when the file is read, so that --check-config and a reload report it.
      {"[server]\nuser = \"no-such-user-portcullis\"\n", "2: server.user: \"no-such-user-portcullis\": no such user"},
      {"[server]\nuser = \"\"\n", "2: server.user: empty (remove it to keep the user the daemon was started as)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.toml);
    const fs::path file = write(c.toml);
    const auto got = problems(file);
    EXPECT_TRUE(has(got, file.string() + ":" + c.want)) << "want: " << file.string() << ":" << c.want << "\ngot:\n"
                                                        << joined(got);
    for (const auto& p : got) EXPECT_EQ(p.find_first_of("\r\n"), std::string::npos) << "one line: " << p;
  }
}

// The edges of every range, and the names and addresses that must pass.
TEST_F(ConfigTest, ValuesThatPass) {
  const std::vector<std::string> cases = {
      "[server]\nidle_timeout = 1\ndata_timeout = 86400\nshutdown_grace = 0\n",
      "[server]\nshutdown_grace = 86400\nthreads = 1024\n",
      "[server]\nmax_message_size = 1\nmax_recipients = 1\nmax_line_length = 512\nmax_errors = 1\n",
      "[server]\nmax_message_size = 1073741824\nmax_recipients = 100000\nmax_line_length = 65536\nmax_errors = 1000\n",
      "[server]\nmax_connections = 1\nmax_connections_per_client = 1000000\n",
      "[server]\nhostname = \"localhost\"\n",
      "[server]\nhostname = \"MX-1.Example.TEST\"\n",
      "[server]\nhostname = \"xn--bcher-kva.example\"\n",
      "[server]\nhostname = \"1.2.3.example\"\n",
      "[server]\nhostname = \"" + std::string(63, 'a') + ".test\"\n",
      "[server]\nhostname = \"" + std::string(61, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
          std::string(63, 'd') + "\"\n",  // 253 octets
      "[server]\nlisten = [\"0.0.0.0:1\", \"[::]:65535\", \"[2001:db8::1]:25\", \"[::ffff:127.0.0.1]:26\"]\n",
      "[server]\nlisten = []\nlisten_tls = [\"127.0.0.1:465\"]\n[tls]\ncert = \"c\"\nkey = \"k\"\n",
      "[upstream]\nhelo = \"[192.0.2.1]\"\n",
      "[upstream]\nhelo = \"[IPv6:2001:db8::1]\"\n",
      "[upstream]\ntls_name = \"192.0.2.1\"\n",
      "[upstream]\nurl = \"smtp://localhost:25\"\n",
      "[upstream]\nurl = \"smtps://[2001:db8::25]:465\"\n",
      "[upstream]\nstarttls = \"never\"\nclient_info = \"xclient\"\n",
      "[upstream]\ndata_done_timeout = 86400\n",
      "[upstream]\ntimeout = 86400\n[policy]\ntimeout = 86400\nthreads = 1024\non_error = \"tempfail\"\n",
      "[auth]\nfailure_window = 86400\nmax_failures = 1000000\nallow_plaintext = true\n",
      "[dns]\ntimeout = 60\n",
      "[relay]\nlocal_domains = [\"example.test\", \"EXAMPLE.org\", \"localhost\"]\n",
      "[checks]\nspf = false\ndkim = false\ndmarc = false\nauthentication_results = false\n",
      "[server]\nworkers = 1\n",
      "[server]\nworkers = 0\n",
      "[server]\nworkers = 256\n",
      "[server]\nuser = \"nobody\"\n",
      "[server]\nuser = \"root\"\n",
      "[log]\nlevel = \"warning\"\nformat = \"text\"\n",
      "[dkim_sign]\n[store]\n[metrics]\n",
  };
  for (const auto& text : cases) {
    SCOPED_TRACE(text);
    const auto got = problems(write(text));
    EXPECT_TRUE(got.empty()) << joined(got);
  }
}

TEST_F(ConfigTest, ToStringSpellsTheConfigValues) {
  EXPECT_EQ(to_string(starttls_mode::never), "never");
  EXPECT_EQ(to_string(starttls_mode::opportunistic), "opportunistic");
  EXPECT_EQ(to_string(starttls_mode::required), "required");
  EXPECT_EQ(to_string(client_info_mode::none), "none");
  EXPECT_EQ(to_string(client_info_mode::xclient), "xclient");
  EXPECT_EQ(to_string(client_info_mode::xforward), "xforward");
  EXPECT_EQ(to_string(on_error_mode::tempfail), "tempfail");
  EXPECT_EQ(to_string(on_error_mode::accept), "accept");
  EXPECT_EQ(to_string(log_level::warning), "warning");
  EXPECT_EQ(to_string(log_format::text), "text");
  // Parsing what to_string wrote gives the value back.
  for (const auto m : {starttls_mode::never, starttls_mode::opportunistic, starttls_mode::required}) {
    const auto cfg = load_config(write("[upstream]\nstarttls = \"" + to_string(m) + "\"\n"));
    EXPECT_EQ(cfg->upstream.starttls, m);
  }
  for (const auto m : {client_info_mode::none, client_info_mode::xclient, client_info_mode::xforward}) {
    const auto cfg = load_config(write("[upstream]\nclient_info = \"" + to_string(m) + "\"\n"));
    EXPECT_EQ(cfg->upstream.client_info, m);
  }
  for (const auto m : {on_error_mode::tempfail, on_error_mode::accept}) {
    const auto cfg = load_config(write("[policy]\non_error = \"" + to_string(m) + "\"\n"));
    EXPECT_EQ(cfg->policy.on_error, m);
  }
}

// toml11 recurses once per level: deep nesting is refused before it parses
// (a 10,000-deep array crashed --check-config, start-up and SIGHUP).
TEST_F(ConfigTest, DeepNestingIsRefusedBeforeParsing) {
  const auto deep = [](std::size_t n, const std::string& open, const std::string& close, const std::string& inner) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += open;
    s += inner;
    for (std::size_t i = 0; i < n; ++i) s += close;
    return s;
  };
  const auto dotted = [](std::size_t n) {
    std::string s = "a";
    for (std::size_t i = 1; i < n; ++i) s += ".a";
    return s;
  };
  const std::string limit = std::to_string(max_config_nesting);
  struct deep_case {
    std::string toml;
    int line;  // 0: loads (or fails for another reason than depth)
  };
  const std::vector<deep_case> cases = {
      {"[server]\nhostname = \"mx.test\"\n\n[x]\ny = " + deep(10000, "[", "]", "") + "\n", 5},
      {"x = " + deep(100000, "[", "]", "1") + "\n", 1},
      {"x = " + deep(10000, "{a = ", "}", "1") + "\n", 1},
      {"x = [\n" + deep(40, "[\n", "]\n", "1\n") + "]\n", 33},  // across lines
      {"[" + dotted(100000) + "]\nx = 1\n", 1},
      {"[[" + dotted(40) + "]]\n", 1},
      {"\n" + dotted(100000) + " = 1\n", 2},
      {"x = {" + dotted(40) + " = 1}\n", 1},
      {"[a.b.c]\nd.e.f = [{g.h = " + deep(40, "[", "]", "") + "}]\n", 2},
      // The limit itself passes.
      {"x = " + deep(max_config_nesting + 1, "[", "]", "") + "\n", 1},
      {"x = " + deep(max_config_nesting, "[", "]", "") + "\n", 0},
      {"x = " + deep(max_config_nesting, "{a = ", "}", "1") + "\n", 0},
      {"x = " + deep(max_config_nesting + 1, "{a = ", "}", "1") + "\n", 1},
      {"[" + dotted(max_config_nesting) + "]\nx = 1\n", 0},
      {"[" + dotted(max_config_nesting + 1) + "]\nx = 1\n", 1},
      {"[" + dotted(max_config_nesting - 1) + "]\nx = [1]\n", 0},
      {"[" + dotted(max_config_nesting - 1) + "]\nx = [[1]]\n", 2},
      {dotted(max_config_nesting + 2) + " = 1\n", 1},  // 33 tables, then the value
      {dotted(max_config_nesting + 1) + " = 1\n", 0},
      // Brackets in strings and comments are not nesting.
      {"[p]\nx = \"" + deep(10000, "[", "]", "") + "\"\n", 0},
      {"[p]\nx = '" + deep(10000, "{", "}", "") + "'\n", 0},
      {"[p]\nx = \"\"\"\n" + deep(10000, "[", "\n]", "") + "\"\"\"\n", 0},
      {"[p]\nx = '''\n" + deep(10000, "[", "]", "") + "\n'''\n", 0},
      {"[p]\n# " + deep(10000, "[", "]", "") + "\nx = [1] # [[[[\n", 0},
      {"[p]\nx = \"\\\"" + deep(10000, "[", "]", "") + "\"\n", 0},
      {"[p]\nx = \"\"\"a\\\"\"\"" + deep(10000, "[", "]", "") + "\"\"\"\n", 0},
      {"[p]\nx = \"\"\"a\"\"\"\"\"\ny = 1\n", 0},  // up to two quotes before the closing three
      {"[p]\n\"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.A.B.C.D.E.F.G\" = 1\n", 0},
      // ...but an unterminated string does not hide what follows on the next line.
      {"[p]\nx = \"abc\ny = " + deep(10000, "[", "]", "") + "\n", 3},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.toml.substr(0, 120));
    const fs::path file = write(c.toml);
    const auto got = problems(file);
    const std::string want = file.string() + ":" + std::to_string(c.line) + ": nested more than " + limit +
                             " levels deep (arrays, inline tables, table headers and dotted keys together)";
    if (c.line) {
      ASSERT_EQ(got.size(), 1u) << joined(got);
      EXPECT_EQ(got[0], want);
    } else {
      for (const auto& p : got) EXPECT_EQ(p.find("nested more than"), std::string::npos) << p;
    }
  }
}

TEST_F(ConfigTest, SyntaxErrorCarriesFileAndLine) {
  const std::vector<std::pair<std::string, int>> cases = {
      {"[server]\nhostname = \n", 2},
      {"[server]\nhostname = \"mx\"\n\nlisten = [\"a:1\" \"b:2\"]\n", 4},
      {"[server\n", 1},
      {"[server]\nhostname = \"x\"\nhostname = \"y\"\n", 3},  // a key defined twice
  };
  for (const auto& [text, line] : cases) {
    SCOPED_TRACE(text);
    const fs::path file = write(text);
    const auto got = problems(file);
    ASSERT_EQ(got.size(), 1u) << joined(got);
    const std::string prefix = file.string() + ":" + std::to_string(line) + ": ";
    EXPECT_EQ(got[0].substr(0, prefix.size()), prefix) << got[0];
    EXPECT_GT(got[0].size(), prefix.size()) << "a message after file:line";
    EXPECT_EQ(got[0].find('\n'), std::string::npos) << "one line";
  }
}

// Every problem is reported at once, not only the first.
TEST_F(ConfigTest, EveryProblemAtOnce) {
  const fs::path file = write(R"([server]
bogus = 1
max_recipients = "x"

[upstream]
starttls = "maybe"

[policy]
on_error = "explode"
)");
  const auto got = problems(file);
  const std::string f = file.string();
  EXPECT_TRUE(has(got, f + ":2: server.bogus: unknown key")) << joined(got);
  EXPECT_TRUE(has(got, f + ":3: server.max_recipients: wrong type (want an integer)")) << joined(got);
  EXPECT_TRUE(has(got, f + ":6: upstream.starttls: \"maybe\" is not one of \"never\", \"opportunistic\", \"required\""))
      << joined(got);
  EXPECT_TRUE(has(got, f + ":9: policy.on_error: \"explode\" is not one of \"tempfail\", \"accept\"")) << joined(got);
  EXPECT_EQ(got.size(), 4u) << joined(got);
}

TEST_F(ConfigTest, MissingFile) {
  const fs::path file = dir_ / "nope.toml";
  const auto got = problems(file);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].rfind(file.string() + ": cannot open", 0), 0u) << got[0];
}

// A path that opens but cannot be read (a directory, an I/O error) is a
// config problem like any other, not a stream exception: the callers would
// abort at start-up, or stop the daemon on a SIGHUP.
TEST_F(ConfigTest, DirectoryIsAProblemNotAnException) {
  const fs::path file = dir_ / "a-directory.toml";
  fs::create_directories(file);
  std::vector<std::string> got;
  EXPECT_NO_THROW(got = problems(file));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], file.string() + ": cannot read: " + std::strerror(EISDIR)) << got[0];
}

}  // namespace
}  // namespace portcullis
