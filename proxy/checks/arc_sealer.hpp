// ARC sealing ([arc_seal], RFC 8617 §5.1) of every relayed message: the very
// last change, over the message as the upstream gets it (our
// DKIM-Signature, Authentication-Results and Received included), so that a
// forwarded message's authentication survives at its destination. The
// set's ARC-Authentication-Results copies our Authentication-Results; its
// cv= is the chain's validation on arrival ([checks] arc). The signatures
// are made like our DKIM ones (checks/dkim_signer), with RSA (§4.1.3). It
// reads the whole message (a spilled one from its file): on the sealer's
// own threads, never an I/O thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "asio.hpp"
#include "checks/dkim_signer.hpp"
#include "checks/sender_checks.hpp"
#include "config/config.hpp"

namespace portcullis::checks {

class arc_sealer final : public mail_sealer {
 public:
  // Reads the key (RSA); throws std::runtime_error naming it when unusable.
  arc_sealer(const arc_seal_config& settings, std::string authserv_id);
  ~arc_sealer() override;
  arc_sealer(const arc_sealer&) = delete;
  arc_sealer& operator=(const arc_sealer&) = delete;

  awaitable<dkim_signing> seal(const std::string& prefix, const message_ptr& message,
                               const std::optional<arc_result>& chain) override;

  // The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
  // CRLF-ended) for `prefix` + `message`, which `chain` is the validation of;
  // empty, with `why_not` set, when the chain may not be continued. `now`:
  // the t= value (default: the clock). Throws std::runtime_error when
  // OpenSSL fails or the message cannot be read.
  std::string seal_now(std::string_view prefix, const message_store& message, const std::optional<arc_result>& chain,
                       std::string& why_not, std::optional<std::int64_t> now = {}) const;

 private:
  arc_seal_config settings_;
  std::string authserv_id_;
  signing_key key_;
  asio::thread_pool pool_{1};
};

}  // namespace portcullis::checks
