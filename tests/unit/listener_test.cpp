// The listening sockets bind_listeners makes: every connection accepted on
// them has Nagle's algorithm off (TCP_NODELAY), inherited from the listener
// rather than set per connection.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "asio.hpp"
#include "config/config.hpp"
#include "server/server.hpp"

namespace portcullis {
namespace {

int nodelay_of(tcp::socket& s) {
  int value = -1;
  socklen_t len = sizeof value;
  EXPECT_EQ(::getsockopt(s.native_handle(), IPPROTO_TCP, TCP_NODELAY, &value, &len), 0);
  return value;
}

TEST(Listener, AcceptedConnectionsHaveNagleOff) {
  config cfg;
  cfg.server.listen = {"127.0.0.1:0"};
  cfg.server.listen_tls = {"[::1]:0"};
  auto bound = bind_listeners(cfg, false);  // (no [metrics] listen)
  ASSERT_EQ(bound.size(), 2u);
  asio::io_context io;
  for (auto& b : bound) {
    SCOPED_TRACE(b.address());
    tcp::acceptor acceptor(io, b.protocol(), b.release());
    acceptor.listen();
    tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    tcp::socket accepted(io);
    acceptor.accept(accepted);
    EXPECT_EQ(nodelay_of(accepted), 1);
    EXPECT_EQ(nodelay_of(client), 0);  // the option is the listener's, not the loopback's
  }
}

}  // namespace
}  // namespace portcullis
