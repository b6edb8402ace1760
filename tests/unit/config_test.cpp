// Tests for the TOML config loader (CONTRACT.md "Configuration"): defaults,
// every key, paths relative to the config's folder, and every problem
// reported with file:line.
#include "config/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
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
  EXPECT_EQ(cfg->server.max_recipients, 1000u);
  EXPECT_FALSE(cfg->server.require_tls);
  EXPECT_FALSE(cfg->server.require_auth);
  EXPECT_FALSE(cfg->server.proxy_protocol);
  EXPECT_EQ(cfg->server.proxy_trusted, (std::vector<std::string>{"127.0.0.0/8", "::1"}));
  EXPECT_EQ(cfg->upstream.url, "smtp://127.0.0.1:25");
  EXPECT_EQ(cfg->upstream.scheme, upstream_config::kind::smtp);
  EXPECT_EQ(cfg->upstream.host, "127.0.0.1");
  EXPECT_EQ(cfg->upstream.port, "25");
  EXPECT_EQ(cfg->upstream.starttls, "opportunistic");
  EXPECT_EQ(cfg->upstream.timeout, 60s);
  EXPECT_EQ(cfg->upstream.helo, cfg->server.hostname);
  EXPECT_FALSE(cfg->tls.enabled);
  EXPECT_FALSE(cfg->auth.enabled);
  EXPECT_FALSE(cfg->relay.enabled);
  EXPECT_TRUE(cfg->relay.local_domains.empty());
  EXPECT_TRUE(cfg->relay.trusted_networks.empty());
  EXPECT_TRUE(cfg->policy.files.empty());
  EXPECT_EQ(cfg->policy.timeout, 10s);
  EXPECT_EQ(cfg->policy.on_error, "tempfail");
  EXPECT_TRUE(cfg->checks.spf);
  EXPECT_TRUE(cfg->checks.dkim);
  EXPECT_TRUE(cfg->checks.dmarc);
  EXPECT_TRUE(cfg->checks.authentication_results);
  EXPECT_EQ(cfg->dns.nameserver, "");
  EXPECT_EQ(cfg->dns.timeout, 5s);
}

// An empty [server] table changes nothing either.
TEST_F(ConfigTest, EmptyTablesKeepDefaults) {
  const auto cfg = load_config(write("[server]\n[upstream]\n[policy]\n[checks]\n[dns]\n"));
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
spf = false
dkim = false
dmarc = false
authentication_results = false

[dns]
nameserver = "127.0.0.1:5353"
timeout = 2
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
  EXPECT_EQ(cfg->upstream.starttls, "required");
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
  EXPECT_EQ(cfg->policy.on_error, "accept");
  EXPECT_FALSE(cfg->checks.spf);
  EXPECT_FALSE(cfg->checks.dkim);
  EXPECT_FALSE(cfg->checks.dmarc);
  EXPECT_FALSE(cfg->checks.authentication_results);
  EXPECT_EQ(cfg->dns.nameserver, "127.0.0.1:5353");
  EXPECT_EQ(cfg->dns.timeout, 2s);
}

// Keys beyond the contract (limits with RFC/Postfix defaults).
TEST_F(ConfigTest, ExtraKeys) {
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

[upstream]
helo = "proxy.example.test"
)"));
  EXPECT_EQ(cfg->server.max_line_length, 4096u);
  EXPECT_EQ(cfg->server.max_errors, 3u);
  EXPECT_EQ(cfg->server.idle_timeout, 60s);
  EXPECT_EQ(cfg->server.data_timeout, 120s);
  EXPECT_EQ(cfg->server.max_connections, 10u);
  EXPECT_EQ(cfg->server.max_connections_per_client, 2u);
  EXPECT_EQ(cfg->server.shutdown_grace, 0s);
  EXPECT_EQ(cfg->server.threads, 4u);
  EXPECT_EQ(cfg->upstream.helo, "proxy.example.test");
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

