#include "net/tls_context.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <fstream>
#include <string>
#include <string_view>

namespace portcullis {

namespace {

// Mozilla's "intermediate" TLS 1.2 ciphers (TLS 1.3 suites are OpenSSL's defaults).
constexpr const char* intermediate_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

// Ours to the upstream: what Postfix's SMTP client offers ("medium" and up),
// CBC suites included. An upstream of TLS 1.2 and CBC suites alone (older
// appliances) then gets TLS: opportunistic TLS that found no shared suite
// sent the mail in clear (RFC 7435: some encryption beats none).
constexpr const char* upstream_ciphers = "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES:!DSS:!PSK:!SRP:!CAMELLIA:!ARIA";

void harden(ssl::context& ctx, const char* ciphers = intermediate_ciphers) {
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                  ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::no_compression |
                  ssl::context::single_dh_use);
  SSL_CTX* native = ctx.native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_cipher_list(native, ciphers) != 1) throw tls_error("cannot set the cipher list");
  // An encrypted key is refused: without this OpenSSL asks for its pass
  // phrase on the terminal, and start-up or a reload waited for it.
  SSL_CTX_set_default_passwd_cb(native, [](char*, int, int, void*) { return -1; });
}

// A PEM file of an encrypted key ("BEGIN ENCRYPTED PRIVATE KEY", or the
// older "Proc-Type: 4,ENCRYPTED"): what OpenSSL's own error hides.
bool encrypted_pem(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(4096, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<std::size_t>(in.gcount()));
  return head.find("ENCRYPTED") != std::string::npos;
}

std::unique_ptr<ssl::context> server_context_for(const std::filesystem::path& cert, const std::filesystem::path& key) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
  harden(*ctx);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(cert.string(), ec);
  // Asio has already taken OpenSSL's error queue into `ec`.
  if (ec) throw tls_error(cert.string() + ": cannot use the certificate chain: " + ec.message());
  ctx->use_private_key_file(key.string(), ssl::context::pem, ec);
  if (ec && encrypted_pem(key))
    throw tls_error(key.string() + ": an encrypted key: the daemon cannot be given its pass phrase (store it "
                                   "unencrypted, readable only by root)");
  if (ec) throw tls_error(key.string() + ": cannot use the private key: " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    throw tls_error(key.string() + ": the key does not match " + cert.string());
  ctx->set_verify_mode(ssl::verify_none);  // client certificates are not asked for
  return ctx;
}

// The host name a ClientHello asks for (its server_name extension, RFC 6066
// §3), or empty.
std::string_view asked_name(SSL* ssl) {
  const unsigned char* data = nullptr;
  std::size_t size = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &data, &size) != 1 || size < 2) return {};
  std::string_view list(reinterpret_cast<const char*>(data), size);
  const std::size_t listed = (static_cast<unsigned char>(list[0]) << 8) | static_cast<unsigned char>(list[1]);
  list = list.substr(2, listed);
  while (list.size() >= 3) {
    const auto type = static_cast<unsigned char>(list[0]);
    const std::size_t length = (static_cast<unsigned char>(list[1]) << 8) | static_cast<unsigned char>(list[2]);
    if (list.size() < 3 + length) return {};
    if (type == TLSEXT_NAMETYPE_host_name) return list.substr(3, length);
    list.remove_prefix(3 + length);
  }
  return {};
}

// SNI: switch to the first pair whose certificate covers the name. Chosen at
// the ClientHello, before OpenSSL decides on resuming a session (the
// servername callback comes after it), with a session context of the pair
// and the name asked: a session resumes only under the certificate and the
// name it was made with (RFC 6066 §3: not for another name, even one the
// same certificate covers; nor with no name for one made with one).
int choose_certificate(SSL* ssl, int*, void* arg) {
  std::string name(asked_name(ssl));
  if (name.find('\0') != std::string::npos) name.clear();
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto* contexts = static_cast<std::vector<std::unique_ptr<ssl::context>>*>(arg);
  unsigned char index = 0;
  for (std::size_t i = 0; i < contexts->size() && !name.empty(); ++i) {
    SSL_CTX* ctx = (*contexts)[i]->native_handle();
    X509* cert = SSL_CTX_get0_certificate(ctx);
    if (cert && X509_check_host(cert, name.data(), name.size(), 0, nullptr) == 1) {
      if (i > 0) SSL_set_SSL_CTX(ssl, ctx);
      index = static_cast<unsigned char>(i);
      break;
    }
  }
  // The pair's number and a digest of the name, in the 32 bytes a session context holds.
  std::array<unsigned char, SSL_MAX_SID_CTX_LENGTH> context{};
  context[0] = index;
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned digest_size = 0;
  EVP_Digest(name.data(), name.size(), digest.data(), &digest_size, EVP_sha256(), nullptr);
  const auto copied = std::min<std::size_t>(digest_size, context.size() - 1);
  std::copy_n(digest.begin(), copied, context.begin() + 1);
  SSL_set_session_id_context(ssl, context.data(), static_cast<unsigned>(1 + copied));
  return SSL_CLIENT_HELLO_SUCCESS;  // (no pair covers it: the default certificate)
}

// Says the name was used to choose the certificate (RFC 6066 §3: the server
// hello then carries an empty server_name) when this pair's certificate covers it.
int acknowledge_name(SSL* ssl, int*, void*) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  X509* cert = SSL_get_certificate(ssl);
  if (name && cert && X509_check_host(cert, name, 0, 0, nullptr) == 1) return SSL_TLSEXT_ERR_OK;
  return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown error" : out;
}

tls_server_context::tls_server_context(const tls_config& cfg) {
  contexts_.push_back(server_context_for(cfg.cert, cfg.key));
  for (const auto& pair : cfg.certificates) contexts_.push_back(server_context_for(pair.cert, pair.key));
  if (contexts_.size() > 1) {
    SSL_CTX* def = contexts_.front()->native_handle();
    SSL_CTX_set_client_hello_cb(def, choose_certificate, &contexts_);
    for (auto& ctx : contexts_) SSL_CTX_set_tlsext_servername_callback(ctx->native_handle(), acknowledge_name);
  }
}

tls_client_context::tls_client_context(const upstream_config& cfg) : context_(ssl::context::tls_client) {
  harden(context_, upstream_ciphers);
  if (!cfg.tls_verify) {
    context_.set_verify_mode(ssl::verify_none);
    return;
  }
  context_.set_verify_mode(ssl::verify_peer);
  boost::system::error_code ec;
  if (cfg.tls_ca_file.empty())
    context_.set_default_verify_paths(ec);
  else
    context_.load_verify_file(cfg.tls_ca_file.string(), ec);
  if (ec) throw tls_error("upstream.tls_ca_file: cannot load CA certificates: " + openssl_errors());
}

tls_session_info describe(SSL* ssl) {
  tls_session_info info;
  info.version = SSL_get_version(ssl);
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl);
  if (c) {
    info.cipher = SSL_CIPHER_get_name(c);
    info.bits = SSL_CIPHER_get_bits(c, nullptr);
  }
  return info;
}

}  // namespace portcullis
