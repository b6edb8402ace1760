// The sender checks as the session sees them: one await per check, the
// work done elsewhere (libspf2 on the checks' threads, DNS on the
// resolver's). The server makes the real ones (checks/spf_checker.hpp);
// session tests script their own.
#pragma once

#include <string>

#include "asio.hpp"
#include "checks/results.hpp"
#include "smtp/address.hpp"

namespace portcullis::checks {

class sender_checks {
 public:
  virtual ~sender_checks() = default;
  // RFC 7208 check_host() for the MAIL FROM identity (the HELO one for <>), from `client`.
  virtual awaitable<spf_result> spf(asio::ip::address client, std::string helo, smtp::address sender) = 0;
};

}  // namespace portcullis::checks
