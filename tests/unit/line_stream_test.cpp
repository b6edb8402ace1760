// line_stream over a real loopback connection. Its deadlines: the timer is
// not re-armed per operation (it moves only to an earlier deadline and, when
// it fires early, waits again for the operation then in progress), and every
// operation must still time out at its own deadline, never earlier. Its
// writes: done at once when the socket has room, with no trip through the
// io_context, yet never keeping the thread from others for long.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "asio.hpp"
#include "net/line_stream.hpp"

namespace portcullis {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// A connected pair: `server` for the line_stream (on a strand), `peer` a plain blocking socket.
struct loopback {
  asio::io_context io;
  asio::io_context peer_io;
  tcp::socket server{asio::make_strand(io)};
  tcp::socket peer{peer_io};

  loopback() {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    peer.connect(acceptor.local_endpoint());
    acceptor.accept(server);
  }
  void send(std::string_view bytes) { asio::write(peer, asio::buffer(bytes)); }
};

// Runs `body` as a coroutine on the stream's strand until it and the stream's timer are done.
void run(loopback& l, std::function<awaitable<void>(line_stream&)> body) {
  auto stream = std::make_shared<line_stream>(std::move(l.server));
  bool finished = false;
  asio::co_spawn(stream->socket().get_executor(),
                 [stream, body, &finished]() -> awaitable<void> {
                   co_await body(*stream);
                   stream->close();
                   finished = true;
                 },
                 [](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                 });
  l.io.run();
  EXPECT_TRUE(finished);
}

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

TEST(LineStreamDeadline, ShortDeadlineAfterLongOneTimesOutOnTime) {
  loopback l;
  l.send("HELO a\r\n");
  run(l, [](line_stream& s) -> awaitable<void> {
    auto first = co_await s.read_line(512, 20s);  // the timer now waits 20 s
    EXPECT_EQ(first.st, line_stream::status::ok);
    const auto start = clock_type::now();
    auto second = co_await s.read_line(512, 200ms);  // must move it to 200 ms
    EXPECT_EQ(second.st, line_stream::status::timeout);
    EXPECT_GE(seconds_since(start), 0.19);
    EXPECT_LT(seconds_since(start), 5.0);
  });
}

TEST(LineStreamDeadline, LaterDeadlineIsNotCutShortByAnEarlierWait) {
  loopback l;
  l.send("HELO a\r\n");
  std::thread late([&] {
    std::this_thread::sleep_for(600ms);  // after the first operation's deadline has passed
    l.send("MAIL FROM:<a@b>\r\n");
  });
  run(l, [](line_stream& s) -> awaitable<void> {
    auto first = co_await s.read_line(512, 200ms);  // the timer waits for 200 ms
    EXPECT_EQ(first.st, line_stream::status::ok);
    auto second = co_await s.read_line(512, 10s);   // fires at 200 ms, must wait again
    EXPECT_EQ(second.st, line_stream::status::ok);
    EXPECT_EQ(second.text, "MAIL FROM:<a@b>");
  });
  late.join();
}

TEST(LineStreamDeadline, TimesOutAfterTheTimerRested) {
  loopback l;
  l.send("HELO a\r\n");
  run(l, [](line_stream& s) -> awaitable<void> {
    auto first = co_await s.read_line(512, 100ms);
    EXPECT_EQ(first.st, line_stream::status::ok);
    asio::steady_timer idle(s.socket().get_executor(), 400ms);  // the timer fires with nothing in progress
    co_await idle.async_wait(asio::use_awaitable);
    const auto start = clock_type::now();
    auto second = co_await s.read_line(512, 200ms);
    EXPECT_EQ(second.st, line_stream::status::timeout);
    EXPECT_GE(seconds_since(start), 0.19);
    EXPECT_LT(seconds_since(start), 5.0);
  });
}

TEST(LineStreamDeadline, WritesKeepTheirDeadlineToo) {
  loopback l;  // the peer never reads: the write fills both socket buffers and stalls
  run(l, [](line_stream& s) -> awaitable<void> {
    const std::string big(64 << 20, 'x');
    const auto start = clock_type::now();
    const bool written = co_await s.write(big, 300ms);
    EXPECT_FALSE(written);
    EXPECT_EQ(s.last_status(), line_stream::status::timeout);
    EXPECT_LT(seconds_since(start), 10.0);
  });
}

TEST(LineStreamDeadline, ClosedStreamLeavesNoTimerBehind) {
  loopback l;
  l.send("HELO a\r\n");
  const auto start = clock_type::now();
  // run() returns only when nothing is left to do: a timer still waiting for
  // the 20 s deadline would hold it that long.
  run(l, [](line_stream& s) -> awaitable<void> {
    auto line = co_await s.read_line(512, 20s);
    EXPECT_EQ(line.st, line_stream::status::ok);
  });
  EXPECT_LT(seconds_since(start), 5.0);
}

// A handler posted before the write has not run when the write returns: the
// write never left the coroutine (Asio's own write queues its completion
// behind it, and the scheduler polls the reactor first).
TEST(LineStreamWrite, WriteTheSocketTakesCompletesInPlace) {
  loopback l;
  run(l, [](line_stream& s) -> awaitable<void> {
    bool other_ran = false;
    asio::post(s.socket().get_executor(), [&] { other_ran = true; });
    const bool written = co_await s.write(std::string_view("250 2.0.0 Ok\r\n"), 1s);
    EXPECT_TRUE(written);
    EXPECT_FALSE(other_ran);
    co_await asio::post(s.socket().get_executor(), asio::use_awaitable);
    EXPECT_TRUE(other_ran);
  });
  std::string got(14, '\0');
  asio::read(l.peer, asio::buffer(got));
  EXPECT_EQ(got, "250 2.0.0 Ok\r\n");
}

// A session that keeps writing still lets the others run: a handler posted
// before a long run of small writes runs before the run ends.
TEST(LineStreamWrite, ManyWritesInARowLetOthersRun) {
  loopback l;
  run(l, [](line_stream& s) -> awaitable<void> {
    bool other_ran = false;
    asio::post(s.socket().get_executor(), [&] { other_ran = true; });
    for (int i = 0; i < 40 && !other_ran; ++i) {
      const bool written = co_await s.write(std::string_view("250 2.1.5 Ok\r\n"), 1s);
      EXPECT_TRUE(written);
    }
    EXPECT_TRUE(other_ran);
  });
}

// A write larger than the socket buffers waits for room (the peer reads
// slowly) and every byte arrives, in order.
TEST(LineStreamWrite, WriteOfMoreThanTheSocketHoldsArrivesWhole) {
  loopback l;
  std::string big(16 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  std::string got;
  std::thread reader([&] {
    std::array<char, 64 * 1024> chunk;
    boost::system::error_code ec;
    while (got.size() < big.size()) {
      const std::size_t n = l.peer.read_some(asio::buffer(chunk), ec);
      if (ec) break;
      got.append(chunk.data(), n);
      if (got.size() < (1 << 20)) std::this_thread::sleep_for(1ms);  // slow at first: the socket fills
    }
  });
  run(l, [&big](line_stream& s) -> awaitable<void> {
    const std::array<asio::const_buffer, 3> pieces{asio::buffer(big.data(), 100), asio::buffer(big.data() + 100, 5 << 20),
                                                   asio::buffer(big.data() + 100 + (5 << 20), big.size() - 100 - (5 << 20))};
    const bool written = co_await s.write(pieces, 30s);
    EXPECT_TRUE(written);
  });
  reader.join();
  EXPECT_EQ(got.size(), big.size());
  EXPECT_TRUE(got == big);
}

// A peer that is gone: the write fails (no exception, no SIGPIPE) and says so.
TEST(LineStreamWrite, WriteToAClosedPeerFails) {
  loopback l;
  l.peer.set_option(asio::socket_base::linger(true, 0));
  l.peer.close();  // RST
  std::this_thread::sleep_for(50ms);
  run(l, [](line_stream& s) -> awaitable<void> {
    bool written = true;
    for (int i = 0; i < 3 && written; ++i) written = co_await s.write(std::string_view("250 2.0.0 Ok\r\n"), 1s);
    EXPECT_FALSE(written);
    EXPECT_EQ(s.last_status(), line_stream::status::eof);
  });
}


// What a client still sends after the last reply is read and thrown away
// before the close (a close with unread bytes would be a reset, and could
// destroy that reply on its way): the peer gets the reply, then an orderly end.
TEST(LineStreamClose, DrainsWhatThePeerStillSendsThenCloses) {
  loopback l;
  std::string pipelined(48 * 1024, 'x');  // more than one read of the drain, less than a socket buffer
  l.send(pipelined);
  std::thread peer([&l] {
    std::this_thread::sleep_for(100ms);
    l.send("more after a while\r\n");
    l.peer.shutdown(tcp::socket::shutdown_send);
  });
  run(l, [](line_stream& s) -> awaitable<void> {
    EXPECT_TRUE(co_await s.write(std::string_view("221 2.0.0 Bye\r\n"), 1s));
    co_await s.close_after_drain(5s);
    EXPECT_FALSE(s.socket().is_open());
  });
  peer.join();
  std::array<char, 64> got{};
  boost::system::error_code ec;
  const std::size_t n = asio::read(l.peer, asio::buffer(got), ec);
  EXPECT_EQ(std::string_view(got.data(), n), "221 2.0.0 Bye\r\n");
  EXPECT_EQ(ec, asio::error::eof);  // a FIN, not a reset
}

}  // namespace
}  // namespace portcullis
