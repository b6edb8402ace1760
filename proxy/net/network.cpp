#include "net/network.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

namespace portcullis {

asio::ip::address unmapped(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}

std::string address_literal(const asio::ip::address& a) { return address_literal(unmapped(a).to_string()); }

std::string address_literal(std::string_view ip) {
  const bool v6 = ip.find(':') != std::string_view::npos;
  return (v6 ? "[IPv6:" : "[") + std::string(ip) + "]";
}

tcp::endpoint parse_endpoint(const std::string& hostport) {
  const auto colon = hostport.rfind(':');
  std::string host = hostport.substr(0, colon);
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {asio::ip::make_address(host), static_cast<unsigned short>(std::stoul(hostport.substr(colon + 1)))};
}

std::optional<network> network::parse(std::string_view text) {
  const auto slash = text.find('/');
  boost::system::error_code ec;
  const auto base = asio::ip::make_address(std::string(text.substr(0, slash)), ec);
  if (ec) return std::nullopt;
  network n;
  n.base_ = unmapped(base);
  const unsigned max = n.base_.is_v4() ? 32 : 128;
  n.prefix_ = max;
  if (slash != std::string_view::npos) {
    const auto digits = text.substr(slash + 1);
    const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), n.prefix_);
    if (err != std::errc{} || end != digits.data() + digits.size() || digits.empty() || n.prefix_ > max)
      return std::nullopt;
  }
  return n;
}

namespace {
// Do the first `bits` bits of x and y agree?
template <std::size_t N>
bool same_prefix(const std::array<unsigned char, N>& x, const std::array<unsigned char, N>& y, unsigned bits) {
  for (std::size_t i = 0; i < N && bits > 0; ++i) {
    const unsigned take = bits >= 8 ? 8 : bits;
    const auto mask = static_cast<unsigned char>(0xff << (8 - take));
    if ((x[i] & mask) != (y[i] & mask)) return false;
    bits -= take;
  }
  return true;
}
}  // namespace

bool network::contains(const asio::ip::address& raw) const {
  const auto a = unmapped(raw);
  if (a.is_v4() != base_.is_v4()) return false;
  if (a.is_v4()) return same_prefix(a.to_v4().to_bytes(), base_.to_v4().to_bytes(), prefix_);
  return same_prefix(a.to_v6().to_bytes(), base_.to_v6().to_bytes(), prefix_);
}

network_list::network_list(const std::vector<std::string>& entries) {
  for (const auto& e : entries) {
    auto n = network::parse(e);
    if (!n) throw std::invalid_argument("'" + e + "' is not an address or network (want 192.0.2.0/24 or 2001:db8::/32)");
    networks_.push_back(*n);
  }
}

bool network_list::contains(const asio::ip::address& a) const {
  for (const auto& n : networks_)
    if (n.contains(a)) return true;
  return false;
}

}  // namespace portcullis