TEST_F(ConfigTest, ProblemsCarryFileAndLine) {
  const std::vector<problem_case> cases = {
      // Unknown keys, in a known table or at the top.
      {"[server]\nhostname = \"x\"\nbogus = 1\n", "3: unknown key 'server.bogus'"},
      {"\n\n[upstream]\n\ntimeot = 5\n", "5: unknown key 'upstream.timeot'"},
      {"[tls]\ncert = \"c\"\nkey = \"k\"\nchain = \"x\"\n", "4: unknown key 'tls.chain'"},
      {"[auth]\nusers = \"u\"\n", "2: unknown key 'auth.users'"},
      {"[relay]\nlocal_domain = []\n", "2: unknown key 'relay.local_domain'"},
      {"[policy]\nfile = []\n", "2: unknown key 'policy.file'"},
      {"[checks]\narc = true\n", "2: unknown key 'checks.arc'"},
      {"[dns]\nserver = \"x\"\n", "2: unknown key 'dns.server'"},
      {"hostname = \"x\"\n[server]\n", "1: unknown key 'hostname' (settings belong in a table)"},
      {"server = 1\n", "1: 'server' must be a table"},
      // Wrong types.
      {"[server]\n\nmax_recipients = \"many\"\n", "3: 'server.max_recipients' has the wrong type (want an integer)"},
      {"[server]\nrequire_tls = \"yes\"\n", "2: 'server.require_tls' has the wrong type (want true or false)"},
      {"[server]\nlisten = \"127.0.0.1:25\"\n", "2: 'server.listen' has the wrong type (want a list of strings)"},
      {"[server]\nlisten = [25]\n", "2: 'server.listen' has the wrong type (want a list of strings)"},
      {"[server]\nhostname = 1\n", "2: 'server.hostname' has the wrong type (want a string)"},
      {"[upstream]\ntimeout = 1.5\n", "2: 'upstream.timeout' has the wrong type (want an integer)"},
      {"[checks]\nspf = 1\n", "2: 'checks.spf' has the wrong type (want true or false)"},
      {"[policy]\nfiles = \"rules.py\"\n", "2: 'policy.files' has the wrong type (want a list of strings)"},
      // Bad values.
      {"[upstream]\nurl = \"http://mx.example.test\"\n",
       "2: upstream.url must be smtp://HOST:PORT, smtps://HOST:PORT or maildir:PATH"},
      {"[upstream]\nurl = \"smtp://mx.example.test:99999\"\n", "2: bad upstream url 'smtp://mx.example.test:99999'"},
      {"[upstream]\nurl = \"smtp://mx.example.test:0\"\n", "2: bad upstream url 'smtp://mx.example.test:0'"},
      {"[upstream]\nurl = \"smtp://mx.example.test:smtp\"\n", "2: bad upstream url 'smtp://mx.example.test:smtp'"},
      {"[upstream]\nurl = \"smtp://\"\n", "2: bad upstream url 'smtp://'"},
      {"[upstream]\nurl = \"smtp://[::1\"\n", "2: bad upstream url 'smtp://[::1'"},
      {"[upstream]\nurl = \"maildir:\"\n", "2: maildir: needs a path"},
      {"[upstream]\nstarttls = \"sometimes\"\n",
       "2: upstream.starttls must be \"never\", \"opportunistic\" or \"required\""},
      {"[upstream]\nstarttls = \"Required\"\n",
       "2: upstream.starttls must be \"never\", \"opportunistic\" or \"required\""},
      {"[policy]\non_error = \"reject\"\n", "2: policy.on_error must be \"tempfail\" or \"accept\""},
      {"[server]\nlisten = [\"localhost\"]\n", "2: bad listen address 'localhost' (want HOST:PORT)"},
      {"[server]\nlisten_tls = [\"0.0.0.0:\"]\n", "2: bad listen address '0.0.0.0:' (want HOST:PORT)"},
      {"[dns]\nnameserver = \"127.0.0.1\"\n", "2: dns.nameserver must be HOST:PORT"},
      {"[server]\nmax_recipients = 0\n", "2: 'server.max_recipients' must be at least 1"},
      {"[server]\nmax_message_size = -1\n", "2: 'server.max_message_size' must be at least 1"},
      {"[server]\nmax_line_length = 100\n", "2: 'server.max_line_length' must be at least 512"},
      {"[upstream]\ntimeout = 0\n", "2: 'upstream.timeout' must be at least 1"},
      {"[policy]\ntimeout = -5\n", "2: 'policy.timeout' must be at least 1"},
      {"[dns]\ntimeout = 0\n", "2: 'dns.timeout' must be at least 1"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.toml);
    const fs::path file = write(c.toml);
    const auto got = problems(file);
    EXPECT_TRUE(has(got, file.string() + ":" + c.want)) << "want: " << file.string() << ":" << c.want << "\ngot:\n"
                                                        << joined(got);
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
  EXPECT_TRUE(has(got, f + ":2: unknown key 'server.bogus'")) << joined(got);
  EXPECT_TRUE(has(got, f + ":3: 'server.max_recipients' has the wrong type (want an integer)")) << joined(got);
  EXPECT_TRUE(has(got, f + ":6: upstream.starttls must be \"never\", \"opportunistic\" or \"required\""))
      << joined(got);
  EXPECT_TRUE(has(got, f + ":9: policy.on_error must be \"tempfail\" or \"accept\"")) << joined(got);
  EXPECT_EQ(got.size(), 4u) << joined(got);
}

TEST_F(ConfigTest, MissingFile) {
  const fs::path file = dir_ / "nope.toml";
  const auto got = problems(file);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].rfind(file.string() + ": cannot open", 0), 0u) << got[0];
}

}  // namespace
}  // namespace portcullis
