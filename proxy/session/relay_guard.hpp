// The open-relay guard (RFC 5321 §3.6.1, §7.1; RFC 5068): with [relay], a
// client that is neither authenticated nor in trusted_networks may only send
// to local_domains. Routing tricks never count as local: a local part with
// '%', '!' or '@' ("user%foreign@local", "a!b@local", "\"u@foreign\"@local")
// could be relayed onward by a downstream MTA that still honours them.
// Source routes ("@route:u@x") are already reduced to "u@x" by the parser.
// Domains are compared in A-labels: a recipient's U-labels (SMTPUTF8) are
// converted first, and one that does not convert is not local.
#pragma once

#include <set>
#include <string>

#include "config/config.hpp"
#include "net/network.hpp"
#include "smtp/address.hpp"

namespace portcullis {

class relay_guard {
 public:
  explicit relay_guard(const relay_config& cfg);  // throws std::invalid_argument on a bad network
  bool enabled() const { return enabled_; }
  bool trusted(const asio::ip::address& client) const { return trusted_.contains(client); }
  // Is this a recipient in one of our own domains, with no routing in it?
  bool is_local(const smtp::address& rcpt) const;

 private:
  bool enabled_;
  std::set<std::string> local_domains_;  // A-labels, lower case, no trailing dot
  network_list trusted_;
};

}  // namespace portcullis
