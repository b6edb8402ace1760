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

awaitable<dkim_results> sender_checker::dkim(const message_ptr& message) {
  if (!dkim_) co_return dkim_results{};
  const auto work = [this, message] {
    try {
      return dkim_->verify_now(*message);
    } catch (const std::exception& e) {
      // OpenSSL failed (memory) or the message could not be read: nothing verified.
      dkim_signature s;
      s.result = dkim_signature::kind::temperror;
      s.problem = e.what();
      return dkim_results{s};
    }
  };
  auto result = co_await off_thread<dkim_results>(pool_, work);
  co_return result;
}

awaitable<dmarc_result> sender_checker::dmarc(const message_ptr& message, const std::optional<spf_result>& spf,
                                              const std::optional<dkim_results>& dkim) {
  if (!dmarc_) co_return dmarc_result{};
  const auto work = [this, message, spf, dkim] {
    try {
      return dmarc_->evaluate_now(*message, spf, dkim);
    } catch (const std::exception& e) {
      dmarc_result r;
      r.result = dmarc_result::kind::temperror;
      r.problem = e.what();
      return r;
    }
  };
  auto result = co_await off_thread<dmarc_result>(pool_, work);
  co_return result;
}

awaitable<arc_result> sender_checker::arc(const message_ptr& message) {
  if (!arc_) co_return arc_result{};
  const auto work = [this, message] {
    try {
      return arc_->verify_now(*message);
    } catch (const std::exception& e) {  // the message could not be read: nothing validated
      arc_result r;
      r.result = arc_result::kind::fail;
      r.problem = e.what();
      return r;
    }
  };
  auto result = co_await off_thread<arc_result>(pool_, work);
  co_return result;
}

}  // namespace portcullis::checks
