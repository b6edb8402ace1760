// The pool of kept upstream connections, on real loopback sockets: what it
// keeps, for whom, how many, and what it drops or QUITs.
#include <gtest/gtest.h>

#include <initializer_list>
#include <thread>

#include "upstream/upstream_pool.hpp"

using namespace portcullis;
using namespace std::chrono_literals;

namespace {

class PoolTest : public ::testing::Test {
 protected:
  PoolTest() : acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {}

  std::shared_ptr<const config> settings(std::size_t size, std::string url = "smtp://127.0.0.1:25") {
    auto c = std::make_shared<config>();
    c->upstream.pool_size = size;
    c->upstream.url = std::move(url);
    return c;
  }

  // A connected pair: ours as a pooled connection, and the upstream's end.
  pooled_connection connection(tcp::socket& upstream_end) {
    tcp::socket ours(io);
    ours.connect(acceptor.local_endpoint());
    upstream_end = acceptor.accept();
    pooled_connection c;
    c.stream = std::make_unique<line_stream>(std::move(ours));
    c.caps["SIZE"] = "1000";
    c.xclient_sent = " ADDR=192.0.2.1";
    c.sessions = 7;        // what the upstream holds against it (smtp_upstream decides on these)
    c.junk_commands = 12;
    return c;
  }

  // Connections to `up` kept by `pool`, in this order (each kept, none refused),
  // their upstream ends in `ends`.
  void keep(upstream_pool& pool, const upstream_config& up, std::initializer_list<tcp::socket*> ends) {
    for (auto* end : ends) EXPECT_FALSE(pool.give_back(up, connection(*end)));
  }

  // What the upstream's end has received by now (waits up to a second for `want` bytes).
  static std::string received(tcp::socket& s, std::size_t want) {
    std::string got;
    const auto deadline = std::chrono::steady_clock::now() + 1s;
    s.non_blocking(true);
    while (got.size() < want && std::chrono::steady_clock::now() < deadline) {
      char buf[256];
      boost::system::error_code ec;
      const std::size_t n = s.read_some(asio::buffer(buf), ec);
      if (ec == asio::error::would_block) {
        std::this_thread::sleep_for(5ms);
        continue;
      }
      if (ec) break;
      got.append(buf, n);
    }
    return got;
  }

  asio::io_context io;
  tcp::acceptor acceptor;
};

TEST_F(PoolTest, KeepsForTheSameSettingsOnly) {
  auto pool = std::make_shared<upstream_pool>(io);
  const auto cfg = settings(4);
  pool->configure(cfg);
  tcp::socket far(io);
  EXPECT_TRUE(pool->keeps(cfg->upstream));
  EXPECT_FALSE(pool->give_back(cfg->upstream, connection(far)));
  EXPECT_EQ(pool->idle(), 1u);

  // Equal settings from another generation's config: the same pool.
  const auto same = settings(4);
  const auto other = settings(4, "smtp://127.0.0.1:26");
  EXPECT_FALSE(pool->take(other->upstream, io.get_executor()));
  tcp::socket far2(io);
  auto refused = pool->give_back(other->upstream, connection(far2));
  ASSERT_TRUE(refused);
  EXPECT_TRUE(refused->stream);  // handed back for the caller to QUIT

  auto c = pool->take(same->upstream, io.get_executor());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->caps.at("SIZE"), "1000");
  EXPECT_EQ(c->xclient_sent, " ADDR=192.0.2.1");  // the identity in force on it travels with it
  EXPECT_EQ(c->sessions, 7u);                      // so do the sessions it served and its junk commands
  EXPECT_EQ(c->junk_commands, 12u);
  EXPECT_EQ(pool->idle(), 0u);
  EXPECT_FALSE(pool->take(cfg->upstream, io.get_executor()));
}

TEST_F(PoolTest, BoundedBySize) {
  auto pool = std::make_shared<upstream_pool>(io);
  const auto cfg = settings(2);
  pool->configure(cfg);
  std::vector<tcp::socket> far;
  for (int i = 0; i < 3; ++i) far.emplace_back(io);
  keep(*pool, cfg->upstream, {&far[0], &far[1]});
  EXPECT_TRUE(pool->give_back(cfg->upstream, connection(far[2])));
  EXPECT_EQ(pool->idle(), 2u);
}

