// The sender checks as the session sees them: one await per check, the
// work done elsewhere (libspf2 on the checks' threads, DNS on the
// resolver's). The server makes the real ones (checks/sender_checker.hpp);
// session tests script their own.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "checks/results.hpp"
#include "smtp/address.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

using message_ptr = std::shared_ptr<const message_store>;

// What the checks of a received message found.
struct message_results {
  std::optional<dkim_results> dkim;
  std::optional<dmarc_result> dmarc;
  std::optional<arc_result> arc;
};

class sender_checks {
 public:
  virtual ~sender_checks() = default;
  // (Arguments by reference: the caller's named locals, alive until the result.)
  // RFC 7208 check_host() for the MAIL FROM identity (the HELO one for <>), from `client`.
  virtual awaitable<spf_result> spf(const asio::ip::address& client, const std::string& helo,
                                    const smtp::address& sender) = 0;
  // The checks of the message as received that the checker was made for,
  // in one hop to its threads (a thread switch costs more than some checks):
  // RFC 6376 verification of every DKIM-Signature, RFC 8617 validation of
  // the ARC chain, then RFC 7489 evaluation of the From domains from those
  // results and `spf`. A check not asked for is left unset.
  virtual awaitable<message_results> message(const message_ptr& message, const std::optional<spf_result>& spf) = 0;
};

// A message's DKIM signature, or why it has none.
struct dkim_signing {
  std::string field;    // "DKIM-Signature: ...\r\n" (one a key); empty: not signed
  std::string domain;   // d=
  std::vector<std::string> selectors;  // s= of each field
  std::string why_not;  // not signed (no From domain of ours, ...)
  std::string error;    // signing failed (the message could not be read, OpenSSL failed)
};

// Outbound signing ([dkim_sign]) as the session sees it. The server makes
// the real one (checks/dkim_signer.hpp); session tests script their own.
class mail_signer {
 public:
  virtual ~mail_signer() = default;
  // Mail from this client is signed without AUTH.
  virtual bool trusts(const asio::ip::address& client) const = 0;
  // `domain` is one of ours to sign as.
  virtual bool signs_as(std::string_view domain) const = 0;
  // The message signed as `domain`, or, with an empty one, as its From
  // domain (when that is ours). Works on a pool of its own.
  virtual awaitable<dkim_signing> sign(const message_ptr& message, const std::string& domain) = 0;
};

// Sealing with ARC ([arc_seal]) as the session sees it: the ARC set for the
// message as it goes upstream (`prefix`, our fields on top, then `message`),
// whose chain validated as `chain` on arrival.
class mail_sealer {
 public:
  virtual ~mail_sealer() = default;
  // field: the three ARC fields; error: sealing failed; why_not: not sealed.
  virtual awaitable<dkim_signing> seal(const std::string& prefix, const message_ptr& message,
                                       const std::optional<arc_result>& chain) = 0;
};

}  // namespace portcullis::checks
