#include "net/line_stream.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "net/close_on_exec.hpp"

namespace portcullis {

namespace {
constexpr std::size_t command_space = 4 * 1024;  // enough for a pipelined batch of commands
// DATA arrives in large pieces: fewer reads (a 1 MiB message takes about 13
// reads, not 24 at 64 KiB). The buffer is given back between commands
// (shrink_if_idle), so only sessions in DATA hold one.
constexpr std::size_t data_space = 256 * 1024;
constexpr std::size_t discard_chunk = 16 * 1024;   // close_after_drain's reads
constexpr std::size_t max_discarded = 1 << 20;     // close_after_drain gives up after this much
constexpr unsigned max_writes_in_a_row = 16;  // then one through the io_context (write_plain)

// Buffers larger than command_space (a session in DATA) are kept for the
// next one on this thread: giving 256 KiB back to malloc after every message
// and taking it again made glibc trim and regrow its heap (madvise, page
// faults) several times a message under load. At most `kept` per thread, so
// idle connections still hold none.
thread_local bool spares_gone = false;  // (trivial: still readable once `spares` is destroyed at thread exit)

class spare_buffers {
 public:
  spare_buffers() = default;
  spare_buffers(const spare_buffers&) = delete;
  spare_buffers& operator=(const spare_buffers&) = delete;
  ~spare_buffers() { spares_gone = true; }

  // A buffer of at least `size` bytes; `size` becomes what it holds.
  std::unique_ptr<char[]> take(std::size_t& size) {
    for (auto it = spare_.begin(); size > command_space && it != spare_.end(); ++it) {
      if (it->size < size) continue;
      size = it->size;
      auto buf = std::move(it->buf);
      spare_.erase(it);
      return buf;
    }
    return std::make_unique_for_overwrite<char[]>(size);
  }
  void give(std::unique_ptr<char[]> buf, std::size_t size) {
    if (buf && size > command_space && size <= largest && spare_.size() < kept)
      spare_.push_back({std::move(buf), size});
  }

