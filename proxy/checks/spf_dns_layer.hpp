// libspf2's DNS layer made of our resolver (checks/spf_dns_layer.cpp), and
// the state of the one check it serves. Internal to the SPF checker.
#pragma once

// libspf2's headers need these first, and are C.
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
extern "C" {
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
}

#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "asio.hpp"
#include "checks/spf_checker.hpp"
#include "checks/spf_record.hpp"
#include "dns/answer.hpp"

namespace portcullis::checks {

// One check's state: libspf2 hands it to the layer's functions as their hook.
struct spf_evaluation {
  spf_evaluation(const spf_checker::dns_lookup& d, const spf_limits& l, asio::ip::address c)
      : lookup(d),
        limits(l),
        client(std::move(c)),
        deadline(std::chrono::steady_clock::now() + l.budget),
        any_address(any_address_marker()) {}

  const spf_checker::dns_lookup& lookup;
  const spf_limits& limits;
  const asio::ip::address client;  // IPv4-mapped IPv6 already made IPv4
  const std::chrono::steady_clock::time_point deadline;
  const std::string any_address;         // this check's secret marker of a /0 name (spf_record_for_client)
  SPF_request_t* request = nullptr;      // for expanding an explanation
  unsigned voids = 0;                    // lookups that named nothing
  unsigned dns_terms = 0;                // §4.6.4, counted across include and redirect
  bool record_fetched = false;           // the checked domain's own record (not a DNS term)
  std::multiset<std::string> follow_ups;  // names an mx or ptr term looks up next (not terms), once a record
  bool follow_ups_of_ptr = false;        // ... a ptr term's (§5.5: their DNS errors are no match)
  bool dns_trouble = false;              // a lookup timed out or failed: temperror material
  bool explaining = false;               // the exp= text is fetched and expanded: no accounting (§6.2)
  bool out_of_time = false;              // the budget ran out
  std::optional<std::string> permerror;  // a bad record or a limit passed: nothing more is asked
  std::optional<std::vector<std::string>> validated_names;  // the client's, for %{p} (set_client_name), once asked
};

// The layer for one check (lookup, get_spf, get_exp); `e` must outlive its use.
SPF_dns_server_t spf_dns_layer(spf_evaluation& e);

}  // namespace portcullis::checks
