// DKIM verification (RFC 6376, rsa-sha256 and ed25519-sha256 of RFC 8463)
// with OpenDKIM, over the message exactly as received, its keys fetched
// through our resolver. Blocks on DNS: the checks' threads call it, never
// an I/O thread.
#pragma once

#include <memory>

#include "checks/results.hpp"
#include "store/message_store.hpp"

namespace portcullis::dns {
class resolver;
}

namespace portcullis::checks {

class dkim_verifier {
 public:
  // At most `max_signatures` signatures are evaluated (the first ones); the
  // others are listed neutral. Throws std::runtime_error if OpenDKIM cannot start.
  dkim_verifier(std::shared_ptr<dns::resolver> resolver, unsigned max_signatures);
  ~dkim_verifier();
  dkim_verifier(const dkim_verifier&) = delete;
  dkim_verifier& operator=(const dkim_verifier&) = delete;

  // Every DKIM-Signature of the message, verified (empty: none).
  dkim_results verify_now(const message_store& message) const;

 private:
  struct library;
  std::shared_ptr<dns::resolver> resolver_;
  unsigned max_signatures_;
  std::unique_ptr<library> lib_;
};

}  // namespace portcullis::checks
