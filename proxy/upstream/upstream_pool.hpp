// Idle SMTP connections to the upstream, kept between client sessions so
// that a client sending one message per connection does not cost an upstream
// connect, greeting, EHLO (and STARTTLS) and QUIT per message.
//
// A connection comes back only clean: its transaction ended, with nothing
// unread, and nothing the upstream holds against it that the next client
// would pay for (smtp_upstream: no refusal since its last delivery, few
// commands outside a transaction since then, at most 100 sessions served;
// Postfix's error and junk command counts). Its RSET goes with the next session's first command on it (see
// smtp_upstream's command()), which drops it for a fresh one unless the RSET
// gets 250 (RFC 5321 §4.1.1.5). It serves only sessions whose
// [upstream] settings are the ones the pool was last configured with (a reload
// that changes them retires every kept connection). Before one is handed out
// it is looked at (one non-blocking peek): one the upstream closed, or spoke on
// unasked (an idle-timeout 421), is dropped and the next one, or a fresh
// connection, serves. Idle ones are closed (QUIT) after upstream.pool_idle_timeout,
// and all of them at shutdown.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "asio.hpp"
#include "config/config.hpp"
#include "net/line_stream.hpp"

namespace portcullis {

// QUIT, its reply read, and the connection closed (over TLS, with
// close_notify both ways: RFC 8446 §6.1), each step within a few seconds.
awaitable<void> say_goodbye(line_stream& stream);

// An upstream connection between two sessions, with what it learnt of the upstream.
struct pooled_connection {
  std::unique_ptr<line_stream> stream;
  std::map<std::string, std::string> caps;  // the last EHLO's extensions
  std::string xclient_sent;                 // the attributes of the XCLIENT in force on it ("" if none)
  std::chrono::steady_clock::time_point idle_since{};
  std::size_t sessions = 0;       // the client sessions it served (smtp_upstream caps them)
  std::size_t junk_commands = 0;  // its commands outside a transaction since its last delivery
};

class upstream_pool : public std::enable_shared_from_this<upstream_pool> {
 public:
  explicit upstream_pool(asio::io_context& io);
  ~upstream_pool();

  // The settings that connections may be kept for from now on: at start and
  // after every reload. Kept connections made under other settings are closed.
  void configure(std::shared_ptr<const config> cfg);
  // A kept connection for a session with settings `u`, now bound to `ex`; none
  // when there is none, or `u` are not the settings in force. `dropped`
  // counts the kept ones found closed by the upstream (the session logs them).
  std::optional<pooled_connection> take(const upstream_config& u, asio::any_io_executor ex,
                                        std::size_t* dropped = nullptr);
  // Keeps `c` (made under `u`) if it may be; otherwise hands it back for the caller to QUIT.
  std::optional<pooled_connection> give_back(const upstream_config& u, pooled_connection c);
  // Whether give_back would keep a connection made under `u`.
  bool keeps(const upstream_config& u) const;
  // SIGTERM: QUIT every kept connection, keep no more, stop the idle reaper.
  awaitable<void> close_all();

  std::size_t idle() const;

 private:
  bool current(const upstream_config& u) const;  // under mutex_
  void retire(std::vector<pooled_connection> gone, bool polite);
  awaitable<void> reap();
  awaitable<void> quit(pooled_connection c);

  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;  // the reaper's and the QUITs'
  asio::steady_timer reaper_timer_;                       // used on strand_ only
  mutable std::mutex mutex_;                              // guards the three below
  std::shared_ptr<const config> cfg_;
  std::vector<pooled_connection> idle_;  // oldest first; taken from the back (the warmest)
  bool closed_ = false;
  std::atomic<int> quitting_{0};  // QUITs in flight
  std::atomic<bool> reaping_{false};
};

}  // namespace portcullis
