#include "checks/dkim_verifier.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <algorithm>
#include <ctime>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "checks/dkim_canon.hpp"
#include "checks/dkim_crypto.hpp"
#include "checks/dkim_fields.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

// One DKIM-Signature field on its way to a result.
struct signature_state {
  std::size_t field = 0;     // its index among the header fields
  dkim_signature_fields tags;
  dkim_signature result;     // result.problem set: decided (unless pass)
  std::size_t hasher = 0;
  bool decided = false;
};

// A public key ready to verify with: RSA's verification context is set up
// once (OpenSSL 3's set-up looks the algorithm up under locks, half the cost
// of an RSA verification) and copied for each signature.
struct verifying_key {
  std::shared_ptr<EVP_PKEY> key;
  bool ed25519 = false;
  std::shared_ptr<EVP_PKEY_CTX> rsa_template;
  std::mutex copying;  // guards the copying of rsa_template
};

// The signature over the header data (§3.7): rsa-sha256 signs the data's
// SHA-256 hash (PKCS #1 v1.5); ed25519-sha256 signs the hash with PureEdDSA
// (RFC 8463 §3).
bool signature_verifies(verifying_key& k, const std::string& data, const std::string& signature) {
  const std::string digest = sha256_of(data);
  const auto* sig = reinterpret_cast<const unsigned char*>(signature.data());
  const auto* hashed = reinterpret_cast<const unsigned char*>(digest.data());
  bool ok = false;
  if (k.ed25519) {
    md_context c;
    ok = EVP_DigestVerifyInit(c.ctx, nullptr, nullptr, nullptr, k.key.get()) == 1 &&
         EVP_DigestVerify(c.ctx, sig, signature.size(), hashed, digest.size()) == 1;
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

}  // namespace

// Public keys parsed from their records' p= values, shared by the checks'
// threads. Keyed by the value itself, so a key changed in DNS is a new
// entry; bounded: when full it starts over.
struct dkim_verifier::key_cache {
  static constexpr std::size_t max_keys = 1024;
  std::mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<verifying_key>> keys;

  std::shared_ptr<verifying_key> get(const dkim_key_fields& record, std::string& problem) {
    const bool ed25519 = record.key_type == dkim_key_fields::type::ed25519;
    const std::string id = (ed25519 ? "e:" : "r:") + record.key;
    {
      std::lock_guard lock(mutex);
      if (auto found = keys.find(id); found != keys.end()) return found->second;
    }
    const std::string der = base64_decode(record.key);
    const auto* bytes = reinterpret_cast<const unsigned char*>(der.data());
    auto k = std::make_shared<verifying_key>();
    k->ed25519 = ed25519;
    if (ed25519) {
      // RFC 8463 §4: the 32 octets of the public key, bare.
      if (der.size() == 32)
        k->key.reset(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, bytes, der.size()), EVP_PKEY_free);
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
    std::lock_guard lock(mutex);
    if (keys.size() >= max_keys) keys.clear();
    keys.emplace(id, k);
    return k;
  }
};

dkim_verifier::dkim_verifier(txt_lookup lookup, unsigned max_signatures)
    : lookup_(std::move(lookup)), max_signatures_(max_signatures), keys_(std::make_unique<key_cache>()) {
  sha256();  // (fails here, at start-up, if ever)
}

dkim_verifier::~dkim_verifier() = default;

dkim_results dkim_verifier::verify_now(const message_store& message, std::optional<std::int64_t> now) const {
  using kind = dkim_signature::kind;
  std::vector<std::string> fields;
  std::vector<signature_state> sigs;
  std::vector<std::unique_ptr<body_hasher>> hashers;

  const auto decide = [](signature_state& s, kind k, std::string problem) {
    s.result.result = k;
    s.result.problem = std::move(problem);
    s.decided = true;
  };
  // Once the header is read: the signatures, each parsed, and a body hasher for each way the body is wanted.
  const auto read_signatures = [&] {
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (!smtp::equals_nocase(smtp::header_field_name(fields[i]), "DKIM-Signature")) continue;
      signature_state s;
      s.field = i;
      if (sigs.size() >= max_signatures_) {
        const auto value = smtp::header_field_value(fields[i]);
        parse_dkim_signature(value, s.tags);  // (only to name it)
        decide(s, kind::neutral, "not evaluated: more than " + std::to_string(max_signatures_) + " signatures");
      } else if (auto problem = parse_dkim_signature(smtp::header_field_value(fields[i]), s.tags); !problem.empty()) {
        decide(s, kind::permerror, std::move(problem));
      } else if (problem = check_dkim_times(s.tags, now.value_or(std::time(nullptr))); !problem.empty()) {
        decide(s, kind::permerror, std::move(problem));
      } else {
        const auto same = std::find_if(hashers.begin(), hashers.end(),
                                       [&](const auto& h) { return h->wants(s.tags.body_canon, s.tags.length); });
        s.hasher = static_cast<std::size_t>(same - hashers.begin());
        if (same == hashers.end()) hashers.push_back(std::make_unique<body_hasher>(s.tags.body_canon, s.tags.length));
      }
      s.result.domain = s.tags.domain;
      s.result.selector = s.tags.selector;
      sigs.push_back(std::move(s));
    }
  };

  smtp::header_reader header;
  const auto on_field = [&](std::string_view f) { fields.emplace_back(f); };
  bool header_read = false;
  message_store::reader in(message);
  for (auto chunk = in.next(); !chunk.empty(); chunk = in.next()) {
    const std::size_t used = header.done() ? 0 : header.feed(chunk, on_field);
    if (!header.done()) continue;
    if (!header_read) {
      header_read = true;
      read_signatures();
      if (hashers.empty()) break;  // nothing wants the body
    }
    for (auto& h : hashers) h->feed(chunk.substr(used));
  }
  if (in.failed()) throw std::runtime_error("the message could not be read: " + in.error());
  if (!header_read) {  // a message of header fields only
    header.finish(on_field);
    read_signatures();
  }
  for (auto& h : hashers) h->finish();

  dkim_results out;
  for (auto& s : sigs) {
    if (!s.decided) {
      // The key (§6.1.2).
      const auto answer = lookup_(s.tags.selector + "._domainkey." + s.tags.domain);
      dkim_key_fields record;
      std::shared_ptr<verifying_key> key;
      std::string problem;
      if (answer.what == dns::answer::status::timeout || answer.what == dns::answer::status::failure) {
        decide(s, kind::temperror, "key DNS query failed");
      } else if (answer.is_void()) {
        decide(s, kind::permerror, "key not found in DNS");
      } else if (answer.records.size() > 1) {
        decide(s, kind::permerror, "multiple keys found");
      } else if (problem = parse_dkim_key(answer.records.front().value, record); !problem.empty()) {
        decide(s, kind::permerror, std::move(problem));
      } else if ((record.key_type == dkim_key_fields::type::ed25519) != (s.tags.algorithm == "ed25519-sha256")) {
        decide(s, kind::permerror, "signature-key type mismatch");
      } else if (record.strict && s.tags.identity_domain != s.tags.domain) {
        decide(s, kind::permerror, "unauthorized subdomain");
      } else if (key = keys_->get(record, problem); !key) {
        decide(s, kind::permerror, std::move(problem));
      } else if (!key->ed25519 && EVP_PKEY_get_bits(key->key.get()) < 1024) {
        decide(s, kind::permerror, "signing key too small");  // RFC 8301 §3.2
      }
      // The body (§6.1.3), then the header fields and the signature itself.
      const body_hasher* body = s.decided ? nullptr : hashers[s.hasher].get();
      if (body && s.tags.length && *s.tags.length > body->length()) {
        decide(s, kind::permerror, "length tag value exceeds body size");
      } else if (body && base64_decode(s.tags.body_hash) != body->digest()) {
        decide(s, kind::fail, "body hash did not verify");
      } else if (body) {
        const std::string data = signed_fields(fields, s.tags.headers, s.tags.header_canon) +
                                 unsigned_signature_field(fields[s.field], s.tags.header_canon);
        const bool ok = signature_verifies(*key, data, base64_decode(s.tags.signature));
        decide(s, ok ? kind::pass : kind::fail, ok ? "" : "signature verification failed");
      }
    }
    out.push_back(std::move(s.result));
  }
  return out;
}

}  // namespace portcullis::checks
