#include "checks/dkim_signer.hpp"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "checks/message_fields.hpp"
#include "checks/off_thread.hpp"
#include "checks/opendkim.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

// RFC 6376 §5.4.1's recommended fields, and the MIME ones that say how the
// body reads. Fields absent from a message are not listed in its h=.
const char* const signed_fields[] = {
    "from",       "reply-to",          "subject",        "date",         "to",          "cc",
    "resent-date", "resent-from",      "resent-sender",  "resent-to",    "resent-cc",   "in-reply-to",
    "references", "list-id",           "list-help",      "list-unsubscribe", "list-subscribe", "list-post",
    "list-owner", "list-archive",      "message-id",     "mime-version", "content-type", "content-transfer-encoding",
    "content-id", "content-description", "sender",       nullptr};
// Signed once more than present: a second From added later fails the signature.
const char* const oversigned_fields[] = {"from", nullptr};

struct pkey {
  EVP_PKEY* key = nullptr;
  ~pkey() {
    if (key) EVP_PKEY_free(key);
  }
};

}  // namespace

signing_key read_signing_key(const std::filesystem::path& path, std::string_view table, bool rsa_only) {
  const std::string where = "[" + std::string(table) + "] key_file " + path.string() + ": ";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(where + "cannot be read");
  signing_key key;
  key.pem.assign(std::istreambuf_iterator<char>(in), {});
  // The key's type decides the algorithm; a key the signer would refuse at
  // the first message is refused here, at start-up or reload.
  pkey k;
  {
    BIO* bio = BIO_new_mem_buf(key.pem.data(), static_cast<int>(key.pem.size()));
    if (bio) k.key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
  }
  if (k.key == nullptr) throw std::runtime_error(where + "no PEM private key");
  switch (EVP_PKEY_get_base_id(k.key)) {
    case EVP_PKEY_RSA:
      if (EVP_PKEY_get_bits(k.key) < 1024)
        throw std::runtime_error(where + "an RSA key of " + std::to_string(EVP_PKEY_get_bits(k.key)) +
                                 " bits; RFC 8301 wants at least 1024 (2048 is usual)");
      break;
    case EVP_PKEY_ED25519:
      if (rsa_only) throw std::runtime_error(where + "an Ed25519 key; ARC seals with RSA (RFC 8617 §4.1.3)");
      key.ed25519 = true;
      break;
    default: throw std::runtime_error(where + "neither an RSA nor an Ed25519 key");
  }
  return key;
}

struct dkim_signer::library {
  DKIM_LIB* lib = nullptr;
  std::string key;  // PEM, as OpenDKIM reads it
  dkim_alg_t algorithm = DKIM_SIGN_RSASHA256;
  ~library() {
    if (lib) dkim_close(lib);
  }
};

dkim_signer::dkim_signer(const dkim_sign_config& settings)
    : settings_(settings), networks_(settings.networks), lib_(std::make_unique<library>()) {
  const auto key = read_signing_key(settings.key_file, "dkim_sign");
  lib_->key = key.pem;
  lib_->algorithm = key.ed25519 ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256;
  lib_->lib = dkim_init(nullptr, nullptr);
  if (lib_->lib == nullptr) throw std::runtime_error("OpenDKIM did not start (dkim_init)");
  // (The option is the NULL-terminated array itself, copied by the library.)
  auto* sign = const_cast<char**>(signed_fields);
  auto* oversign = const_cast<char**>(oversigned_fields);
  if (dkim_options(lib_->lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, sign, sizeof sign) != DKIM_STAT_OK ||
      dkim_options(lib_->lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, oversign, sizeof oversign) != DKIM_STAT_OK)
    throw std::runtime_error("OpenDKIM refused the list of fields to sign");
}

dkim_signer::~dkim_signer() { pool_.join(); }

awaitable<dkim_signing> dkim_signer::sign(const message_ptr& message, const std::string& domain) {
  const auto work = [this, message, domain] {
    dkim_signing s;
    try {
      s.domain = domain;
      if (s.domain.empty()) {
        const auto from = from_domain(*message, s.why_not);
        if (!from) return s;
        const auto ours = domain_for(*from);
        if (!ours) {
          s.why_not = "the From domain " + *from + " is not one of [dkim_sign] domains";
          return s;
        }
        s.domain = *ours;
      }
      s.field = sign_now(*message, s.domain);
    } catch (const std::exception& e) {
      s.error = e.what();
    }
    return s;
  };
  auto result = co_await off_thread<dkim_signing>(pool_, work);
  co_return result;
}

std::string_view dkim_signer::algorithm() const {
  return lib_->algorithm == DKIM_SIGN_ED25519SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

bool dkim_signer::signs_as(std::string_view domain) const {
  const auto d = smtp::to_lower(domain);
  return std::find(settings_.domains.begin(), settings_.domains.end(), d) != settings_.domains.end();
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

std::optional<std::string> dkim_signer::from_domain(const message_store& message, std::string& problem) {
  const auto from = header_values(message, "From");
  if (from.size() != 1) {
    problem = from.empty() ? "no From field" : std::to_string(from.size()) + " From fields";
    return std::nullopt;
  }
  auto domains = smtp::mailbox_domains(from.front());
  if (!domains) {
    problem = "the From field is not a list of mailboxes";
    return std::nullopt;
  }
  for (const auto& d : *domains) {
    if (d != domains->front()) {
      problem = "the From field names several domains";
      return std::nullopt;
    }
  }
  return domains->front();
}

std::string dkim_signer::sign_now(const message_store& message, const std::string& domain) const {
  DKIM_STAT status = DKIM_STAT_OK;
  dkim_handle h;
  std::string selector = settings_.selector, d = domain;
  h.dkim = dkim_sign(lib_->lib, reinterpret_cast<const unsigned char*>("portcullis"), nullptr,
                     reinterpret_cast<dkim_sigkey_t>(lib_->key.data()), reinterpret_cast<const u_char*>(selector.c_str()),
                     reinterpret_cast<const u_char*>(d.c_str()), DKIM_CANON_RELAXED, DKIM_CANON_RELAXED,
                     lib_->algorithm, -1, &status);
  if (h.dkim == nullptr) throw std::runtime_error(std::string("OpenDKIM: ") + dkim_getresultstr(status));
  feed_message(h.dkim, message);
  status = dkim_eom(h.dkim, nullptr);
  if (status != DKIM_STAT_OK) {
    const char* why = dkim_geterror(h.dkim);
    throw std::runtime_error(std::string("OpenDKIM: ") + (why && *why ? why : dkim_getresultstr(status)));
  }
  constexpr std::string_view name = "DKIM-Signature";
  unsigned char* value = nullptr;
  std::size_t length = 0;
  status = dkim_getsighdr_d(h.dkim, name.size() + 2, &value, &length);
  if (status != DKIM_STAT_OK || value == nullptr)
    throw std::runtime_error(std::string("OpenDKIM: ") + dkim_getresultstr(status));
  // OpenDKIM folds with bare LF; the message goes out with CRLF (RFC 5322 §2.2.3).
  std::string field = std::string(name) + ": ";
  for (std::size_t i = 0; i < length; ++i) {
    if (value[i] == '\n' && (i == 0 || value[i - 1] != '\r')) field += '\r';
    field += static_cast<char>(value[i]);
  }
  return field + "\r\n";
}

}  // namespace portcullis::checks
