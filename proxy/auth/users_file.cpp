#include "auth/users_file.hpp"

#include <crypt.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>

#include "smtp/text.hpp"

namespace portcullis::auth {

namespace {

constexpr std::size_t max_user_length = 255;  // the SASL authcid limit (RFC 4616 §2)
constexpr std::string_view rehash_advice =
    "rehash with yescrypt ($y$), sha512-crypt ($6$) or bcrypt ($2b$), e.g. `mkpasswd -m yescrypt`";

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// crypt(3)'s base-64 alphabet ("./0-9A-Za-z"): salts and hash parts.
bool is_crypt64(std::string_view s) {
  for (const char c : s)
    if (!(c == '.' || c == '/' || smtp::is_digit(c) || smtp::is_alpha(c))) return false;
  return true;
}

std::vector<std::string_view> split_dollar(std::string_view s) {
  std::vector<std::string_view> parts;
  for (;;) {
    const std::size_t d = s.find('$');
    parts.push_back(s.substr(0, d));
    if (d == std::string_view::npos) return parts;
    s.remove_prefix(d + 1);
  }
}

// The shape of the hashes we accept, beyond the setting crypt_checksalt
// looks at: a truncated or mangled hash would load and then never match.
std::string check_shape(std::string_view hash) {
  const auto parts = split_dollar(hash);  // parts[0] is "" (the leading '$')
  if (hash.starts_with("$y$")) {
    // $y$params$salt$hash, hash 256 bits = 43 characters
    if (parts.size() != 5 || parts[2].empty() || parts[3].empty() || parts[4].size() != 43 ||
        !is_crypt64(parts[2]) || !is_crypt64(parts[3]) || !is_crypt64(parts[4]))
      return "malformed yescrypt hash";
    return {};
  }
  if (hash.starts_with("$6$") || hash.starts_with("$5$")) {
    // $6$[rounds=N$]salt$hash: 86 characters for SHA-512, 43 for SHA-256
    const bool sha512 = hash[1] == '6';
    const std::size_t want = sha512 ? 86 : 43;
    const char* name = sha512 ? "malformed sha512-crypt hash" : "malformed sha256-crypt hash";
    std::size_t salt = 2;
    if (parts.size() == 5) {
      const std::string_view rounds = parts[2];
      if (!rounds.starts_with("rounds=") || rounds.size() == 7) return name;
      for (const char c : rounds.substr(7))
        if (!smtp::is_digit(c)) return name;
      salt = 3;
    } else if (parts.size() != 4) {
      return name;
    }
    if (parts[salt].empty() || parts[salt].size() > 16 || !is_crypt64(parts[salt]) || parts[salt + 1].size() != want ||
        !is_crypt64(parts[salt + 1]))
      return name;
    return {};
  }
  // $2b$NN$ + 22 characters of salt + 31 of hash = 60
  if (hash.size() != 60 || parts.size() != 4 || parts[2].size() != 2 || !smtp::is_digit(parts[2][0]) ||
      !smtp::is_digit(parts[2][1]) || !is_crypt64(parts[3]))
    return "malformed bcrypt hash";
  const int cost = (parts[2][0] - '0') * 10 + (parts[2][1] - '0');
  if (cost < 4 || cost > 31) return "malformed bcrypt hash (cost outside 04-31)";
  return {};
}

// The part of a hash that sets its cost: "$y$j9T$", "$2b$12$",
// "$6$rounds=N$", "$6$". Hashes with the same key take the same time.
std::string_view cost_key(std::string_view hash) {
  std::size_t end = hash.find('$', 1);  // after the scheme id
  if (end == std::string_view::npos) return hash;
  const std::string_view after = hash.substr(end + 1);
  const bool sha_default_rounds = (hash.starts_with("$6$") || hash.starts_with("$5$")) && !after.starts_with("rounds=");
  if (!sha_default_rounds) {
    const std::size_t next = hash.find('$', end + 1);
    if (next != std::string_view::npos) end = next;
  }
  return hash.substr(0, end + 1);
}

bool constant_time_equals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;  // lengths are public: they follow from the scheme
  volatile unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// A hash of libcrypt's preferred scheme and default cost, for a file with no
// users (verify() must still cost one computation).
std::string default_reference_hash() {
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn(nullptr, 0, nullptr, 0, setting, sizeof setting)) return "$6$portcullis.ref$";
  auto data = std::make_unique<crypt_data>();
  const char* hash = crypt_r("", setting, data.get());
  return hash && hash[0] != '*' ? std::string(hash) : std::string(setting);
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }

}  // namespace

