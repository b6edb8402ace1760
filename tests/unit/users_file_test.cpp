// Table tests for the AUTH users file: parsing rules with "file:line"
// problems, and verify() against hashes made here with libcrypt.
#include "auth/users_file.hpp"

#include <crypt.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace portcullis::auth {
namespace {

using namespace std::literals;

// A substring check that prints both sides (without pulling in gmock).
::testing::AssertionResult contains(const std::string& s, const std::string& part) {
  if (s.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << s << "' does not contain '" << part << "'";
}

// A crypt(3) hash of `password` with a fresh salt. `count` 0 is libcrypt's
// default cost; tests pass the cheapest one the scheme allows to stay fast.
std::string make_hash(const char* prefix, unsigned long count, const std::string& password) {
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn(prefix, count, nullptr, 0, setting, sizeof setting)) {
    ADD_FAILURE() << "crypt_gensalt_rn(" << prefix << ") failed";
    return {};
  }
  auto data = std::make_unique<crypt_data>();
  const char* hash = crypt_r(password.c_str(), setting, data.get());
  if (!hash || hash[0] == '*') {
    ADD_FAILURE() << "crypt_r(" << setting << ") failed";
    return {};
  }
  return hash;
}

struct scheme {
  const char* name;
  const char* prefix;
  unsigned long count;
};

const std::vector<scheme> schemes = {
    {"yescrypt", "$y$", 1},
    {"sha512-crypt", "$6$", 1000},
    {"sha256-crypt", "$5$", 1000},
    {"bcrypt 2b", "$2b$", 4},
    {"bcrypt 2y", "$2y$", 4},
};

TEST(UsersFile, VerifyEveryScheme) {
  for (const auto& s : schemes) {
    SCOPED_TRACE(s.name);
    const std::string hash = make_hash(s.prefix, s.count, "correct horse");
    ASSERT_TRUE(hash.starts_with(s.prefix)) << hash;
    EXPECT_EQ(check_password_hash(hash), "");
    const users_file users = users_file::parse("alice:" + hash + "\n", "users");
    EXPECT_EQ(users.size(), 1u);
    EXPECT_TRUE(users.contains("alice"));
    EXPECT_TRUE(users.verify("alice", "correct horse"));
    EXPECT_FALSE(users.verify("alice", "correct horsE"));
    EXPECT_FALSE(users.verify("alice", "correct hors"));
    EXPECT_FALSE(users.verify("alice", ""));
    EXPECT_FALSE(users.verify("alice", "correct horse\0tail"sv));  // no cutting at the NUL
    EXPECT_FALSE(users.verify("Alice", "correct horse"));            // names are exact octets
    EXPECT_FALSE(users.verify("bob", "correct horse"));              // unknown user
    EXPECT_FALSE(users.verify("", "correct horse"));
  }
}

TEST(UsersFile, DefaultCostHashes) {
  // What mkpasswd(1) makes by default: libcrypt's preferred method and cost.
  const std::string hash = make_hash(nullptr, 0, "s3cret");
  EXPECT_EQ(check_password_hash(hash), "") << hash;
  const users_file users = users_file::parse("carol:" + hash, "users");  // no final newline
  EXPECT_TRUE(users.verify("carol", "s3cret"));
  EXPECT_FALSE(users.verify("carol", "S3cret"));
}

TEST(UsersFile, ManyUsersCommentsAndBlankLines) {
  const std::string a = make_hash("$y$", 1, "pa"), b = make_hash("$6$", 1000, "pb"), c = make_hash("$2b$", 4, "pc");
  const std::string text = "# accounts for AUTH\n"
                           "\n"
                           "alice:" + a + "\n"
                           "   \t \n"
                           "  # an indented comment\n"
                           "bob@example.org:" + b + "\n"
                           "#carol:disabled for now\n"
                           "j\xc3\xb6rg:" + c + "\n";
  const users_file users = users_file::parse(text, "users");
  EXPECT_EQ(users.size(), 3u);
  EXPECT_TRUE(users.verify("alice", "pa"));
  EXPECT_TRUE(users.verify("bob@example.org", "pb"));
  EXPECT_TRUE(users.verify("j\xc3\xb6rg", "pc"));
  EXPECT_FALSE(users.verify("alice", "pb"));  // each user has their own hash
  EXPECT_FALSE(users.verify("bob@example.org", "pa"));
  EXPECT_FALSE(users.contains("#carol"));
  EXPECT_FALSE(users.contains("carol"));
}

TEST(UsersFile, EmptyFileVerifiesNobody) {
  const users_file users = users_file::parse("# nobody yet\n", "users");
  EXPECT_EQ(users.size(), 0u);
  ASSERT_EQ(users.timing_references().size(), 1u);
  EXPECT_FALSE(users.timing_references()[0].empty());
  EXPECT_TRUE(users.warnings().empty());
  EXPECT_FALSE(users.verify("alice", "anything"));
  EXPECT_FALSE(users.verify("alice", ""));
}

// ---- problems, with file:line ---------------------------------------------------------

struct problem_case {
  std::string name;
  std::string text;
  std::vector<std::string> problems;  // exact, or a substring when it starts with '~'
};

TEST(UsersFile, Problems) {
  const std::string good = make_hash("$6$", 1000, "x");
  const std::string yes = make_hash("$y$", 1, "x");
  const std::string advice = "rehash with yescrypt ($y$), sha512-crypt ($6$) or bcrypt ($2b$), e.g. `mkpasswd -m yescrypt`";
  const std::vector<problem_case> cases = {
      {"no colon", "alice\n", {"users:1: expected user:hash"}},
      {"empty user", ":" + good + "\n", {"users:1: empty user name"}},
      {"empty hash", "alice:\n", {"users:1: user 'alice': empty hash"}},
      {"space before colon", "alice :" + good, {"users:1: whitespace around ':'"}},
      {"space after colon", "alice: " + good, {"users:1: whitespace around ':'"}},
      {"leading space", " alice:" + good, {"users:1: whitespace at the start or end of the line"}},
      {"trailing space", "alice:" + good + " ", {"users:1: whitespace at the start or end of the line"}},
      {"trailing tab", "alice:" + good + "\t", {"users:1: whitespace at the start or end of the line"}},
      {"space in user", "al ice:" + good, {"users:1: user name contains whitespace or a control character"}},
      {"control in user", "al\x01ice:" + good, {"users:1: user name contains whitespace or a control character"}},
      {"user not UTF-8", "al\xffice:" + good, {"users:1: user name is not UTF-8"}},
      {"user 256 octets", std::string(256, 'u') + ":" + good,
       {"users:1: user name longer than 255 octets (the SASL limit, RFC 4616 §2)"}},
      {"CRLF", "alice:" + good + "\r\n", {"users:1: carriage return in the line (DOS line endings? convert with dos2unix)"}},
      {"NUL", "alice:" + good + "\0"s, {"users:1: NUL byte in the line"}},
      {"shadow line", "alice:" + good + ":19000:0:99999:7:::",
       {"users:1: more than one ':' (a shadow(5) or passwd(5) line? keep only user:hash)"}},
      {"md5-crypt", "alice:$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
       {"users:1: user 'alice': md5-crypt ($1$) is too weak; " + advice}},
      {"apr1", "alice:$apr1$saltsalt$qjXMvbEw8oaL.CzflDugX/", {"~Apache md5 ($apr1$) is too weak"}},
      {"DES", "alice:abJnggxhB/yWI", {"users:1: user 'alice': traditional DES crypt is too weak; " + advice}},
      {"BSDi", "alice:_J9..CCCCXBrJUJV154M", {"~BSDi extended DES is too weak"}},
      {"NT hash", "alice:$3$$8846f7eaee8fb117ad06bdd830b7586c", {"~NT hash ($3$) is too weak"}},
      {"bcrypt 2a", "alice:$2a$04$abcdefghijklmnopqrstuu5Tmx8HbZD6a7yzSP5O0ApOkC6pZ8mDG", {"~bcrypt $2a$ is a legacy variant"}},
      {"scrypt", "alice:$7$CU..../....salt$hash", {"~unsupported hash scheme '$7$'"}},
      {"gost-yescrypt", "alice:$gy$j9T$salt$hash", {"~unsupported hash scheme '$gy$'"}},
      {"plain text", "alice:secret", {"users:1: user 'alice': not a crypt(3) hash; " + advice}},
      {"locked", "alice:!" + good, {"users:1: user 'alice': a locked or disabled hash ('!...'): comment the line out instead"}},
      {"disabled", "alice:*", {"~a locked or disabled hash ('*...')"}},
      {"sha512 truncated", "alice:" + good.substr(0, good.size() - 1), {"users:1: user 'alice': malformed sha512-crypt hash"}},
      {"sha512 no hash", "alice:$6$saltsalt$", {"~malformed sha512-crypt hash"}},
      {"sha512 setting only", "alice:$6$saltsalt", {"~malformed sha512-crypt hash"}},
      {"sha512 bad rounds", "alice:$6$rounds=x$salt$" + std::string(86, 'a'), {"~malformed sha512-crypt hash"}},
      {"sha512 salt too long", "alice:$6$" + std::string(17, 's') + "$" + std::string(86, 'a'),
       {"~malformed sha512-crypt hash"}},
      {"sha256 wrong length", "alice:$5$salt$" + std::string(86, 'a'), {"~malformed sha256-crypt hash"}},
      {"yescrypt truncated", "alice:" + yes.substr(0, yes.size() - 1), {"users:1: user 'alice': malformed yescrypt hash"}},
      {"yescrypt bad character", "alice:" + yes.substr(0, yes.size() - 1) + "!", {"~malformed yescrypt hash"}},
      {"bcrypt short", "alice:$2b$04$abcdefghijklmnopqrstuu5Tmx8HbZD6a7yzSP5O0ApOkC6pZ8mD", {"~malformed bcrypt hash"}},
      {"bcrypt cost 3", "alice:$2b$03$abcdefghijklmnopqrstuu5Tmx8HbZD6a7yzSP5O0ApOkC6pZ8mDG", {"~cost outside 04-31"}},
      {"bcrypt cost 32", "alice:$2b$32$abcdefghijklmnopqrstuu5Tmx8HbZD6a7yzSP5O0ApOkC6pZ8mDG", {"~cost outside 04-31"}},
      {"duplicate", "alice:" + good + "\nbob:" + good + "\nalice:" + yes + "\n",
       {"users:3: user 'alice' already defined on line 1"}},
      {"every problem, each on its line",
       "# header\nalice:" + good + "\nbob :" + good + "\n\ncarol:$1$x$y\nalice:" + good + "\ndave\n",
       {"users:3: whitespace around ':'", "~users:5: user 'carol': md5-crypt", "users:6: user 'alice' already defined on line 2",
        "users:7: expected user:hash"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    try {
      users_file::parse(c.text, "users");
      ADD_FAILURE() << "no users_file_error";
    } catch (const users_file_error& e) {
      ASSERT_EQ(e.problems().size(), c.problems.size()) << e.what();
      for (std::size_t i = 0; i < c.problems.size(); ++i) {
        if (c.problems[i].starts_with('~'))
          EXPECT_TRUE(contains(e.problems()[i], c.problems[i].substr(1)));
        else
          EXPECT_EQ(e.problems()[i], c.problems[i]);
      }
      EXPECT_TRUE(contains(e.what(), e.problems().front()));
    }
  }
}

// ---- files on disk ----------------------------------------------------------------------

class UsersFileOnDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("portcullis-users-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(UsersFileOnDisk, Loads) {
  const auto path = write("users", "alice:" + make_hash("$y$", 1, "pw") + "\n");
  const users_file users = users_file::load(path);
  EXPECT_TRUE(users.verify("alice", "pw"));
  EXPECT_FALSE(users.verify("alice", "pW"));
}

TEST_F(UsersFileOnDisk, ProblemsNameTheFile) {
  const auto path = write("users", "alice:$1$x$y\n");
  try {
    users_file::load(path);
    ADD_FAILURE() << "no users_file_error";
  } catch (const users_file_error& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_TRUE(contains(e.problems()[0], path.string() + ":1: user 'alice': md5-crypt"));
  }
}

TEST_F(UsersFileOnDisk, MissingFile) {
  const auto path = dir_ / "absent";
  try {
    users_file::load(path);
    ADD_FAILURE() << "no users_file_error";
  } catch (const users_file_error& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_EQ(e.problems()[0], path.string() + ": cannot read: No such file or directory");
  }
}

// ---- timing ----------------------------------------------------------------------------

// Every login computes one hash of each cost in the file: an unknown user is
// not answered at the commonest cost, which would tell a user with a rarer,
// slower hash (bcrypt among sha512-crypt users) from one that does not exist.
TEST(UsersFile, EveryCostInTheFileIsATimingReference) {
  const std::string y1 = make_hash("$y$", 1, "a"), y2 = make_hash("$y$", 1, "b");
  const std::string b = make_hash("$2b$", 5, "c");
  const users_file users = users_file::parse("alice:" + y1 + "\ncarol:" + y2 + "\nbob:" + b + "\n", "users");
  EXPECT_EQ(users.timing_references(), (std::vector<std::string>{y1, b}));  // one per cost, the first of each
  const users_file one = users_file::parse("bob:" + b + "\n", "users");
  EXPECT_EQ(one.timing_references(), std::vector<std::string>{b});
  EXPECT_TRUE(one.warnings().empty());
  // Costs count, not only schemes: "$6$rounds=N$" differs from the default "$6$".
  const std::string s1 = make_hash("$6$", 1000, "a"), s2 = make_hash("$6$", 2000, "b"), s3 = make_hash("$6$", 2000, "c");
  const users_file sha = users_file::parse("a:" + s1 + "\nb:" + s2 + "\nc:" + s3 + "\n", "users");
  EXPECT_EQ(sha.timing_references(), (std::vector<std::string>{s1, s2}));
  // Still right for every user, whichever reference stands for its cost.
  EXPECT_TRUE(users.verify("alice", "a"));
  EXPECT_TRUE(users.verify("carol", "b"));
  EXPECT_TRUE(users.verify("bob", "c"));
  EXPECT_FALSE(users.verify("bob", "a"));
  EXPECT_FALSE(users.verify("mallory", "a"));
  EXPECT_FALSE(sha.verify("c", "b"));
  EXPECT_TRUE(sha.verify("c", "c"));
}

TEST(UsersFile, MixedCostsAreWarnedAbout) {
  const std::string s = make_hash("$6$", 1000, "a"), b = make_hash("$2b$", 5, "c");
  const users_file users = users_file::parse("user1:" + s + "\nadmin:" + b + "\n", "users.txt");
  ASSERT_EQ(users.warnings().size(), 1u);
  const std::string& w = users.warnings()[0];
  EXPECT_TRUE(contains(w, "users.txt: 2 hash schemes or costs ($6$rounds=1000$ (user1), $2b$05$ (admin))")) << w;
  EXPECT_TRUE(contains(w, "every login computes a hash of each")) << w;
}

double median_seconds(const std::function<void()>& f) {
  std::vector<double> runs;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

// An unknown user costs a hash computation too. A loose bound: the point is
// "one computation, not none", which is orders of magnitude apart.
TEST(UsersFile, UnknownUserCostsAHash) {
  const users_file users = users_file::parse("alice:" + make_hash("$2b$", 8, "pw") + "\n", "users");
  const double known = median_seconds([&] { EXPECT_FALSE(users.verify("alice", "wrong")); });
  const double unknown = median_seconds([&] { EXPECT_FALSE(users.verify("mallory", "wrong")); });
  EXPECT_GT(unknown, known * 0.3) << "known " << known << "s, unknown " << unknown << "s";
}

TEST(UsersFile, VerifyIsThreadSafe) {
  const users_file users = users_file::parse(
      "alice:" + make_hash("$y$", 1, "pa") + "\nbob:" + make_hash("$2b$", 4, "pb") + "\n", "users");
  std::vector<std::thread> threads;
  std::vector<int> failures(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        if (!users.verify("alice", "pa") || !users.verify("bob", "pb") || users.verify("alice", "pb") ||
            users.verify("eve", "pa"))
          ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

}  // namespace
}  // namespace portcullis::auth
