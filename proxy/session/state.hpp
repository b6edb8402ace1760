// What a session knows: connection state and transaction state kept apart
// (as OpenSMTPD does), so one reset_transaction() clears exactly one of them.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "asio.hpp"
#include "smtp/address.hpp"
#include "upstream/upstream.hpp"

namespace portcullis {

using esmtp_param_list = std::vector<smtp::esmtp_param>;

struct connection_state {
  std::string id;              // session id, in every log line
  tcp::endpoint client;        // the real client (after a PROXY header, once that exists)
  std::string helo;            // HELO/EHLO argument; empty before it
  bool esmtp = false;          // EHLO rather than HELO
  bool tls = false;
  std::string tls_version, tls_cipher;  // "TLSv1.3", "TLS_AES_256_GCM_SHA384"
  int tls_bits = 0;
  std::optional<std::string> auth_user;
  unsigned transactions = 0;   // started so far, for transaction ids
};

struct transaction {
  bool active = false;         // MAIL was accepted (by policy and upstream)
  std::string id;              // "<session id>.<n>": Received id, log lines
  // The envelope to deliver: policies may rewrite both.
  smtp::address sender;
  esmtp_param_list sender_params;      // as the client gave them (for policies)
  mail_options options;
  std::vector<smtp::address> recipients;
  // What the upstream was actually given in this transaction. When it differs
  // from the envelope above (a policy rewrote it), the upstream transaction is
  // redone before DATA.
  smtp::address upstream_sender;
  std::vector<smtp::address> upstream_recipients;
  std::size_t accepted_recipients = 0;  // RCPTs the client got a 2xx for (discarded ones too)
  std::size_t rejected_recipients = 0;
  bool upstream_lost = false;  // the upstream failed mid-transaction: nothing more goes through
};

}  // namespace portcullis