users_file_error::users_file_error(std::vector<std::string> problems)
    : std::runtime_error(join_lines(problems)), problems_(std::move(problems)) {}

std::string check_password_hash(std::string_view hash) {
  if (hash.empty()) return "empty hash";
  if (hash[0] == '!' || hash[0] == '*')
    return "a locked or disabled hash ('" + std::string(1, hash[0]) + "...'): comment the line out instead";
  struct refused {
    std::string_view prefix, why;
  };
  static const refused weak[] = {
      {"$1$", "md5-crypt ($1$) is too weak"},
      {"$apr1$", "Apache md5 ($apr1$) is too weak"},
      {"$md5", "Sun md5-crypt is too weak"},
      {"$3$", "NT hash ($3$) is too weak"},
      {"$sha1$", "sha1-crypt ($sha1$) is too weak"},
      {"$2a$", "bcrypt $2a$ is a legacy variant with a known ambiguity"},
      {"$2x$", "bcrypt $2x$ is a legacy variant with a known bug"},
      {"_", "BSDi extended DES is too weak"},
  };
  for (const auto& w : weak)
    if (hash.starts_with(w.prefix)) return std::string(w.why) + "; " + std::string(rehash_advice);
  const bool accepted_scheme = hash.starts_with("$y$") || hash.starts_with("$6$") || hash.starts_with("$5$") ||
                               hash.starts_with("$2b$") || hash.starts_with("$2y$");
  if (!accepted_scheme) {
    if (hash.size() == 13 && is_crypt64(hash)) return "traditional DES crypt is too weak; " + std::string(rehash_advice);
    if (hash[0] == '$') {
      const std::size_t end = hash.find('$', 1);
      const std::string id(hash.substr(0, end == std::string_view::npos ? hash.size() : end + 1));
      return "unsupported hash scheme '" + id + "': use yescrypt ($y$), sha512-crypt ($6$), sha256-crypt ($5$) "
             "or bcrypt ($2b$, $2y$)";
    }
    return "not a crypt(3) hash; " + std::string(rehash_advice);
  }
  if (std::string shape = check_shape(hash); !shape.empty()) return shape;
#ifdef CRYPT_CHECKSALT_AVAILABLE
  // libxcrypt knows whether this build and its configuration accept the
  // method (Debian may disable some) and whether the setting is sound.
  const std::string text(hash);
  switch (crypt_checksalt(text.c_str())) {
    case CRYPT_SALT_OK: break;
    case CRYPT_SALT_METHOD_LEGACY:
      // libxcrypt leaves sha256-crypt out of its "strong" set, so it reports
      // it as legacy; it is sha512-crypt's construction (SHA-crypt with a
      // rounds count) and old systems are full of such hashes: kept.
      if (hash.starts_with("$5$")) break;
      return "a legacy hashing method; " + std::string(rehash_advice);
#ifdef CRYPT_SALT_METHOD_DISABLED
    case CRYPT_SALT_METHOD_DISABLED: return "a hashing method disabled in this system's libcrypt";
#endif
#ifdef CRYPT_SALT_TOO_CHEAP
    case CRYPT_SALT_TOO_CHEAP: return "hash parameters too cheap; " + std::string(rehash_advice);
#endif
    default: return "a setting this system's libcrypt does not accept";
  }
#endif
  return {};
}

users_file users_file::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw users_file_error({file.string() + ": cannot read: " + std::strerror(errno)});
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw users_file_error({file.string() + ": cannot read: " + std::strerror(errno)});
  return parse(text, file.string());
}

