// The sender checks a generation asks for ([checks]), as the session sees
// them (checks/sender_checks.hpp): each is tried first on the session's own
// thread from cached DNS answers only, and where one is missing runs on the
// checker's own threads (libspf2 and the DKIM and DMARC lookups block on
// DNS), its result coming back to the awaiting session's executor.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "asio.hpp"
#include "checks/arc_verifier.hpp"
#include "checks/dkim_verifier.hpp"
#include "checks/dmarc_evaluator.hpp"
#include "checks/sender_checks.hpp"
#include "checks/spf_checker.hpp"

namespace portcullis::checks {

struct sender_checker_settings {
  bool spf = false;
  bool dkim = false;
  bool dmarc = false;
  bool arc = false;
  std::string receiver;            // our host name (SPF's %{r})
  std::vector<std::string> spf_skip_networks{"127.0.0.0/8", "::1"};
  unsigned threads = 8;
  unsigned max_dkim_signatures = 5;

  bool operator==(const sender_checker_settings&) const = default;
};

class sender_checker final : public sender_checks {
 public:
  // Throws std::runtime_error when a library does not start.
  sender_checker(std::shared_ptr<dns::resolver> resolver, const sender_checker_settings& settings);
  ~sender_checker() override;

  awaitable<spf_result> spf(const asio::ip::address& client, const std::string& helo,
                            const smtp::address& sender) override;
  awaitable<message_results> message(const message_ptr& message, const std::optional<spf_result>& spf) override;

  const std::shared_ptr<dns::resolver>& resolver() const { return resolver_; }
  const sender_checker_settings& settings() const { return settings_; }

 private:
  // DKIM, ARC and DMARC on the calling thread.
  message_results check_message(const message_store& message, const std::optional<spf_result>& spf) const;

  std::shared_ptr<dns::resolver> resolver_;
  sender_checker_settings settings_;
  std::optional<spf_checker> spf_;
  std::optional<dkim_verifier> dkim_;
  std::optional<dmarc_evaluator> dmarc_;
  std::optional<arc_verifier> arc_;
  asio::thread_pool pool_;
};

}  // namespace portcullis::checks
