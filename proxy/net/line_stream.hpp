// A byte stream with an input buffer and deadlines: what both sides of the
// proxy (the client session and the upstream client) read lines and DATA
// from. Every read and write has a deadline (a timer raced against the I/O
// with awaitable operators), and a pending read can be woken for shutdown.
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <string_view>

#include "asio.hpp"

namespace portcullis {

class line_stream {
 public:
  using duration = std::chrono::steady_clock::duration;

  explicit line_stream(tcp::socket socket);

  enum class status {
    ok,        // `text` holds a line
    too_long,  // over the limit: the rest of the line is skipped on the next read
    eof,       // the peer closed (or reset) the connection
    timeout,   // no complete line before the deadline
    woken,     // wake() was called (shutdown)
  };
  struct line {
    status st = status::ok;
    std::string_view text;  // without the line ending; valid until the next read
    bool crlf = true;       // false: ended in a bare LF
  };

  // One line ending in LF, at most `max_len` bytes including the line ending.
  awaitable<line> read_line(std::size_t max_len, duration timeout);

  // Whatever is buffered or, when nothing is, one read from the socket.
  // Empty on eof, timeout or wake (see last_status()).
  awaitable<std::string_view> read_some(duration timeout);
  void consume(std::size_t n);  // drop bytes returned by read_some
  status last_status() const { return last_; }

  // Is there input already buffered (pipelined commands waiting)?
  bool has_buffered_input() const { return begin_ < buf_.size(); }

  // Writes all of it; false on error or timeout (the stream is then closed).
  awaitable<bool> write(std::span<const asio::const_buffer> buffers, duration timeout);
  awaitable<bool> write(std::string_view bytes, duration timeout);

  void wake();   // makes a pending or the next read return `woken`, once
  void close();  // idempotent
  tcp::socket& socket() { return socket_; }

 private:
  // One read into the buffer; false when it returned nothing.
  awaitable<bool> fill(std::chrono::steady_clock::time_point deadline);
  std::string_view buffered() const { return std::string_view(buf_).substr(begin_); }

  tcp::socket socket_;
  asio::steady_timer deadline_timer_;
  bool woken_ = false;
  std::string buf_;
  std::size_t begin_ = 0;  // start of unread bytes in buf_
  bool skipping_ = false;  // discarding the rest of a too-long line
  status last_ = status::ok;
};

}  // namespace portcullis
