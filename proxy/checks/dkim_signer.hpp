// DKIM signing of outbound mail ([dkim_sign], RFC 6376; rsa-sha256, or
// ed25519-sha256 of RFC 8463 for an Ed25519 key): relaxed/relaxed
// canonicalization (checks/dkim_canon), the key parsed once and signed with
// by OpenSSL, the header fields RFC 6376 §5.4.1
// recommends plus the MIME ones, From signed once more than it occurs (so a
// From added on the way breaks the signature). Signing reads the whole
// message (a spilled one from its file): it runs on the signer's own
// threads; but when every key is Ed25519, a small message in memory (tens
// of microseconds a signature, less than the hop to a pool thread and back)
// is signed on the I/O thread.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/evp.h>

#include "asio.hpp"
#include "checks/sender_checks.hpp"
#include "config/config.hpp"
#include "net/network.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

// An Ed25519 key as libsodium signs with it (its 64 bytes: the seed, then
// the public key), wiped when the last copy of the signing key goes.
struct ed25519_secret {
  unsigned char bytes[64];
  ed25519_secret() = default;
  ~ed25519_secret();
  ed25519_secret(const ed25519_secret&) = delete;
  ed25519_secret& operator=(const ed25519_secret&) = delete;
};

// A private key for signing, read from its PEM file, parsed and checked.
struct signing_key {
  std::string pem;
  // Parsed once: OpenSSL 3 takes longer to parse a key than to sign with it.
  std::shared_ptr<EVP_PKEY> parsed;
  bool ed25519 = false;  // else RSA
  // RSA: a context set up to sign with the key once, copied for each
  // signature: OpenSSL 3's set-up looks the algorithms up under locks. The
  // mutex guards the copying.
  std::shared_ptr<EVP_MD_CTX> prepared;
  std::shared_ptr<std::mutex> preparing = std::make_shared<std::mutex>();
  // Ed25519: libsodium signs, in under half the time OpenSSL 3.0 takes (29
  // against 66-78 us measured); the signatures are the same, Ed25519 being
  // deterministic (RFC 8032 §5.1.6).
  std::shared_ptr<const ed25519_secret> ed25519_key;
};
// Throws std::runtime_error naming `table`.key_file when the file cannot be
// read or holds no usable key: not PEM, neither RSA nor Ed25519, RSA under
// 1024 bits (RFC 8301), or Ed25519 when `rsa_only`.
signing_key read_signing_key(const std::filesystem::path& path, std::string_view table, bool rsa_only = false);

// The b= value signing `data` (RFC 6376 §3.7's header data) with `key`
// (RSA: with SHA-256; Ed25519: the data's SHA-256 hash, RFC 8463 §3),
// folded at 72 columns, with a final CRLF. Throws std::runtime_error when
// OpenSSL or libsodium fails.
std::string folded_signature(const signing_key& key, const std::string& data);

// The header fields of RFC 6376 §5.4.1 (and the MIME ones) that a message
// with these fields has, From once more than present (checks/dkim_canon's
// signed_field_names): what our DKIM and ARC message signatures cover.
std::vector<std::string> fields_to_sign(const std::vector<std::string>& fields);
// Those names as an h= value ("from:to:...") on a line of its own (after
// "\th="), folded after a colon before a line passes 78 octets (RFC 6376
// §3.5 lets FWS surround each colon): 400 To fields made a line of 4 KB,
// past RFC 5322's 998, and the upstream refused the message.
std::string h_tag_value(const std::vector<std::string>& names);

class dkim_signer final : public mail_signer {
 public:
  // A configured key, read.
  struct key_in_use {
    dkim_key_config config;
    signing_key key;
  };

  // Reads every key file; throws std::runtime_error naming the file when it
  // is no usable key (not PEM, not RSA or Ed25519, RSA under 1024 bits).
  explicit dkim_signer(const dkim_sign_config& settings);
  ~dkim_signer() override;
  dkim_signer(const dkim_signer&) = delete;
  dkim_signer& operator=(const dkim_signer&) = delete;

  const dkim_sign_config& settings() const { return settings_; }

  // Mail from this client is signed without AUTH ([dkim_sign] networks).
  bool trusts(const asio::ip::address& client) const override { return networks_.contains(client); }
  // `domain` is one of ours to sign as (some key lists it).
  bool signs_as(std::string_view domain) const override;
  awaitable<dkim_signing> sign(const message_ptr& message, const std::string& domain) override;
  // What to sign a message from `from_domain` as: that domain if it is
  // ours, else (with subdomains) the nearest of ours above it.
  std::optional<std::string> domain_for(std::string_view from_domain) const;
  // The keys that sign as `domain`, in the config's order.
  std::vector<const key_in_use*> keys_for(std::string_view domain) const;

  // The "DKIM-Signature: ...\r\n" fields for the message signed as
  // `domain`, one for each of its keys in the config's order (the first on
  // top), folded with CRLF; the message is read once for all. Throws
  // std::runtime_error when OpenSSL fails or the message cannot be read.
  std::string sign_now(const message_store& message, const std::string& domain) const;

 private:
  // sign_now with the domain's keys already found.
  std::string sign_with(const message_store& message, const std::string& domain,
                        const std::vector<const key_in_use*>& keys) const;

  dkim_sign_config settings_;
  network_list networks_;
  std::vector<key_in_use> keys_;
  bool all_ed25519_ = false;  // every signature is cheap enough for an I/O thread (sign)
  asio::thread_pool pool_{2};  // signing is CPU work: two threads keep up with two I/O threads
};

}  // namespace portcullis::checks
