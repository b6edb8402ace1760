// TLS contexts (OpenSSL through asio::ssl): the server's, with SNI over
// several certificate/key pairs, and the upstream client's.
// Built at start-up and on SIGHUP, so certificates are reloaded with the config.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/asio/ssl.hpp>

#include "asio.hpp"
#include "config/config.hpp"

namespace portcullis {

namespace ssl = asio::ssl;

class tls_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// TLS 1.2 and 1.3 only, Mozilla's "intermediate" ciphers, no compression, no
// renegotiation, no client certificates asked for.
class tls_server_context {
 public:
  // Throws tls_error naming the file that could not be used.
  explicit tls_server_context(const tls_config& cfg);
  ssl::context& context() { return *contexts_.front(); }

 private:
  // contexts_[0] holds the default pair; the others are chosen by SNI.
  std::vector<std::unique_ptr<ssl::context>> contexts_;
};

// For the upstream: verification per [upstream] tls_verify / tls_ca_file / tls_name.
class tls_client_context {
 public:
  explicit tls_client_context(const upstream_config& cfg);
  ssl::context& context() { return context_; }

 private:
  ssl::context context_;
};

// "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256
struct tls_session_info {
  std::string version, cipher;
  int bits = 0;
};
tls_session_info describe(SSL* ssl);

// The last OpenSSL errors as text (for logs).
std::string openssl_errors();

}  // namespace portcullis
