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
  // Timing does not tell which users exist: every call computes one hash
  // of each cost the file holds (timing_references()), a user's own hash
  // standing for its cost and the results of the others thrown away, so an
  // unknown user, a user with a cheap hash and one with an expensive hash
  // cost the same; hashes are compared in constant time. User names are
  // exact octets (case-sensitive).
  bool verify(std::string_view user, std::string_view password) const;

  bool contains(std::string_view user) const { return hashes_.find(std::string(user)) != hashes_.end(); }
  std::size_t size() const { return hashes_.size(); }

  // One of the file's hashes for each scheme and cost in it (in order of
  // first appearance); with no users, a fresh hash of libcrypt's preferred
  // scheme. verify() computes each of them (or the user's own in its place).
  const std::vector<std::string>& timing_references() const { return timing_references_; }

  // What the operator should hear at load (the caller logs them; this type
  // does not): a file that mixes costs makes every login pay for each.
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::unordered_map<std::string, std::string> hashes_;
  std::vector<std::string> timing_references_;
  std::vector<std::string> warnings_;
};

// "" when `hash` is a crypt(3) string users_file accepts, else why not
// (the message users_file_error carries for it).
std::string check_password_hash(std::string_view hash);

}  // namespace portcullis::auth
