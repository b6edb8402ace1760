// The OpenSSL pieces the DKIM signer and verifier share: SHA-256 (fetched
// once), digest contexts, base64, and the body hash (RFC 6376 §3.7) taken
// as the body streams by.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "checks/dkim_canon.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

// SHA-256, fetched once: OpenSSL 3 looks an algorithm up (under a lock) each
// time one is named by EVP_sha256(). Throws std::runtime_error if absent.
const EVP_MD* sha256();

// The SHA-256 hash of `data`, as bytes.
std::string sha256_of(std::string_view data);

// An EVP_MD_CTX freed with its scope (std::bad_alloc when none can be had).
struct md_context {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  md_context() {
    if (ctx == nullptr) throw std::bad_alloc();
  }
  ~md_context() { EVP_MD_CTX_free(ctx); }
  md_context(const md_context&) = delete;
  md_context& operator=(const md_context&) = delete;
};

// SHA-256 over pieces fed one after the other: the header data a signature
// covers hashed as it is made, with no copy of it whole. Throws
// std::runtime_error when OpenSSL fails.
class sha256_hasher {
 public:
  sha256_hasher();
  sha256_hasher(const sha256_hasher& other);  // what `other` hashed so far, to go on from separately
  sha256_hasher& operator=(const sha256_hasher&) = delete;
  void update(std::string_view bytes);
  // The hash of what was fed so far, as bytes; more may be fed after.
  std::string digest() const;

 private:
  md_context hash_;
};

std::string base64_encode(std::string_view bytes);
// Checked base64 (dkim_fields: groups of four, "=" only at the end) to bytes.
std::string base64_decode(std::string_view text);

// The body canonicalized one way, up to l= octets (none: all of it),
// hashed as it streams by. Throws std::runtime_error when OpenSSL fails.
class body_hasher {
 public:
  body_hasher(dkim_canonicalization canon, std::optional<std::uint64_t> limit);
  bool wants(dkim_canonicalization canon, std::optional<std::uint64_t> limit) const {
    return canon == canon_ && limit == limit_;
  }
  void feed(std::string_view bytes);
  void finish();
  // After finish: the body's canonical length, and its hash (of the first l= octets).
  std::uint64_t length() const { return length_; }
  const std::string& digest() const { return digest_; }

 private:
  void take();

  dkim_canonicalization canon_;
  std::optional<std::uint64_t> limit_;
  canonical_body body_;
  std::string canonical_;
  md_context hash_;
  std::uint64_t length_ = 0;
  std::string digest_;
};

// A message read once for its signatures: the header fields of `prefix`
// (whole fields, to go on top) and of the message, in order; once they are
// all read, `wanted(fields)` names the body hashers its body goes to (none:
// the body is not read), each finished at the end. nullopt when the header
// section, `prefix` included, is longer than `max_header` bytes: no more of
// it is read (nor kept), nor the body, and `wanted` is not called. Throws
// std::runtime_error when a spilled message cannot be read.
using body_wanted = std::function<std::vector<body_hasher*>(const std::vector<std::string>& fields)>;
std::optional<std::vector<std::string>> read_for_signatures(const message_store& message, std::string_view prefix,
                                                            std::size_t max_header, const body_wanted& wanted);

}  // namespace portcullis::checks
