#include "checks/dkim_keys.hpp"

#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sodium.h>

#include <algorithm>

#include "checks/dkim_crypto.hpp"

namespace portcullis::checks {

std::shared_ptr<verifying_key> dkim_key_cache::get(const dkim_key_fields& record, std::string& problem) {
  const bool ed25519 = record.key_type == dkim_key_fields::type::ed25519;
  const std::string id = (ed25519 ? "e:" : "r:") + record.key;
  {
    std::lock_guard lock(mutex_);
    if (auto found = keys_.find(id); found != keys_.end()) return found->second;
  }
  const std::string der = base64_decode(record.key);
  const auto* bytes = reinterpret_cast<const unsigned char*>(der.data());
  auto k = std::make_shared<verifying_key>();
  k->ed25519 = ed25519;
  if (ed25519) {
    // RFC 8463 §4: the 32 octets of the public key, bare.
    if (der.size() == k->ed25519_public.size() && sodium_init() >= 0) {
      std::copy(der.begin(), der.end(), k->ed25519_public.begin());
      k->key.reset(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, bytes, der.size()), EVP_PKEY_free);
    }
  } else {
    // RFC 6376 §3.6.1: an RSA SubjectPublicKeyInfo.
    k->key.reset(d2i_PUBKEY(nullptr, &bytes, static_cast<long>(der.size())), EVP_PKEY_free);
    if (k->key && EVP_PKEY_get_base_id(k->key.get()) != EVP_PKEY_RSA) k->key.reset();
    if (k->key) {
      k->rsa_template.reset(EVP_PKEY_CTX_new(k->key.get(), nullptr), EVP_PKEY_CTX_free);
      if (!k->rsa_template || EVP_PKEY_verify_init(k->rsa_template.get()) != 1 ||
          EVP_PKEY_CTX_set_rsa_padding(k->rsa_template.get(), RSA_PKCS1_PADDING) != 1 ||
          EVP_PKEY_CTX_set_signature_md(k->rsa_template.get(), sha256()) != 1)
        k->key.reset();
    }
  }
  ERR_clear_error();
  if (!k->key) {
    problem = "unable to apply public key";
    return nullptr;
  }
  std::lock_guard lock(mutex_);
  if (keys_.size() >= max_keys) keys_.clear();
  keys_.emplace(id, k);
  return k;
}

std::string dkim_key_name(const dkim_signature_fields& sig) { return sig.selector + "._domainkey." + sig.domain; }

dkim_key_outcome find_dkim_key(const txt_lookup& lookup, dkim_key_cache& cache, const dkim_signature_fields& sig) {
  using kind = dkim_signature::kind;
  dkim_key_outcome out;
  const auto fail = [&out](kind k, std::string problem) {
    out.failure = k;
    out.problem = std::move(problem);
    return std::move(out);
  };
  const auto answer = lookup(dkim_key_name(sig));
  if (answer.what == dns::answer::status::timeout || answer.what == dns::answer::status::failure)
    return fail(kind::temperror, "key DNS query failed");
  if (answer.is_void()) return fail(kind::permerror, "key not found in DNS");
  if (answer.records.size() > 1) return fail(kind::permerror, "multiple keys found");
  dkim_key_fields record;
  if (auto problem = parse_dkim_key(answer.records.front().value, record); !problem.empty())
    return fail(kind::permerror, std::move(problem));
  if ((record.key_type == dkim_key_fields::type::ed25519) != (sig.algorithm == "ed25519-sha256"))
    return fail(kind::permerror, "signature-key type mismatch");
  if (record.strict && sig.identity_domain != sig.domain) return fail(kind::permerror, "unauthorized subdomain");
  std::string problem;
  auto key = cache.get(record, problem);
  if (!key) return fail(kind::permerror, std::move(problem));
  if (!key->ed25519 && EVP_PKEY_get_bits(key->key.get()) < 1024)
    return fail(kind::permerror, "signing key too small");  // RFC 8301 §3.2
  out.key = std::move(key);
  return out;
}

bool signature_verifies(verifying_key& k, const std::string& data, const std::string& signature) {
  return digest_signature_verifies(k, sha256_of(data), signature);
}

bool digest_signature_verifies(verifying_key& k, std::string_view digest, const std::string& signature) {
  const auto* sig = reinterpret_cast<const unsigned char*>(signature.data());
  const auto* hashed = reinterpret_cast<const unsigned char*>(digest.data());
  bool ok = false;
  if (k.ed25519) {
    ok = signature.size() == crypto_sign_ed25519_BYTES &&
         crypto_sign_ed25519_verify_detached(sig, hashed, digest.size(), k.ed25519_public.data()) == 0;
  } else {
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> c(nullptr, EVP_PKEY_CTX_free);
    {
      std::lock_guard lock(k.copying);
      c.reset(EVP_PKEY_CTX_dup(k.rsa_template.get()));
    }
    ok = c && EVP_PKEY_verify(c.get(), sig, signature.size(), hashed, digest.size()) == 1;
  }
  ERR_clear_error();  // a failed verification leaves its reasons on this thread's queue
  return ok;
}

}  // namespace portcullis::checks
