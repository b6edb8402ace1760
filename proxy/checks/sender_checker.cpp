#include "checks/sender_checker.hpp"

#include <exception>

#include "checks/off_thread.hpp"

namespace portcullis::checks {

sender_checker::sender_checker(std::shared_ptr<dns::resolver> resolver, const sender_checker_settings& settings)
    : resolver_(std::move(resolver)), settings_(settings), pool_(std::max(1u, settings.threads)) {
  if (settings.spf) spf_.emplace(resolver_, settings.receiver, settings.spf_skip_networks);
  auto* r = resolver_.get();  // (the checker, and so the verifier and the evaluator, holds the resolver)
  const auto txt = [r](const std::string& name) { return r->lookup_sync(name, dns::rr_type::txt); };
  if (settings.dkim) dkim_.emplace(txt, settings.max_dkim_signatures);
  if (settings.dmarc) dmarc_.emplace(txt);
  if (settings.arc) arc_.emplace(txt);
}

sender_checker::~sender_checker() { pool_.join(); }

awaitable<spf_result> sender_checker::spf(const asio::ip::address& client, const std::string& helo,
                                          const smtp::address& sender) {
  if (!spf_) co_return spf_result{};
  const auto work = [this, client, helo, sender] { return spf_->check_now(client, helo, sender); };
  auto result = co_await off_thread<spf_result>(pool_, work);
  co_return result;
}

awaitable<message_results> sender_checker::message(const message_ptr& message, const std::optional<spf_result>& spf) {
  const auto work = [this, message, spf] {
    message_results found;
    // Each check answers for itself: OpenSSL failing (memory) or a spilled
    // message that cannot be read is that check's temperror (ARC: fail).
    if (dkim_) {
      try {
        found.dkim = dkim_->verify_now(*message);
      } catch (const std::exception& e) {
        dkim_signature s;
        s.result = dkim_signature::kind::temperror;
        s.problem = e.what();
        found.dkim = dkim_results{s};
      }
    }
    if (dmarc_) {
      try {
        found.dmarc = dmarc_->evaluate_now(*message, spf, found.dkim);
      } catch (const std::exception& e) {
        dmarc_result r;
        r.result = dmarc_result::kind::temperror;
        r.problem = e.what();
        found.dmarc = std::move(r);
      }
    }
    if (arc_) {
      try {
        found.arc = arc_->verify_now(*message);
      } catch (const std::exception& e) {
        arc_result r;
        r.result = arc_result::kind::fail;
        r.problem = e.what();
        found.arc = std::move(r);
      }
    }
    return found;
  };
  auto result = co_await off_thread<message_results>(pool_, work);
  co_return result;
}

}  // namespace portcullis::checks
