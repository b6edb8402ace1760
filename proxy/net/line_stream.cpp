#include "net/line_stream.hpp"

namespace portcullis {

using namespace asio::experimental::awaitable_operators;

namespace {
constexpr std::size_t read_chunk = 64 * 1024;  // one read's worth: DATA arrives in large pieces
constexpr std::size_t compact_above = 256 * 1024;
}  // namespace

line_stream::line_stream(tcp::socket socket)
    : socket_(std::move(socket)),
      deadline_timer_(socket_.get_executor()) {}

void line_stream::wake() {
  woken_ = true;
  boost::system::error_code ignored;
  socket_.cancel(ignored);  // a pending read completes with operation_aborted
}

void line_stream::close() {
  boost::system::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

// Only moves the index: views handed out stay intact until the next fill()
// (clear() would write a terminator over the first byte of a returned line).
void line_stream::consume(std::size_t n) { begin_ += n; }

awaitable<bool> line_stream::fill(std::chrono::steady_clock::time_point deadline) {
  if (woken_) {  // one wake, one `woken`: the owner decides whether to go on reading
    woken_ = false;
    last_ = status::woken;
    co_return false;
  }
  if (begin_ == buf_.size()) {
    buf_.clear();
    begin_ = 0;
  } else if (begin_ > compact_above) {
    buf_.erase(0, begin_);
    begin_ = 0;
  }
  const std::size_t old = buf_.size();
  buf_.resize(old + read_chunk);
  deadline_timer_.expires_at(deadline);
  boost::system::error_code ec;
  std::size_t n = 0;
  // The read never throws (redirect_error), so it counts as the success
  // that ends the race whenever it completes; the timer wins only by expiring.
  auto result = co_await (socket_.async_read_some(asio::buffer(buf_.data() + old, read_chunk),
                                                  asio::redirect_error(asio::use_awaitable, ec)) ||
                          deadline_timer_.async_wait(asio::use_awaitable));
  if (result.index() == 0) n = std::get<0>(result);
  buf_.resize(old + n);
  if (result.index() == 1) {
    last_ = status::timeout;
    co_return false;
  }
  if (woken_) {
    woken_ = n > 0;  // data came with the wake: report `woken` on the next fill instead
    last_ = status::woken;
    co_return n > 0;
  }
  if (ec || n == 0) {
    last_ = status::eof;
    co_return false;
  }
  co_return true;
}

awaitable<line_stream::line> line_stream::read_line(std::size_t max_len, duration timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::size_t scanned = 0;  // bytes of the buffered input already searched for LF
  for (;;) {
    const std::string_view in = buffered();
    const auto lf = in.find('\n', scanned);
    if (skipping_) {
      // Finish discarding a too-long line before reading the next one.
      if (lf != std::string_view::npos) {
        consume(lf + 1);
        skipping_ = false;
        scanned = 0;
        continue;
      }
      consume(in.size());
      scanned = 0;
    } else if (lf != std::string_view::npos && lf + 1 <= max_len) {
      line result;
      result.crlf = lf > 0 && in[lf - 1] == '\r';
      result.text = in.substr(0, result.crlf ? lf - 1 : lf);
      consume(lf + 1);  // the view stays valid: consume only moves indices or clears
      co_return result;
    } else if (in.size() >= max_len) {
      // RFC 5321 §4.5.3.1.4: reply 500 and skip the rest of the line.
      consume(std::min(in.size(), lf == std::string_view::npos ? in.size() : lf + 1));
      skipping_ = lf == std::string_view::npos;
      co_return line{status::too_long, {}, true};
    } else {
      scanned = in.size();
    }
    const bool got = co_await fill(deadline);
    if (!got) co_return line{last_, {}, true};
  }
}

awaitable<std::string_view> line_stream::read_some(duration timeout) {
  if (!has_buffered_input()) {
    const bool got = co_await fill(std::chrono::steady_clock::now() + timeout);
    if (!got) co_return std::string_view{};
  }
  co_return buffered();
}

awaitable<bool> line_stream::write(std::span<const asio::const_buffer> buffers, duration timeout) {
  deadline_timer_.expires_after(timeout);
  boost::system::error_code ec;
  auto result = co_await (asio::async_write(socket_, buffers, asio::redirect_error(asio::use_awaitable, ec)) ||
                          deadline_timer_.async_wait(asio::use_awaitable));
  if (result.index() != 0 || ec) {
    close();
    co_return false;
  }
  co_return true;
}

awaitable<bool> line_stream::write(std::string_view bytes, duration timeout) {
  const asio::const_buffer buf(bytes.data(), bytes.size());
  const bool written = co_await write(std::span<const asio::const_buffer>(&buf, 1), timeout);
  co_return written;
}

}  // namespace portcullis
