// One mail transaction's envelope (RFC 5321 §3.3), kept apart from the
// connection state (as OpenSMTPD does) so that one reset clears exactly it.
// What the upstream was given is the relay's business, not this struct's.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "checks/results.hpp"
#include "smtp/address.hpp"
#include "smtp/mail_options.hpp"

namespace portcullis {

using smtp::mail_options;
using esmtp_param_list = std::vector<smtp::esmtp_param>;

struct transaction {
  std::string id;                      // "<session id>.<n>": Received id, log lines
  // The envelope to deliver: policies may rewrite both.
  smtp::address sender;
  esmtp_param_list sender_params;      // as the client gave them (for policies)
  mail_options options;
  std::vector<smtp::address> recipients;
  std::size_t accepted_rcpts = 0;      // RCPT commands the client got a 2xx for (discarded ones too)
  std::size_t rejected_rcpts = 0;
  std::optional<checks::spf_result> spf;     // [checks] spf: made before the policy's on_mail
  std::optional<checks::dkim_results> dkim;  // [checks] dkim: made before the policy's on_data
  std::optional<checks::dmarc_result> dmarc;  // [checks] dmarc: made after dkim, before on_data
  std::optional<checks::arc_result> arc;      // [checks] arc: made before on_data
  // DKIM signing as a policy chose it (tx.dkim_sign): unset, [dkim_sign]'s
  // rule; empty, not signed; else the domain to sign as.
  std::optional<std::string> dkim_sign;
  std::optional<bool> arc_seal;  // tx.arc_seal: false, not sealed; unset, [arc_seal] decides
  // What the policies said at MAIL, each RCPT and DATA ("rcpt <a@b> redirect by
  // policies/aliases.py"), for the transaction's summary line.
  std::vector<std::string> policy_verdicts;
};

}  // namespace portcullis
