// Address ranges ("192.0.2.0/24", "2001:db8::/32", "::1") for trusted_networks
// and proxy_trusted. IPv4-mapped IPv6 clients match IPv4 ranges.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"

namespace portcullis {

class network {
 public:
  static std::optional<network> parse(std::string_view text);
  bool contains(const asio::ip::address& a) const;

 private:
  asio::ip::address base_;
  unsigned prefix_ = 0;
};

class network_list {
 public:
  // Throws std::invalid_argument naming the entry that is not a network.
  explicit network_list(const std::vector<std::string>& entries);
  bool contains(const asio::ip::address& a) const;

 private:
  std::vector<network> networks_;
};

// v4-mapped v6 ("::ffff:192.0.2.1") as plain v4; anything else unchanged.
asio::ip::address unmapped(const asio::ip::address& a);

// "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3); v4-mapped v6 shown as v4.
std::string address_literal(const asio::ip::address& a);
// The same for an address already written as text (unmapped).
std::string address_literal(std::string_view ip);

// "192.0.2.1:25" or "[2001:db8::1]:25", as the config checked it (config.cpp is_ip_endpoint).
tcp::endpoint parse_endpoint(const std::string& hostport);

}  // namespace portcullis
