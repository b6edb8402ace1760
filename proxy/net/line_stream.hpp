// A byte stream with an input buffer and deadlines: what both sides of the
// proxy (the client session and the upstream client) read lines and DATA
// from. Every read and write has a deadline, and a pending read can be woken
// for shutdown.
//
// The deadline is a timer that cancels the socket when the operation in
// progress is past its deadline. (Racing the I/O against the timer with
// awaitable operators costs two co_spawns and an exception per operation: the
// cancelled loser throws.) The timer is not re-armed for every operation:
// each operation only sets its deadline, and the timer, while it waits, is
// moved only to an earlier one; when it fires before the deadline of the
// operation then in progress it waits again for that one, and with no
// operation in progress it rests. A stream of commands under the same
// timeout thus costs no timer syscall (timerfd_settime) and no trip through
// the reactor's timer queue per read or write. A write the socket takes at
// once is done in place, not through the io_context (line_stream.cpp,
// write_plain). The socket's executor must be a strand.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "asio.hpp"
#include "net/tls_context.hpp"

namespace portcullis {

class line_stream {
 public:
  using duration = std::chrono::steady_clock::duration;

  explicit line_stream(tcp::socket socket);
  ~line_stream();
  line_stream(const line_stream&) = delete;
  line_stream& operator=(const line_stream&) = delete;

  enum class status {
    ok,        // `text` holds a line
    too_long,  // over the limit: `text` is its start (up to the limit); the rest is skipped on the next read
    eof,       // the peer closed (or reset) the connection
    timeout,   // no complete line before the deadline
    woken,     // wake() was called (shutdown)
  };
  struct line {
    status st = status::ok;
    std::string_view text;  // without the line ending; valid until the next read
    bool crlf = true;       // false: ended in a bare LF
  };

  // Has the peer closed, or said something unasked (an idle-timeout 421),
  // while we were not reading? For a connection about to be reused.
  bool peer_gone();

  // What the socket holds that we have not read, looked at without waiting
  // or taking it (MSG_PEEK): nothing yet, bytes, or the end (closed or failed).
  // Raw bytes: under TLS they may be TLS's own records.
  enum class waiting { nothing, data, end };
  waiting peek_socket();
  // Has the peer shut its side (FIN), even with bytes still unread before it
  // (which a peek sees instead)? Looked at without waiting (POLLRDHUP).
  bool peer_finished_sending();

  // Hands an idle stream (no operation pending) to another strand: a pooled
  // upstream connection taken by another session. The deadline timer's
  // callback is the only handler of ours with no executor of its own (our
  // reads and writes complete on the awaiting coroutine's): it moves to `ex`,
  // with a token of its own so that a late callback of the old strand touches nothing.
  void rebind(asio::any_io_executor ex);

  // Connects the (unopened) socket to the first endpoint that answers.
  awaitable<boost::system::error_code> connect(const tcp::resolver::results_type& endpoints, duration timeout);

  // One line ending in LF, at most `max_len` bytes including the line ending.
  awaitable<line> read_line(std::size_t max_len, duration timeout);

  // Whatever is buffered or, when nothing is, one read from the socket.
  // Empty on eof, timeout or wake (see last_status()).
  awaitable<std::string_view> read_some(duration timeout);
  // Looks at up to `max` bytes waiting on the socket without taking them
  // (MSG_PEEK), once the socket is readable: for a PROXY header, which must
  // not pull in what follows it (a TLS ClientHello that TLS must read itself).
  // Empty on eof, timeout or wake() (see last_status()).
  awaitable<std::string_view> peek(std::size_t max, duration timeout);
  // Takes `n` bytes that peek() showed off the socket.
  bool skip_peeked(std::size_t n);
  void consume(std::size_t n);  // drop bytes returned by read_some
  status last_status() const { return last_; }

  // Is there input already buffered (pipelined commands waiting)?
  bool has_buffered_input() const { return begin_ < end_; }
  // Input a read would return at once without the peer sending more: what is
  // buffered and, under TLS, data TLS has received but not handed over (a
  // record behind the one a read returned, in the same segment: no look at
  // the socket sees it). TLS records that carry no data (a late session
  // ticket) are taken in, not counted; a close_notify or a broken record counts.
  bool has_unread_input();
  // Is a whole line buffered (a pipelined command that a read_line would return at once)?
  bool has_buffered_line() const { return buffered().find('\n') != std::string_view::npos; }
  // Gives back a large buffer once nothing is buffered (an idle session keeps little).
  void shrink_if_idle();