 private:
  static constexpr std::size_t kept = 4, largest = 1 << 20;
  struct spare {
    std::unique_ptr<char[]> buf;
    std::size_t size;
  };
  std::vector<spare> spare_;
};

thread_local spare_buffers spares;

// Whatever thread a stream ends on, and when: a stream destroyed after this
// thread's `spares` (at its exit) frees its buffer.
std::unique_ptr<char[]> take_buffer(std::size_t& size) {
  return spares_gone ? std::make_unique_for_overwrite<char[]>(size) : spares.take(size);
}

void give_back(std::unique_ptr<char[]> buf, std::size_t size) {
  if (!spares_gone) spares.give(std::move(buf), size);
}
}  // namespace

line_stream::line_stream(tcp::socket socket)
    : socket_(std::move(socket)),
      deadline_timer_(socket_.get_executor()) {
  // Writes try the socket before they wait (write_plain): it must never
  // block. (Asio makes it non-blocking for its first asynchronous operation
  // anyway: this is the same one ioctl, not another.)
  boost::system::error_code ignored;
  if (socket_.is_open()) socket_.non_blocking(true, ignored);
}

line_stream::~line_stream() {
  token_->alive = false;
  give_back(std::move(buf_), capacity_);
}

void line_stream::arm(std::chrono::steady_clock::time_point deadline) {
  token_->pending = true;
  token_->expired = false;
  token_->deadline = deadline;
  // A wait that fires later than this deadline is moved; one that fires
  // earlier stays, and its callback waits again for this deadline.
  if (!token_->waiting || deadline < token_->wait_at) wait_until(deadline);
}

void line_stream::wait_until(std::chrono::steady_clock::time_point at) {
  token_->waiting = true;
  token_->wait_at = at;
  const std::uint64_t wait = ++token_->wait;
  deadline_timer_.expires_at(at);  // cancels the wait it replaces: that callback sees a newer `wait`
  deadline_timer_.async_wait([token = token_, wait, self = this](boost::system::error_code ec) {
    // On the stream's strand, like every use of the stream: `self` is valid while token->alive.
    if (!token->alive || token->wait != wait) return;
    token->waiting = false;
    if (ec || !token->pending) return;  // cancelled (close), or no operation in progress: rest
    if (std::chrono::steady_clock::now() < token->deadline) {
      self->wait_until(token->deadline);  // armed earlier for an operation since finished
      return;
    }
    token->expired = true;
    boost::system::error_code ignored;
    self->socket_.cancel(ignored);
  });
}

bool line_stream::disarm() {
  token_->pending = false;  // the timer keeps waiting: the next operation's deadline is likely later
  return token_->expired;
}

void line_stream::rebind(asio::any_io_executor ex) {
  token_->alive = false;  // the old timer's last callback (on the old strand) does nothing
  token_ = std::make_shared<deadline_token>();
  deadline_timer_ = asio::steady_timer(std::move(ex));
}

line_stream::waiting line_stream::peek_socket() {
  char byte;
  const ssize_t n = ::recv(socket_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return waiting::data;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return waiting::nothing;
  return waiting::end;
}

bool line_stream::peer_finished_sending() {
  pollfd p{socket_.native_handle(), POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

bool line_stream::has_unread_input() {
  if (has_buffered_input()) return true;
  if (!tls_) return false;
  SSL* ssl = tls_->native_handle();
  if (SSL_pending(ssl) > 0) return true;
  // Records TLS holds, whole or not, that it has not decrypted yet: what is in
  // its read BIO (the engine gives it all it reads from the socket).
  if (SSL_has_pending(ssl) == 0 && BIO_ctrl_pending(SSL_get_rbio(ssl)) == 0) return false;
  char byte;
  const int n = SSL_peek(ssl, &byte, 1);  // decrypts them, takes none of the data
  const int error = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, n);
  ERR_clear_error();  // (for the engine's next operation)
  return error != SSL_ERROR_WANT_READ;
}

bool line_stream::peer_gone() { return has_unread_input() || peek_socket() != waiting::nothing; }

void line_stream::wake() {
  woken_ = true;
  if (!reading_) return;  // the next fill() reports it
  // socket.cancel() cancels everything pending on the socket: only a read may be.
  boost::system::error_code ignored;
  socket_.cancel(ignored);  // the pending read completes with operation_aborted
}

void line_stream::close() { close(true); }

void line_stream::close(bool shut_down) {
  // No wait outstanding on a closed stream: nothing keeps its executor busy.
  ++token_->wait;
  token_->waiting = false;
  deadline_timer_.cancel();
  boost::system::error_code ignored;
  if (shut_down) socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

awaitable<void> line_stream::close_after_drain(duration drain_limit) {
  const waiting seen = !socket_.is_open()      ? waiting::end
                       : has_buffered_input() ? waiting::data
                                              : peek_socket();
  // A peer that closed or reset the connection (most clients, once QUIT is
  // answered) has nothing left to shut down: the close alone (one system call less).
  if (seen == waiting::end) {
    close(false);
    co_return;
  }
  if (tls_) {
    // close_notify first (RFC 8446 §6.1: a TLS peer tells a close from a
    // cut by it), then the peer's own, or whatever it still sends, read and
    // dropped by the shutdown, within the drain limit.
    boost::system::error_code ec;
    arm(std::chrono::steady_clock::now() + drain_limit);
    co_await tls_->async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
    disarm();
    close();
    co_return;
  }
  if (seen == waiting::data) {
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    // Raw reads, TLS or not: these bytes are only thrown away. (On the heap:
    // in the coroutine's frame, it made every close allocate 16 KiB.)
    const auto scratch = std::make_unique_for_overwrite<char[]>(discard_chunk);
    std::size_t discarded = 0;
    arm(std::chrono::steady_clock::now() + drain_limit);
    while (!ec && discarded < max_discarded) {
      const std::size_t n = co_await socket_.async_read_some(asio::buffer(scratch.get(), discard_chunk),
                                                             asio::redirect_error(asio::use_awaitable, ec));
      discarded += n;
    }
    disarm();
  }
  close();
}

// Only moves the index: views handed out stay intact until the next fill().
void line_stream::consume(std::size_t n) { begin_ += n; }

void line_stream::shrink_if_idle() {
  if (begin_ == end_ && capacity_ > command_space) {
    give_back(std::move(buf_), capacity_);
    capacity_ = begin_ = end_ = 0;
  }
}

// At least `want` free bytes after end_: first by moving unread bytes to the
// front, then by growing (only past the longest line or the DATA chunk size).
void line_stream::make_space(std::size_t want) {
  if (begin_ == end_) begin_ = end_ = 0;
  if (capacity_ - end_ >= want) return;
  if (begin_ > 0) {
    std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    if (capacity_ - end_ >= want) return;
  }
  std::size_t grown = std::max({capacity_ * 2, end_ + want, command_space});
  auto bigger = take_buffer(grown);
  if (end_) std::memcpy(bigger.get(), buf_.get(), end_);
  give_back(std::exchange(buf_, std::move(bigger)), capacity_);
  capacity_ = grown;
}

awaitable<bool> line_stream::fill(std::chrono::steady_clock::time_point deadline, std::size_t want_space) {
  if (woken_) {  // one wake, one `woken`: the owner decides whether to go on reading
    woken_ = false;
    last_ = status::woken;
    co_return false;
  }
  make_space(want_space);
  boost::system::error_code ec;
  arm(deadline);
  const auto space = asio::buffer(buf_.get() + end_, capacity_ - end_);
  std::size_t n = 0;
  reading_ = true;
  if (tls_)
    n = co_await tls_->async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
  else
    n = co_await socket_.async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
  reading_ = false;
  const bool expired = disarm();
  end_ += n;
  if (expired && n == 0) {
    last_ = status::timeout;
    co_return false;
  }
  // A read that ended the stream (not one our wake cancelled) is the end,
  // woken or not: asio reports an end of file only once.
  const bool ended = n == 0 && ec != asio::error::operation_aborted;
  if (woken_ && !ended) {
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

awaitable<boost::system::error_code> line_stream::connect(const tcp::resolver::results_type& endpoints,
                                                          duration timeout) {
  boost::system::error_code ec = asio::error::host_not_found;
  arm(std::chrono::steady_clock::now() + timeout);
  // Each address in turn, as asio::async_connect would, but on a socket
  // opened close-on-exec (close_on_exec.hpp).
  for (const auto& entry : endpoints) {
    boost::system::error_code ignored;
    socket_.close(ignored);
    ec = open_close_on_exec(socket_, entry.endpoint().protocol());
    if (!ec) co_await socket_.async_connect(entry.endpoint(), asio::redirect_error(asio::use_awaitable, ec));
    if (!ec || token_->expired) break;
  }
  const bool expired = disarm();
  if (expired) co_return asio::error::timed_out;
  if (!ec) socket_.set_option(tcp::no_delay(true), ec);
  if (!ec) socket_.non_blocking(true, ec);  // as for an accepted socket (the constructor)
  co_return ec;
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
      co_return line{status::too_long, in.substr(0, max_len), true};  // (its start names the command)
    } else {
      scanned = in.size();
    }
    const bool got = co_await fill(deadline, command_space);
    if (!got) co_return line{last_, {}, true};
  }
}

awaitable<std::string_view> line_stream::read_some(duration timeout) {
  if (!has_buffered_input()) {
    const bool got = co_await fill(std::chrono::steady_clock::now() + timeout, data_space);
    if (!got) co_return std::string_view{};
  }
  co_return buffered();
}

awaitable<std::string_view> line_stream::peek(std::size_t max, duration timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (std::exchange(woken_, false)) {  // (wake(): the owner decides what next)
      last_ = status::woken;
      co_return std::string_view{};
    }
    boost::system::error_code ec;
    arm(deadline);
    reading_ = true;  // (what wake() cancels)
    co_await socket_.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    reading_ = false;
    const bool expired = disarm();
    if (woken_) continue;
    if (expired || ec) {
      last_ = expired ? status::timeout : status::eof;
      co_return std::string_view{};
    }
    peeked_.resize(max);
    const ssize_t n = ::recv(socket_.native_handle(), peeked_.data(), max, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) co_return std::string_view(peeked_.data(), static_cast<std::size_t>(n));
    // Readiness can be spurious (select(2)): nothing there yet is not the end.
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    last_ = status::eof;
    co_return std::string_view{};
  }
}

bool line_stream::skip_peeked(std::size_t n) {
  peeked_.resize(std::max(peeked_.size(), n));
  return ::recv(socket_.native_handle(), peeked_.data(), n, MSG_DONTWAIT) == static_cast<ssize_t>(n);
}

awaitable<bool> line_stream::write(std::span<const asio::const_buffer> buffers, duration timeout) {
  if (tls_) {
    const bool written = co_await write_tls(buffers, timeout);
    co_return written;
  }
  // The deadline is per step, not for the whole write (RFC 5321 §4.5.3.2):
  // a peer that reads steadily gets a big message however long it takes.
  std::vector<asio::const_buffer> pending(buffers.begin(), buffers.end());
  std::size_t first = 0;  // pending[first..] is still to go
  while (first < pending.size()) {
    constexpr std::size_t max_iov = 64;  // well under IOV_MAX
    const auto batch = std::span(pending).subspan(first, std::min(max_iov, pending.size() - first));
    boost::system::error_code ec;
    arm(std::chrono::steady_clock::now() + timeout);
    std::size_t n = co_await write_plain(batch, ec);
    const bool expired = disarm();
    if (expired || ec) {
      last_ = expired ? status::timeout : status::eof;
      close();
      co_return false;
    }
    while (n > 0 && first < pending.size()) {
      const std::size_t take = std::min(n, pending[first].size());
      pending[first] += take;
      n -= take;
      if (pending[first].size() == 0) ++first;
    }
    while (first < pending.size() && pending[first].size() == 0) ++first;
  }
  co_return true;
}

// Asio completes an asynchronous write that could be done at once (its
// speculative attempt: the same sendmsg as ours) through the io_context's
// queue, and the queue makes the scheduler poll the reactor before it runs
// the completion: an epoll_wait(0) after every write of a session alone on
// its thread, and a queued completion for every one under load. A write
// that the socket takes at once (nearly all: replies and commands are small)
// is done here with no trip through the io_context; one that finds the
// socket full goes to Asio, which waits for room. (Reads stay Asio's: its
// reactor knows when a socket was drained and then waits without trying,
// where a read tried here first costs a failed recv more often than it
// saves a trip: tried, 0.9 more failed recv a message at 20 sessions, and
// no less CPU.)
// Every max_writes_in_a_row-th write goes through the io_context anyway, so
// a session that keeps writing still lets the others run.
awaitable<std::size_t> line_stream::write_plain(std::span<const asio::const_buffer> buffers,
                                                boost::system::error_code& ec) {
  if (writes_in_a_row_ < max_writes_in_a_row) {
    const std::size_t n = socket_.write_some(buffers, ec);
    if (ec != asio::error::would_block) {
      ++writes_in_a_row_;
      co_return n;
    }
  }
  writes_in_a_row_ = 0;
  const std::size_t n = co_await socket_.async_write_some(buffers, asio::redirect_error(asio::use_awaitable, ec));
  co_return n;
}

// TLS writes one record per buffer handed to it: the pieces (a dot-stuffed
// body is many) are gathered into chunks of a few records first.
awaitable<bool> line_stream::write_tls(std::span<const asio::const_buffer> buffers, duration timeout) {
  constexpr std::size_t chunk_size = 64 * 1024;
  std::string chunk;
  chunk.reserve(chunk_size);
  auto send = [&]() -> awaitable<bool> {
    boost::system::error_code ec;
    arm(std::chrono::steady_clock::now() + timeout);
    const std::size_t n = co_await asio::async_write(*tls_, asio::buffer(chunk), asio::redirect_error(asio::use_awaitable, ec));
    (void)n;
    const bool expired = disarm();
    chunk.clear();
    if (expired || ec) {
      last_ = expired ? status::timeout : status::eof;
      close();
      co_return false;
    }
    co_return true;
  };
  for (const auto& b : buffers) {
    auto rest = std::string_view(static_cast<const char*>(b.data()), b.size());
    while (!rest.empty()) {
      const std::size_t take = std::min(rest.size(), chunk_size - chunk.size());
      chunk.append(rest.substr(0, take));
      rest.remove_prefix(take);
      if (chunk.size() == chunk_size) {
        const bool sent = co_await send();
        if (!sent) co_return false;
      }
    }
  }
  if (!chunk.empty()) {
    const bool sent = co_await send();
    if (!sent) co_return false;
  }
  co_return true;
}

awaitable<bool> line_stream::start_tls(ssl::context& ctx, ssl::stream_base::handshake_type side,
                                       const std::string& server_name, duration timeout) {
  tls_.emplace(socket_, ctx);
  SSL* native = tls_->native_handle();
  if (side == ssl::stream_base::client && !server_name.empty()) {
    // SNI names a host, never an address (RFC 6066 §3: "Literal IPv4 and IPv6
    // addresses are not permitted"); an address is still checked below.
    boost::system::error_code not_an_address;
    (void)asio::ip::make_address(server_name, not_an_address);
    if (not_an_address) SSL_set_tlsext_host_name(native, server_name.c_str());
    // Checked by OpenSSL during the handshake when the context verifies peers (IP SANs for an address).
    SSL_set1_host(native, server_name.c_str());
  }
  boost::system::error_code ec;
  arm(std::chrono::steady_clock::now() + timeout);
  co_await tls_->async_handshake(side, asio::redirect_error(asio::use_awaitable, ec));
  const bool expired = disarm();
  if (expired || ec) {
    last_error_ = expired ? std::string("handshake timed out") : ec.message();
    if (!expired && ec.category() == asio::error::get_ssl_category()) {
      const long verify = SSL_get_verify_result(native);
      if (verify != X509_V_OK) last_error_ += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
    }
    close();
    co_return false;
  }
  co_return true;
}

std::size_t line_stream::discard_buffered() {
  const std::size_t n = end_ - begin_;
  begin_ = end_ = 0;
  skipping_ = false;
  return n;
}

awaitable<bool> line_stream::write(std::string_view bytes, duration timeout) {
  const asio::const_buffer buf(bytes.data(), bytes.size());
  const bool written = co_await write(std::span<const asio::const_buffer>(&buf, 1), timeout);
  co_return written;
}

}  // namespace portcullis
