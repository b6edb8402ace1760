#include "checks/dkim_signer.hpp"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sodium.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>

#include "checks/message_fields.hpp"
#include "checks/off_thread.hpp"
#include "checks/dkim_canon.hpp"
#include "checks/dkim_crypto.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

// Up to this size a message in memory may be signed on the I/O thread (sign).
constexpr std::size_t in_place_message_limit = 64 * 1024;

// RFC 6376 §5.4.1's recommended fields, and the MIME ones that say how the
// body reads. Fields absent from a message are not listed in its h=.
const std::vector<std::string_view> signed_names = {
    "from",        "reply-to",    "subject",       "date",           "to",          "cc",
    "resent-date", "resent-from", "resent-sender", "resent-to",      "resent-cc",   "in-reply-to",
    "references",  "list-id",     "list-help",     "list-unsubscribe", "list-subscribe", "list-post",
    "list-owner",  "list-archive", "message-id",   "mime-version",   "content-type", "content-transfer-encoding",
    "content-id",  "content-description", "sender"};
// Signed once more than present: a second From added later fails the signature.
const std::vector<std::string_view> oversigned_names = {"from"};

void check(int ok, const char* what) {
  if (ok != 1) throw std::runtime_error(std::string("OpenSSL: ") + what + " failed");
}

}  // namespace

std::vector<std::string> fields_to_sign(const std::vector<std::string>& fields) {
  return signed_field_names(fields, signed_names, oversigned_names);
}

std::string h_tag_value(const std::vector<std::string>& names) {
  std::string out;
  std::size_t column = 4;  // (its line starts "\th=")
  for (const auto& n : names) {
    if (!out.empty()) {
      out += ':';
      ++column;
      if (column + n.size() > 78) {
        out += "\r\n\t";
        column = 1;
      }
    }
    out += n;
    column += n.size();
  }
  return out;
}

ed25519_secret::~ed25519_secret() { sodium_memzero(bytes, sizeof bytes); }

std::string folded_signature(const signing_key& key, const std::string& data) {
  std::string raw;
  if (key.ed25519) {
    const std::string hashed = sha256_of(data);
    raw.resize(crypto_sign_ed25519_BYTES);
    if (crypto_sign_ed25519_detached(reinterpret_cast<unsigned char*>(raw.data()), nullptr,
                                     reinterpret_cast<const unsigned char*>(hashed.data()), hashed.size(),
                                     key.ed25519_key->bytes) != 0)
      throw std::runtime_error("libsodium: signing failed");
  } else {
    md_context ctx;
    {
      std::lock_guard lock(*key.preparing);
      check(EVP_MD_CTX_copy_ex(ctx.ctx, key.prepared.get()), "signing");
    }
    std::size_t size = 0;
    const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
    check(EVP_DigestSign(ctx.ctx, nullptr, &size, bytes, data.size()), "signing");
    raw.resize(size);
    check(EVP_DigestSign(ctx.ctx, reinterpret_cast<unsigned char*>(raw.data()), &size, bytes, data.size()), "signing");
    raw.resize(size);
  }
  const std::string signature = base64_encode(raw);
  // Folded (a verifier drops b='s whitespace with the value).
  std::string out;
  for (std::size_t i = 0; i < signature.size(); i += 72) {
    if (i > 0) out += "\r\n\t ";
    out += signature.substr(i, 72);
  }
  return out + "\r\n";
}

