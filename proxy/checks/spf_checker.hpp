// SPF (RFC 7208) for the MAIL FROM identity, or the HELO identity for the
// null sender (§2.4), evaluated by libspf2 with our resolver as its DNS layer
// and our strict record validator in front of it (checks/spf_record.hpp).
//
// libspf2 blocks while it looks names up, so checks run on the checker's
// own threads, never on an I/O thread; a session awaits the result.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "asio.hpp"
#include "checks/results.hpp"
#include "checks/sender_checks.hpp"
#include "smtp/address.hpp"

namespace portcullis::dns {
class resolver;
}

namespace portcullis::checks {

// RFC 7208 §4.6.4 and §11.1: how much work one check may cause.
struct spf_limits {
  unsigned dns_terms = 10;    // include, a, mx, ptr, exists, redirect
  unsigned void_lookups = 2;  // lookups that name nothing
  unsigned mx_hosts = 10;     // address lookups per mx (and ptr names)
  std::chrono::milliseconds budget{20000};  // the whole check ("at least 20 seconds", §4.6.4)
};

class spf_checker final : public sender_checks {
 public:
  // `receiver` is our host name (the %{r} macro); checks run on `threads` threads.
  spf_checker(std::shared_ptr<dns::resolver> resolver, std::string receiver, unsigned threads,
              spf_limits limits = {});
  ~spf_checker();
  spf_checker(const spf_checker&) = delete;
  spf_checker& operator=(const spf_checker&) = delete;

  // The check, on the calling thread (blocks on DNS).
  spf_result check_now(const asio::ip::address& client, std::string_view helo, const smtp::address& sender) const;

  // The check on the checker's threads; the result comes back through the token's executor.
  template <class CompletionToken>
  auto check(asio::ip::address client, std::string helo, smtp::address sender, CompletionToken&& token) {
    return asio::async_initiate<CompletionToken, void(spf_result)>(
        [this](auto handler, asio::ip::address c, std::string h, smtp::address s) {
          auto work = asio::make_work_guard(asio::get_associated_executor(handler));
          asio::post(pool_, [this, handler = std::move(handler), work = std::move(work), c, h = std::move(h),
                             s = std::move(s)]() mutable {
            auto result = check_now(c, h, s);
            auto ex = work.get_executor();
            asio::post(ex, [handler = std::move(handler), result = std::move(result)]() mutable {
              std::move(handler)(std::move(result));
            });
            work.reset();
          });
        },
        token, std::move(client), std::move(helo), std::move(sender));
  }

  awaitable<spf_result> spf(asio::ip::address client, std::string helo, smtp::address sender) override {
    auto result = co_await check(std::move(client), std::move(helo), std::move(sender), asio::use_awaitable);
    co_return result;
  }

  dns::resolver& resolver() const { return *resolver_; }

 private:
  std::shared_ptr<dns::resolver> resolver_;
  std::string receiver_;
  spf_limits limits_;
  mutable asio::thread_pool pool_;
};

}  // namespace portcullis::checks
