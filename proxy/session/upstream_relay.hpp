// The session's side of the lock step with the upstream: one upstream
// connection (opened at the first MAIL, kept across transactions), what the
// upstream was given in the current transaction, and bringing it up to date
// when a policy rewrote the envelope after MAIL/RCPT went upstream.
// The SMTP protocol with the client is the session's; this is only the relay.
#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "session/environment.hpp"
#include "smtp/reply.hpp"
#include "state/connection_state.hpp"
#include "state/transaction.hpp"
#include "upstream/upstream.hpp"

namespace portcullis {

class session_log;

class upstream_relay {
 public:
  upstream_relay(upstream_factory make, const session_log& log, const connection_state& client,
                 asio::any_io_executor io);
  ~upstream_relay();

  // MAIL with the transaction's sender and options; the upstream's reply
  // (with a generic enhanced status where it gave none).
  awaitable<smtp::reply> mail(const transaction& tx);
  awaitable<smtp::reply> rcpt(const smtp::address& recipient);
  // Before DATA: when the transaction's envelope is not what the upstream
  // was given (a policy rewrote it), redoes the upstream transaction. The
  // upstream's refusal, if any, is the client's answer to its DATA.
  awaitable<std::optional<smtp::reply>> sync(const transaction& tx);
  // DATA, our `header`, the message; the upstream's final reply. When the
  // upstream closed the connection while the transaction waited for the
  // message (the client sending it, the hooks running), the transaction is
  // given again first, on a new connection (after_wait); so it is before a
  // RCPT.
  awaitable<smtp::reply> data(std::string_view header, const message_store& message);
  // Ends the upstream transaction, if one is open (RSET), so the connection serves the next.
  awaitable<void> reset();
  // QUIT; the session is over.
  awaitable<void> quit();
  // The session is over. A client that left a transaction open upstream
  // (it went away mid-transaction) costs the connection: RSET, QUIT. Otherwise
  // the connection may serve another session (upstream::release).
  awaitable<void> finish();

  // The upstream failed in this transaction: nothing more of it goes through.
  bool lost() const { return lost_; }

 private:
  upstream& connection();
  // Before the next command of an open transaction: when the upstream closed
  // it while we waited for the client (its idle timeout, Postfix's
  // smtpd_timeout: 10 s under stress), it is given again on a new connection
  // (give_again); nullopt when the command may go, else the reply for it.
  awaitable<std::optional<smtp::reply>> after_wait(upstream::next_command next);
  // The transaction as the upstream took it (MAIL, each RCPT), on a new
  // connection; nullopt when it took it so again, else the reply for the
  // client's DATA.
  awaitable<std::optional<smtp::reply>> give_again();

  upstream_factory make_;
  const session_log& log_;
  const connection_state& client_;
  asio::any_io_executor io_;
  std::unique_ptr<upstream> upstream_;
  // What the upstream was given in the open transaction.
  bool open_ = false;
  bool lost_ = false;
  smtp::address sender_;
  mail_options options_;
  std::vector<smtp::address> recipients_;
};

}  // namespace portcullis
