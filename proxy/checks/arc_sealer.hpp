// ARC sealing ([arc_seal], RFC 8617) of every relayed message: the very last
// change, over the message as the upstream gets it (our DKIM-Signature,
// Authentication-Results and Received included), so that a forwarded
// message's authentication survives at its destination. The engine is
// dkimpy's (checks/arc_engine.hpp); it runs on the sealer's own thread.
#pragma once

#include <memory>
#include <string>

#include "asio.hpp"
#include "checks/arc_engine.hpp"
#include "checks/sender_checks.hpp"
#include "config/config.hpp"

namespace portcullis::checks {

class arc_sealer final : public mail_sealer {
 public:
  // Reads the key (RSA); throws std::runtime_error naming it when unusable.
  arc_sealer(const arc_seal_config& settings, std::string authserv_id, std::shared_ptr<arc_engine> engine);
  ~arc_sealer() override;

  awaitable<dkim_signing> seal(const std::string& prefix, const message_ptr& message) override;

 private:
  arc_key key_;
  std::string authserv_id_;
  std::shared_ptr<arc_engine> engine_;
  asio::thread_pool pool_{1};  // RSA in Python holds the GIL: one thread is all it can use
};

}  // namespace portcullis::checks
