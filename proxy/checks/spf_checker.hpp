// SPF (RFC 7208) for the MAIL FROM identity, or the HELO identity for the
// null sender (§2.4), evaluated by libspf2 with our resolver as its DNS layer
// (checks/spf_dns_layer) and our strict record validator in front of it
// (checks/spf_record). It blocks while it looks names up: the checks'
// threads call it (checks/sender_checker), never an I/O thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "checks/results.hpp"
#include "dns/answer.hpp"
#include "net/network.hpp"
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

class spf_checker {
 public:
  // Where a check's DNS answers come from: the resolver (blocking), or a
  // table in the tests and the fuzzer, so that they run the daemon's code.
  // A lookup waits until `deadline` at most (the check's budget, spf_limits::budget).
  using dns_lookup = std::function<dns::answer(const std::string& name, dns::rr_type type,
                                               std::chrono::steady_clock::time_point deadline)>;

  // `receiver` is our host name (the %{r} macro); clients in `skip` are
  // not checked (result none); throws std::invalid_argument for a bad entry.
  spf_checker(std::shared_ptr<dns::resolver> resolver, std::string receiver,
              const std::vector<std::string>& skip = {"127.0.0.0/8", "::1"}, spf_limits limits = {});
  spf_checker(dns_lookup lookup, std::string receiver, const std::vector<std::string>& skip = {"127.0.0.0/8", "::1"},
              spf_limits limits = {});

  // The check, on the calling thread (blocks on DNS).
  spf_result check_now(const asio::ip::address& client, std::string_view helo, const smtp::address& sender) const;

 private:
  dns_lookup lookup_;
  std::string receiver_;
  network_list skip_;
  spf_limits limits_;
};

}  // namespace portcullis::checks
