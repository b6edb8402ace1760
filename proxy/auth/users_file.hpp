// `[auth] users_file`: the accounts AUTH PLAIN/LOGIN are checked against.
//
// One "user:HASH" per line, HASH a crypt(3) string from mkpasswd(1) or
// htpasswd -B: yescrypt ($y$), sha512-crypt ($6$), sha256-crypt ($5$) or
// bcrypt ($2b$, $2y$). '#' starts a comment line; blank lines are skipped.
// Everything else is refused at load with "file:line: message", all problems
// at once, as config_error does: md5-crypt and DES hashes are too weak to keep.
//
// Pure in the project's sense (no sockets, no logging), but verify() is
// deliberately slow CPU work: see there.
#pragma once

#include <cstddef>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace portcullis::auth {

// Every problem found, one "file:line: message" each.
class users_file_error : public std::runtime_error {
 public:
  explicit users_file_error(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

class users_file {
 public:
  // Reads and validates the file; throws users_file_error listing every
  // problem (an unreadable file is one problem, "file: cannot read: ...").
  static users_file load(const std::filesystem::path& file);
  // The same for text already in memory; `name` prefixes the problems.
  static users_file parse(std::string_view text, std::string_view name);

  // Does `password` match `user`'s hash? BLOCKING: one crypt(3) computation,
  // tens of milliseconds for yescrypt or bcrypt by design. Never call it on
  // an I/O thread; run it where the policy work runs. Thread-safe (crypt_r
  // with its own crypt_data per call).
  //
  // Timing does not tell which users exist: an unknown user costs the same
  // hash computation, against the timing_reference() hash (whose result is
  // thrown away), and hashes are compared in constant time. User names are
  // exact octets (case-sensitive).
  bool verify(std::string_view user, std::string_view password) const;

  bool contains(std::string_view user) const { return hashes_.find(std::string(user)) != hashes_.end(); }
  std::size_t size() const { return hashes_.size(); }

  // The hash an unknown user is checked against: one of the file's own
  // hashes with the most common scheme and cost, so it takes as long as a
  // typical real user; with no users, a fresh hash of libcrypt's preferred
  // scheme.
  const std::string& timing_reference() const { return timing_reference_; }

 private:
  std::unordered_map<std::string, std::string> hashes_;
  std::string timing_reference_;
};

// "" when `hash` is a crypt(3) string users_file accepts, else why not
// (the message users_file_error carries for it).
std::string check_password_hash(std::string_view hash);

}  // namespace portcullis::auth