signing_key read_signing_key(const std::filesystem::path& path, std::string_view table, bool rsa_only) {
  const std::string where = "[" + std::string(table) + "] key_file " + path.string() + ": ";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(where + "cannot be read");
  signing_key key;
  key.pem.assign(std::istreambuf_iterator<char>(in), {});
  // The key's type decides the algorithm; a key the signer would refuse at
  // the first message is refused here, at start-up or reload.
  {
    // No pass phrase: without a callback OpenSSL asks for one on the
    // terminal, and start-up, a reload (and the SIGTERM behind it) waited.
    const auto no_pass_phrase = [](char*, int, int, void*) { return -1; };
    BIO* bio = BIO_new_mem_buf(key.pem.data(), static_cast<int>(key.pem.size()));
    if (bio) key.parsed.reset(PEM_read_bio_PrivateKey(bio, nullptr, no_pass_phrase, nullptr), EVP_PKEY_free);
    BIO_free(bio);
  }
  EVP_PKEY* k = key.parsed.get();
  if (k == nullptr && key.pem.find("ENCRYPTED") != std::string::npos)
    throw std::runtime_error(where + "an encrypted key: the daemon cannot be given its pass phrase (store it "
                                     "unencrypted, readable only by the daemon's user)");
  if (k == nullptr) throw std::runtime_error(where + "no PEM private key");
  switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
      if (EVP_PKEY_get_bits(k) < 1024)
        throw std::runtime_error(where + "an RSA key of " + std::to_string(EVP_PKEY_get_bits(k)) +
                                 " bits; RFC 8301 wants at least 1024 (2048 is usual)");
      break;
    case EVP_PKEY_ED25519:
      if (rsa_only) throw std::runtime_error(where + "an Ed25519 key; ARC seals with RSA (RFC 8617 §4.1.3)");
      key.ed25519 = true;
      break;
    default: throw std::runtime_error(where + "neither an RSA nor an Ed25519 key");
  }
  if (key.ed25519) {
    // libsodium's key is the 32-byte seed (OpenSSL's raw private key) and the public key it makes.
    unsigned char seed[32], public_key[32], openssl_public[32];
    std::size_t seed_size = sizeof seed, public_size = sizeof openssl_public;
    auto secret = std::make_shared<ed25519_secret>();
    const bool made = sodium_init() >= 0 && EVP_PKEY_get_raw_private_key(k, seed, &seed_size) == 1 &&
                      EVP_PKEY_get_raw_public_key(k, openssl_public, &public_size) == 1 &&
                      crypto_sign_ed25519_seed_keypair(public_key, secret->bytes, seed) == 0 &&
                      sodium_memcmp(public_key, openssl_public, sizeof public_key) == 0;
    sodium_memzero(seed, sizeof seed);
    if (!made) throw std::runtime_error(where + "libsodium cannot sign with it");
    key.ed25519_key = std::move(secret);
    return key;
  }
  key.prepared.reset(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!key.prepared || EVP_DigestSignInit(key.prepared.get(), nullptr, sha256(), nullptr, k) != 1)
    throw std::runtime_error(where + "OpenSSL cannot sign with it");
  return key;
}

namespace {

std::vector<dkim_signer::key_in_use> read_keys(const dkim_sign_config& settings) {
  std::vector<dkim_signer::key_in_use> keys;
  for (const auto& config : settings.keys) keys.push_back({config, read_signing_key(config.key_file, "dkim_sign")});
  return keys;
}

}  // namespace

dkim_signer::dkim_signer(const dkim_sign_config& settings)
    : settings_(settings), networks_(settings.networks), keys_(read_keys(settings)) {
  all_ed25519_ = std::all_of(keys_.begin(), keys_.end(), [](const key_in_use& k) { return k.key.ed25519; });
}

dkim_signer::~dkim_signer() { pool_.join(); }