  // Writes all of it; false on error or when one step makes no progress
  // within `timeout` (last_status() tells which; the stream is then closed).
  awaitable<bool> write(std::span<const asio::const_buffer> buffers, duration timeout);
  awaitable<bool> write(std::string_view bytes, duration timeout);

  // Switches to TLS on this connection (STARTTLS, implicit TLS, or towards
  // the upstream). `server_name`: SNI and the name to verify, client side.
  // False on failure: the reason is in last_error() and the stream is closed.
  awaitable<bool> start_tls(ssl::context& ctx, ssl::stream_base::handshake_type side, const std::string& server_name,
                            duration timeout);
  bool tls_active() const { return tls_.has_value(); }
  tls_session_info tls_info() { return tls_ ? describe(tls_->native_handle()) : tls_session_info{}; }
  const std::string& last_error() const { return last_error_; }
  // Forgets whatever input is buffered: what a client pipelined behind
  // STARTTLS was sent in clear and must never be acted on (CVE-2011-0411).
  std::size_t discard_buffered();

  // Makes a pending read (or the next one) return `woken`, once. Only a read
  // is interrupted: a write or a TLS handshake in progress goes on.
  void wake();
  void close();  // idempotent
  // Closes so that the peer can read all we wrote. Closing with its input
  // unread makes the kernel send RST, and a peer that gets RST may drop what
  // it had not read yet (our last reply): with input left, we send FIN and
  // discard what still comes, until the peer closes or `drain_limit` passes.
  // Over TLS, close_notify goes first and the peer's is awaited as long.
  awaitable<void> close_after_drain(duration drain_limit);
  tcp::socket& socket() { return socket_; }

 private:
  void close(bool shut_down);  // without shutdown(): for a peer that is gone
  // One read into the buffer; false when it returned nothing.
  awaitable<bool> fill(std::chrono::steady_clock::time_point deadline, std::size_t want_space);
  void make_space(std::size_t want);
  awaitable<bool> write_tls(std::span<const asio::const_buffer> buffers, duration timeout);
  // One write on the plain socket: at once when it has room, else once it has.
  awaitable<std::size_t> write_plain(std::span<const asio::const_buffer> buffers, boost::system::error_code& ec);
  // Sets the deadline of one operation; disarm() ends it and returns whether it expired.
  void arm(std::chrono::steady_clock::time_point deadline);
  bool disarm();
  void wait_until(std::chrono::steady_clock::time_point at);  // (re)starts the timer
  std::string_view buffered() const { return {buf_.get() + begin_, end_ - begin_}; }

  tcp::socket socket_;
  std::optional<ssl::stream<tcp::socket&>> tls_;  // once TLS is on, all I/O goes through it
  std::string last_error_;
  std::string peeked_;
  asio::steady_timer deadline_timer_;
  // Shared with the timer's callback, which may run after this stream is gone.
  struct deadline_token {
    // False once the stream is destroyed, or rebound: then written by another thread (the new
    // session's) than a callback already queued on the old strand may read it on.
    std::atomic<bool> alive = true;
    bool pending = false;                        // an operation is in progress
    bool expired = false;                        // ... and went past its deadline
    std::chrono::steady_clock::time_point deadline;  // the operation's
    bool waiting = false;                        // the timer has a wait outstanding
    std::chrono::steady_clock::time_point wait_at;   // ... that fires then
    std::uint64_t wait = 0;                      // which wait is current: a replaced one's callback does nothing
  };
  std::shared_ptr<deadline_token> token_ = std::make_shared<deadline_token>();
  bool woken_ = false;
  bool reading_ = false;  // a socket read is pending (what wake() may cancel)
  // Input buffer, not a std::string: resize() would zero-fill every read.
  std::unique_ptr<char[]> buf_;
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;  // unread bytes are [begin_, end_)
  std::size_t end_ = 0;
  bool skipping_ = false;  // discarding the rest of a too-long line
  // Writes done at once in a row (write_plain): after a few, one goes
  // through the io_context, so that a session that keeps writing cannot keep
  // the thread from the others.
  unsigned writes_in_a_row_ = 0;
  status last_ = status::ok;
};

}  // namespace portcullis
