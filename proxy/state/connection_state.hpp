// What a session knows about its client connection. Plain values, below the
// session, the policy and the upstream: each of them reads it, only the
// session changes it.
#pragma once

#include <optional>
#include <string>

#include "asio.hpp"
#include "net/network.hpp"

namespace portcullis {

struct connection_state {
  std::string id;              // session id, in every log line
  tcp::endpoint client;        // the real client (the PROXY header's source, when there is one): set_client
  std::string client_ip;       // its address as text, IPv4-mapped IPv6 as IPv4 (what policies see)
  std::string client_literal;  // the same as an address literal, "[192.0.2.1]" (logs, Received)
  std::string helo;            // HELO/EHLO argument; empty before it
  bool esmtp = false;          // EHLO rather than HELO
  bool tls = false;
  std::string tls_version, tls_cipher;  // "TLSv1.3", "TLS_AES_256_GCM_SHA384"
  int tls_bits = 0;
  std::optional<std::string> auth_user;
  unsigned transactions = 0;   // started so far, for transaction ids

  // The client and its text together (formatted once, not for every hook and log line).
  void set_client(const tcp::endpoint& e) {
    client = e;
    client_ip = unmapped(e.address()).to_string();
    client_literal = address_literal(client_ip);
  }
};

}  // namespace portcullis
