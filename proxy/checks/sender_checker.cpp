#include "checks/sender_checker.hpp"

#include <exception>
#include <set>
#include <utility>
#include <vector>

#include "checks/off_thread.hpp"

namespace portcullis::checks {

namespace {

// The checks are first tried on the I/O thread, from cached DNS answers
// only: under load the same few senders' records are asked for over and
// over, and a round trip to the pool (a wake-up there and back) cost more
// than the check. Where an answer is not cached, the lookup marks the
// attempt missed and answers `failure` (so libspf2 and the verifiers never
// wait); the attempt is thrown away and the check runs on the pool, where
// lookups wait. The answers an attempt used are counted in the metrics only
// if it is kept (else the pool's lookups count them). Set only while an
// attempt runs on this thread.
class cached_only_attempt;
thread_local cached_only_attempt* current_attempt = nullptr;

class cached_only_attempt {
 public:
  cached_only_attempt() { current_attempt = this; }
  ~cached_only_attempt() {
    current_attempt = nullptr;
    if (!missed_)
      for (const auto& [type, what] : answered_) dns::resolver::counted_from_memo(type, what);
  }
  cached_only_attempt(const cached_only_attempt&) = delete;
  cached_only_attempt& operator=(const cached_only_attempt&) = delete;
  bool missed() const { return missed_; }

  dns::answer look_up(dns::resolver& r, const std::string& name, dns::rr_type type) {
    if (auto known = r.cached(name, type)) {
      answered_.emplace_back(type, known->what);
      return std::move(*known);
    }
    missed_ = true;
    dns::answer missing;
    missing.error = "not cached (an attempt on an I/O thread)";
    return missing;
  }

 private:
  bool missed_ = false;
  std::vector<std::pair<dns::rr_type, dns::answer::status>> answered_;
};

dns::answer look_up(dns::resolver& r, const std::string& name, dns::rr_type type,
                    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max()) {
  return current_attempt != nullptr ? current_attempt->look_up(r, name, type) : r.lookup_sync(name, type, deadline);
}

// Larger messages are checked on the pool: hashing them is work for it.
constexpr std::size_t in_place_message_limit = 64 * 1024;

}  // namespace

sender_checker::sender_checker(std::shared_ptr<dns::resolver> resolver, const sender_checker_settings& settings)
    : resolver_(std::move(resolver)), settings_(settings), pool_(std::max(1u, settings.threads)) {
  auto* r = resolver_.get();  // (the checker, and so every check, holds the resolver)
  if (settings.spf) {
    const auto lookup = [r](const std::string& name, dns::rr_type type, std::chrono::steady_clock::time_point deadline) {
      return look_up(*r, name, type, deadline);
    };
    spf_.emplace(lookup, settings.receiver, settings.spf_skip_networks);
  }
  const txt_lookup txt = [r](const std::string& name) { return look_up(*r, name, dns::rr_type::txt); };
  // Several names at once, each on a thread of its own; in an attempt from
  // cached answers only, one after the other on the calling thread, whose
  // attempt it is (std::async's threads have no current_attempt: they would
  // wait for DNS while the I/O thread waits for them).
  const txt_lookups together = [](const txt_lookup& lookup, const std::set<std::string>& names) {
    return current_attempt != nullptr ? look_up_in_turn(lookup, names) : look_up_together(lookup, names);
  };
  if (settings.dmarc) {
    dmarc_.emplace(txt);
    dmarc_->set_lookups_together(together);
  }
  dkim_verifier::domain_map organizational;  // (DMARC's: the signatures it may use go first)
  if (dmarc_) organizational = [d = &*dmarc_](std::string_view name) { return d->organizational_domain(name); };
  if (settings.dkim) {
    dkim_.emplace(txt, settings.max_dkim_signatures, std::move(organizational));
    dkim_->set_lookups_together(together);
  }
  if (settings.arc) arc_.emplace(txt);
}

sender_checker::~sender_checker() { pool_.join(); }

awaitable<spf_result> sender_checker::spf(const asio::ip::address& client, const std::string& helo,
                                          const smtp::address& sender) {
  if (!spf_) co_return spf_result{};
  const auto work = [this, client, helo, sender] { return spf_->check_now(client, helo, sender); };
  {
    cached_only_attempt attempt;
    auto result = work();
    if (!attempt.missed()) co_return result;
  }
  auto result = co_await off_thread<spf_result>(pool_, "pc-checks", work);
  co_return result;
}

awaitable<message_results> sender_checker::message(const message_ptr& message, const std::optional<spf_result>& spf) {
  const auto work = [this, message, spf] { return check_message(*message, spf); };
  if (!message->spilled() && message->size() <= in_place_message_limit) {
    cached_only_attempt attempt;
    auto found = work();
    if (!attempt.missed()) co_return found;
  }
  auto result = co_await off_thread<message_results>(pool_, "pc-checks", work);
  co_return result;
}

message_results sender_checker::check_message(const message_store& message, const std::optional<spf_result>& spf) const {
  message_results found;
  std::vector<reported_pass> sealer_passes;  // the newest ARC set's findings, for DMARC
  // Each check answers for itself: OpenSSL failing (memory) or a spilled
  // message that cannot be read is that check's temperror (ARC: fail).
  if (dkim_) {
    try {
      found.dkim = dkim_->verify_now(message);
    } catch (const std::exception& e) {
      dkim_signature s;
      s.result = dkim_signature::kind::temperror;
      s.problem = e.what();
      found.dkim = dkim_results{s};
    }
  }
  if (arc_) {
    try {
      found.arc = arc_->verify_now(message, std::nullopt, &sealer_passes);
    } catch (const std::exception& e) {
      arc_result r;
      r.result = arc_result::kind::fail;
      r.problem = e.what();
      found.arc = std::move(r);
    }
  }
  // DMARC last: with the chain validated, it tells whether the newest
  // sealer's findings vouch for the From domains (arc_aligned).
  if (dmarc_) {
    try {
      found.dmarc = dmarc_->evaluate_now(message, spf, found.dkim, sealer_passes);
    } catch (const std::exception& e) {
      dmarc_result r;
      r.result = dmarc_result::kind::temperror;
      r.problem = e.what();
      found.dmarc = std::move(r);
    }
  }
  return found;
}

}  // namespace portcullis::checks
