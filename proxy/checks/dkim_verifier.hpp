// DKIM verification (RFC 6376; rsa-sha256, and ed25519-sha256 of RFC
// 8463) over the message exactly as received, read once: the header fields
// first, then the body hashed as it streams by, once per canonicalization
// and l= the signatures ask for. Keys come through our resolver and are
// parsed once per distinct key (a bounded cache): under OpenSSL 3 a key
// parse costs more than the RSA verification itself. Blocks on DNS: the
// checks' threads call it, never an I/O thread.
//
// (OpenDKIM did this before; it parsed every key anew, 0.3 ms of CPU a
// signature, and offers no way to hand it a parsed key. The tests still
// check our results against dkimpy's on the same mail and DNS.)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "checks/dkim_keys.hpp"
#include "checks/results.hpp"
#include "dns/answer.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

class dkim_verifier {
 public:
  // A TXT lookup (the resolver's, blocking; a table in the tests).
  using txt_lookup = checks::txt_lookup;

  // The organizational domain of a name (DMARC's, by the Public Suffix List).
  using domain_map = std::function<std::string(std::string_view)>;

  // At most `max_signatures` signatures are evaluated; the others are only
  // counted, in one neutral entry at the end ("N more signatures not
  // evaluated"), so that what follows a message's results (log lines,
  // metrics, Authentication-Results, tx.dkim) stays bounded however many it
  // has. When there are more, those that may align with an author domain
  // (RFC 7489 §3.1.1: d= of the same organizational domain, given
  // `organizational_domain`, else the domain itself, a parent or a
  // subdomain) go first, top down, then the others: signatures that lists
  // and forwarders add on top cannot push out the author's, which DMARC
  // needs.
  dkim_verifier(txt_lookup lookup, unsigned max_signatures, domain_map organizational_domain = {});
  ~dkim_verifier();
  dkim_verifier(const dkim_verifier&) = delete;
  dkim_verifier& operator=(const dkim_verifier&) = delete;

  // Every DKIM-Signature of the message, verified (empty: none), at `now`
  // (seconds since the epoch; default: the clock). A header section longer
  // than max_checked_header is not read on: one permerror entry, no domain.
  // Throws std::runtime_error when a spilled message cannot be read.
  dkim_results verify_now(const message_store& message, std::optional<std::int64_t> now = {}) const;

  // How the keys of several signatures are looked up (sender_checker.cpp
  // decides; look_up_together unless told).
  void set_lookups_together(txt_lookups together) { together_ = std::move(together); }

 private:
  txt_lookup lookup_;
  unsigned max_signatures_;
  domain_map organizational_domain_;
  std::unique_ptr<dkim_key_cache> keys_;
  txt_lookups together_ = look_up_together;
};

}  // namespace portcullis::checks
