// The public keys DKIM and ARC signatures name (RFC 6376 §3.6): looked up
// through our resolver (a TXT lookup function), checked, parsed once per
// distinct key (a bounded cache shared by the checks' threads: under
// OpenSSL 3 a key parse costs more than the RSA verification itself), and
// the verification of a signature over header data with one.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "checks/dkim_fields.hpp"
#include "checks/results.hpp"
#include "checks/txt_lookup.hpp"
#include "dns/answer.hpp"

namespace portcullis::checks {

// A public key ready to verify with: RSA's verification context is set up
// once (OpenSSL 3's set-up looks the algorithm up under locks, half the cost
// of an RSA verification) and copied for each signature. Ed25519 verifies
// with libsodium, as dkimpy does: it refuses small-order keys and
// signatures, which OpenSSL 3.0 accepts (the identity point as the key
// "verifies" one fixed signature on every message), and takes half the time.
struct verifying_key {
  std::shared_ptr<EVP_PKEY> key;
  bool ed25519 = false;
  std::array<unsigned char, 32> ed25519_public{};  // RFC 8463 §4: the key's 32 octets
  std::shared_ptr<EVP_PKEY_CTX> rsa_template;
  std::mutex copying;  // guards the copying of rsa_template
};

// Keys parsed from their records' p= values. Keyed by the value itself, so a
// key changed in DNS is a new entry; bounded: when full it starts over.
class dkim_key_cache {
 public:
  static constexpr std::size_t max_keys = 1024;
  // The key of `record` (null, `problem` set, when OpenSSL cannot use it).
  std::shared_ptr<verifying_key> get(const dkim_key_fields& record, std::string& problem);

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<verifying_key>> keys_;
};

// The key a signature names (§6.1.2), or, when `key` is null, why there is
// none: `failure` (temperror or permerror) and `problem` (OpenDKIM's
// wording where it has one).
struct dkim_key_outcome {
  std::shared_ptr<verifying_key> key;
  dkim_signature::kind failure = dkim_signature::kind::permerror;
  std::string problem;
};
// Where the key of `sig` is published (RFC 6376 §3.6.2.1): s._domainkey.d.
std::string dkim_key_name(const dkim_signature_fields& sig);
dkim_key_outcome find_dkim_key(const txt_lookup& lookup, dkim_key_cache& cache, const dkim_signature_fields& sig);

// Whether `signature` (raw bytes) signs `data` with `key`: rsa-sha256 signs
// the data's SHA-256 hash (PKCS #1 v1.5); ed25519-sha256 signs the hash with
// PureEdDSA (RFC 8463 §3).
bool signature_verifies(verifying_key& key, const std::string& data, const std::string& signature);
// The same from the data's SHA-256 hash (sha256_hasher: data hashed as it is made).
bool digest_signature_verifies(verifying_key& key, std::string_view digest, const std::string& signature);

}  // namespace portcullis::checks