TEST_F(PoolTest, KeepsNothingWithSize0OrMaildir) {
  auto pool = std::make_shared<upstream_pool>(io);
  const auto none = settings(0);
  pool->configure(none);
  EXPECT_FALSE(pool->keeps(none->upstream));
  tcp::socket far(io);
  EXPECT_TRUE(pool->give_back(none->upstream, connection(far)));

  auto maildir = std::make_shared<config>();
  maildir->upstream.scheme = upstream_config::kind::maildir;
  pool->configure(maildir);
  EXPECT_FALSE(pool->keeps(maildir->upstream));
}

TEST_F(PoolTest, DropsWhatTheUpstreamClosedOrSpokeOn) {
  auto pool = std::make_shared<upstream_pool>(io);
  const auto cfg = settings(4);
  pool->configure(cfg);
  tcp::socket closed(io), spoke(io), fine(io);
  keep(*pool, cfg->upstream, {&fine, &spoke, &closed});
  closed.close();
  asio::write(spoke, asio::buffer(std::string_view("421 4.4.2 idle timeout\r\n")));
  std::this_thread::sleep_for(20ms);
  // The warmest first: `closed`, then `spoke` are dropped; `fine` serves.
  auto c = pool->take(cfg->upstream, io.get_executor());
  ASSERT_TRUE(c);
  EXPECT_EQ(pool->idle(), 0u);
  EXPECT_EQ(c->stream->peek_socket(), line_stream::waiting::nothing);
}

// The reaper drops what the upstream closed and keeps the rest whole, with
// their EHLO extensions and the XCLIENT identity in force. (It once moved the
// first connection it kept onto itself, which emptied them: after a reaper
// pass a kept connection offered no 8BITMIME, SMTPUTF8, PIPELINING or XCLIENT.)
TEST_F(PoolTest, ReaperKeepsTheRestWhole) {
  auto pool = std::make_shared<upstream_pool>(io);
  auto cfg = std::make_shared<config>(*settings(4));
  cfg->upstream.pool_idle_timeout = 2s;  // a reaper pass every 500 ms
  pool->configure(cfg);
  tcp::socket first(io), closed(io), last(io);
  keep(*pool, cfg->upstream, {&first, &closed, &last});
  closed.close();
  io.run_for(800ms);
  EXPECT_EQ(pool->idle(), 2u);
  for (int i = 0; i < 2; ++i) {
    auto c = pool->take(cfg->upstream, io.get_executor());
    ASSERT_TRUE(c);
    EXPECT_EQ(c->caps.size(), 1u);
    EXPECT_EQ(c->caps["SIZE"], "1000");
    EXPECT_EQ(c->xclient_sent, " ADDR=192.0.2.1");
    EXPECT_EQ(c->sessions, 7u);
    EXPECT_EQ(c->junk_commands, 12u);
  }
}

TEST_F(PoolTest, NewSettingsRetireKeptConnectionsWithQuit) {
  auto pool = std::make_shared<upstream_pool>(io);
  const auto cfg = settings(4);
  pool->configure(cfg);
  tcp::socket far(io);
  EXPECT_FALSE(pool->give_back(cfg->upstream, connection(far)));
  pool->configure(settings(4));  // the same settings: kept
  EXPECT_EQ(pool->idle(), 1u);
  pool->configure(settings(4, "smtp://127.0.0.1:26"));
  EXPECT_EQ(pool->idle(), 0u);
  asio::write(far, asio::buffer(std::string_view("221 2.0.0 Bye\r\n")));
  io.run_for(200ms);
  EXPECT_EQ(received(far, 6), "QUIT\r\n");
  EXPECT_FALSE(pool->take(cfg->upstream, io.get_executor()));  // old settings: nothing
}

TEST_F(PoolTest, CloseAllQuitsEverythingAndKeepsNoMore) {
  auto pool = std::make_shared<upstream_pool>(io);
  const auto cfg = settings(4);
  pool->configure(cfg);
  tcp::socket a(io), b(io);
  keep(*pool, cfg->upstream, {&a, &b});
  asio::write(a, asio::buffer(std::string_view("221 2.0.0 Bye\r\n")));
  asio::write(b, asio::buffer(std::string_view("221 2.0.0 Bye\r\n")));
  bool done = false;
  asio::co_spawn(io, pool->close_all(), [&](std::exception_ptr) { done = true; });
  io.run_for(3s);
  EXPECT_TRUE(done);
  EXPECT_EQ(received(a, 6), "QUIT\r\n");
  EXPECT_EQ(received(b, 6), "QUIT\r\n");
  tcp::socket c(io);
  EXPECT_TRUE(pool->give_back(cfg->upstream, connection(c)));
  EXPECT_FALSE(pool->keeps(cfg->upstream));
}

}  // namespace
