#include "checks/arc_sealer.hpp"

#include <exception>

#include "checks/dkim_signer.hpp"
#include "checks/off_thread.hpp"

namespace portcullis::checks {

arc_sealer::arc_sealer(const arc_seal_config& settings, std::string authserv_id, std::shared_ptr<arc_engine> engine)
    : authserv_id_(std::move(authserv_id)), engine_(std::move(engine)) {
  key_.domain = settings.domain;
  key_.selector = settings.selector;
  key_.pem = read_signing_key(settings.key_file, "arc_seal", true).pem;
}

arc_sealer::~arc_sealer() { pool_.join(); }

awaitable<dkim_signing> arc_sealer::seal(const std::string& prefix, const message_ptr& message) {
  const auto work = [this, prefix, message] {
    dkim_signing s;
    s.domain = key_.domain;
    try {
      s.field = engine_->seal_now(prefix, *message, key_, authserv_id_);
      if (s.field.empty()) s.why_not = "the chain it came with may not be continued";
    } catch (const std::exception& e) {
      s.error = e.what();
    }
    return s;
  };
  auto result = co_await off_thread<dkim_signing>(pool_, work);
  co_return result;
}

}  // namespace portcullis::checks