awaitable<dkim_signing> dkim_signer::sign(const message_ptr& message, const std::string& domain) {
  const auto work = [this, message, domain] {
    dkim_signing s;
    try {
      s.domain = domain;
      if (s.domain.empty()) {
        // (Mail of trusted clients only: its header section is read whatever its size.)
        const auto from_values = header_values(*message, "From", std::numeric_limits<std::size_t>::max());
        const auto from = author_domain(*from_values, s.why_not);
        if (!from) return s;
        const auto ours = domain_for(*from);
        if (!ours) {
          s.why_not = "the From domain " + *from + " is not one of [dkim_sign] domains";
          return s;
        }
        s.domain = *ours;
      }
      const auto keys = keys_for(s.domain);
      s.field = sign_with(*message, s.domain, keys);
      for (const auto* k : keys) s.selectors.push_back(k->config.selector);
    } catch (const std::exception& e) {
      s.error = e.what();
    }
    return s;
  };
  // Ed25519 signatures of a small message in memory cost less than the
  // round trip to the pool (a wake-up there and back): made here.
  if (all_ed25519_ && !message->spilled() && message->size() <= in_place_message_limit) co_return work();
  auto result = co_await off_thread<dkim_signing>(pool_, "pc-sign", work);
  co_return result;
}

namespace {

// Whether `key` signs as `domain` (lower-cased).
bool lists(const dkim_signer::key_in_use& key, std::string_view domain) {
  return std::find(key.config.domains.begin(), key.config.domains.end(), domain) != key.config.domains.end();
}

}  // namespace

std::vector<const dkim_signer::key_in_use*> dkim_signer::keys_for(std::string_view domain) const {
  const auto d = smtp::to_lower(domain);
  std::vector<const key_in_use*> found;
  for (const auto& k : keys_)
    if (lists(k, d)) found.push_back(&k);
  return found;
}

bool dkim_signer::signs_as(std::string_view domain) const {
  const auto d = smtp::to_lower(domain);
  return std::any_of(keys_.begin(), keys_.end(), [&d](const key_in_use& k) { return lists(k, d); });
}

std::optional<std::string> dkim_signer::domain_for(std::string_view from_domain) const {
  std::string d = smtp::to_lower(from_domain);
  if (signs_as(d)) return d;
  if (!settings_.subdomains) return std::nullopt;
  for (auto dot = d.find('.'); dot != std::string::npos; dot = d.find('.', dot + 1)) {
    const auto parent = d.substr(dot + 1);
    if (signs_as(parent)) return parent;
  }
  return std::nullopt;
}

std::string dkim_signer::sign_now(const message_store& message, const std::string& domain) const {
  return sign_with(message, domain, keys_for(domain));
}

std::string dkim_signer::sign_with(const message_store& message, const std::string& domain,
                                   const std::vector<const key_in_use*>& keys) const {
  // The header fields, and the body's hash (relaxed, RFC 6376 §3.4.4, §3.7), in one read for every key.
  body_hasher body(dkim_canonicalization::relaxed, std::nullopt);
  // (Mail of trusted clients only: its header section is read whatever its size.)
  const auto read = read_for_signatures(message, {}, std::numeric_limits<std::size_t>::max(),
                                        [&body](const auto&) { return std::vector{&body}; });
  const auto& fields = *read;  // (never nullopt without a limit)
  const auto h = fields_to_sign(fields);
  // What every signature covers (§3.7): the covered fields, then its own field as the verifier will take it.
  const std::string covered = signed_fields(fields, h, dkim_canonicalization::relaxed);
  const std::string common = "; c=relaxed/relaxed; d=" + domain;
  const std::string rest = ";\r\n\tt=" + std::to_string(std::time(nullptr)) + ";\r\n\th=" + h_tag_value(h) +
                           ";\r\n\tbh=" + base64_encode(body.digest()) + ";\r\n\tb=";
  std::string out;
  for (const auto* k : keys) {
    // The signature field with an empty b= (§3.5), folded; b= comes last, so
    // that the value added after signing is all a verifier takes out.
    std::string field = "DKIM-Signature: v=1; a=" + std::string(k->key.ed25519 ? "ed25519-sha256" : "rsa-sha256") +
                        common + "; s=" + k->config.selector + rest;
    out += field + folded_signature(k->key, covered + unsigned_signature_field(field, dkim_canonicalization::relaxed));
  }
  return out;
}

}  // namespace portcullis::checks