users_file users_file::parse(std::string_view text, std::string_view name) {
  users_file out;
  std::vector<std::string> problems;
  std::unordered_map<std::string, std::size_t> defined_on;  // user -> line
  std::map<std::string, std::string> cost_users;  // cost key -> the first user with it

  std::size_t number = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++number;
    const auto problem = [&](const std::string& message) {
      problems.push_back(std::string(name) + ":" + std::to_string(number) + ": " + message);
    };

    if (line.find('\r') != std::string_view::npos) {
      problem("carriage return in the line (DOS line endings? convert with dos2unix)");
      continue;
    }
    if (line.find('\0') != std::string_view::npos) {
      problem("NUL byte in the line");
      continue;
    }
    const std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') continue;  // blank or comment
    if (first != 0 || is_blank(line.back())) {
      problem("whitespace at the start or end of the line");
      continue;
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      problem("expected user:hash");
      continue;
    }
    const std::string_view user = line.substr(0, colon);
    const std::string_view hash = line.substr(colon + 1);
    if (user.empty()) {
      problem("empty user name");
      continue;
    }
    if (is_blank(user.back()) || (!hash.empty() && is_blank(hash.front()))) {
      problem("whitespace around ':'");
      continue;
    }
    bool printable = true;
    for (const unsigned char c : user)
      if (c <= 0x20 || c == 0x7f) printable = false;
    if (!printable) {
      problem("user name contains whitespace or a control character");
      continue;
    }
    if (!smtp::is_valid_utf8(user)) {
      problem("user name is not UTF-8");
      continue;
    }
    if (user.size() > max_user_length) {
      problem("user name longer than 255 octets (the SASL limit, RFC 4616 §2)");
      continue;
    }
    if (hash.find(':') != std::string_view::npos) {
      problem("more than one ':' (a shadow(5) or passwd(5) line? keep only user:hash)");
      continue;
    }
    if (const std::string why = check_password_hash(hash); !why.empty()) {
      problem("user '" + std::string(user) + "': " + why);
      continue;
    }
    const auto [it, inserted] = defined_on.emplace(std::string(user), number);
    if (!inserted) {
      problem("user '" + std::string(user) + "' already defined on line " + std::to_string(it->second));
      continue;
    }
    out.hashes_.emplace(std::string(user), std::string(hash));
    if (cost_users.emplace(std::string(cost_key(hash)), std::string(user)).second)
      out.timing_references_.emplace_back(hash);
  }
  if (!problems.empty()) throw users_file_error(std::move(problems));

  if (out.timing_references_.empty()) out.timing_references_.push_back(default_reference_hash());
  if (out.timing_references_.size() > 1) {
    std::string costs;
    for (const auto& ref : out.timing_references_) {
      const std::string key(cost_key(ref));
      costs += (costs.empty() ? "" : ", ") + key + " (" + cost_users[key] + ")";
    }
    out.warnings_.push_back(std::string(name) + ": " + std::to_string(out.timing_references_.size()) +
                            " hash schemes or costs (" + costs +
                            "): so that login times tell no user from another, every login computes a hash of each, "
                            "the slowest included; rehash every user with one scheme and cost for faster logins");
  }
  return out;
}

bool users_file::verify(std::string_view user, std::string_view password) const {
  const auto it = hashes_.find(std::string(user));
  const bool known = it != hashes_.end();
  const std::string_view own_cost = known ? cost_key(it->second) : std::string_view{};
  // crypt(3) reads a C string: a NUL would cut the password short ("a\0b"
  // checked as "a"). Such a password, or one past libcrypt's limit, still
  // costs its hash computations, with an empty phrase, and never matches.
  const bool usable = password.find('\0') == std::string_view::npos && password.size() < CRYPT_MAX_PASSPHRASE_SIZE;
  std::string phrase(usable ? password : std::string_view{});

  // struct crypt_data is 32 KiB: on the heap, zeroed (crypt_r wants its
  // `initialized` field 0), one per call so that verify() is thread-safe.
  auto data = std::make_unique<crypt_data>();
  // One computation per cost in the file, whoever the user (an unknown user
  // answered as fast as the commonest cost would tell a user with a rarer,
  // slower hash from one that does not exist): the user's own hash for its
  // cost, a reference hash for each other, whose result is thrown away.
  bool match = false;
  for (const auto& reference : timing_references_) {
    const bool own = known && cost_key(reference) == own_cost;
    const std::string& hash = own ? it->second : reference;
    const char* computed = crypt_r(phrase.c_str(), hash.c_str(), data.get());
    // libxcrypt returns a "*0"/"*1" failure token (or NULL) rather than a hash.
    const bool equal = computed && computed[0] != '*' && constant_time_equals(computed, hash);
    if (own) match = equal;
  }
  explicit_bzero(data.get(), sizeof(crypt_data));  // it held the password (`input`)
  explicit_bzero(phrase.data(), phrase.size());
  return known && usable && match;
}

}  // namespace portcullis::auth
