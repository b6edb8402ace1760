// Where accepted mail goes: the upstream MTA over SMTP, or a Maildir.
// The session drives it in lock step, one command at a time, and hands the
// client whatever reply comes back. An upstream never throws: a failure to
// reach or understand the upstream is itself a reply (failure_reply: 451
// 4.4.1 / 4.3.0 / 4.7.5), after which the upstream is closed and reconnects
// on the next MAIL.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "config/config.hpp"
#include "smtp/address.hpp"
#include "smtp/mail_options.hpp"
#include "smtp/reply.hpp"
#include "store/message_store.hpp"

namespace portcullis {

class session_log;

using smtp::mail_options;  // what MAIL FROM carried besides the address

// Why the upstream could not serve, as opposed to what it replied. Each kind
// has exactly one reply to the client (failure_reply).
enum class upstream_failure {
  unreachable,          // cannot resolve or connect; greeting or EHLO refused
  timeout,              // no reply, or no write progress, within upstream.timeout (the final dot's reply: data_done_timeout; RFC 5321 §4.5.3.2)
  lost,                 // the connection broke
  protocol,             // not a reply, a reply out of place (RFC 5321 §4.3.2), or unsolicited bytes
  tls,                  // STARTTLS to the upstream required but not offered, refused or failed
  client_info_refused,  // XCLIENT/XFORWARD not offered or refused: fail closed, never relay as ourselves
};
// For logs: "unreachable", "timeout", ...
std::string_view name(upstream_failure f);
// 451 4.4.1 (unreachable, timeout, lost), 451 4.3.0 (protocol, client info), 451 4.7.5 (tls).
smtp::reply failure_reply(upstream_failure f);

// What a connection came to while its transaction waited for the client
// (its next RCPT, its message, the hooks): upstream::after_wait.
enum class wait_outcome {
  open,         // in step and still there (or there is no connection: data() says so)
  closed,       // the upstream closed it (EOF, or its idle-timeout 421): closed here too, nothing of the message went
  out_of_step,  // it said something else unasked: dropped as a protocol failure (failure_reply(protocol))
};

class upstream {
 public:
  virtual ~upstream() = default;
  // Connects if needed (first MAIL of the session, or after a failure), then MAIL.
  virtual awaitable<smtp::reply> mail(const smtp::address& sender, const mail_options& options) = 0;
  virtual awaitable<smtp::reply> rcpt(const smtp::address& recipient) = 0;
  // DATA, then `header` (our Received:) and `message` (sealed; read in
  // chunks, dot-stuffed as it goes), then the final reply.
  virtual awaitable<smtp::reply> data(std::string_view header, const message_store& message) = 0;
  // Just before data() or a RCPT: whether the connection
  // outlived the wait since the last reply. An upstream ends a transaction
  // idle past its command timeout (RFC 5321 §4.5.3.2.7: 5 minutes at least;
  // Postfix's smtpd_timeout, 10 s under stress), while the client may take
  // longer to send its next command or its message. Before a RCPT only a
  // wait of some length is looked at (the look is a system call, and the
  // RCPT's own reply would show anything else out of step); before DATA
  // always (a stray 354 must not pass for DATA's go-ahead).
  enum class next_command { rcpt, data };
  virtual awaitable<wait_outcome> after_wait(next_command next) { co_return wait_outcome::open; }
  // Ends the transaction in progress (RSET) so the connection serves the next one.
  virtual awaitable<void> reset() = 0;
  // False once a failure closed the connection (until the next MAIL reconnects).
  virtual bool connected() const = 0;
  // QUIT and close; the session is over.
  virtual awaitable<void> quit() = 0;
  // The session is over and left no transaction open: a connection that can
  // serve another session (in step, nothing unread) goes back to the pool,
  // its RSET to go with the next session's first command; else QUIT.
  virtual awaitable<void> release() { co_await quit(); }
};

namespace dns {
class resolver;
}
class tls_client_context;
class upstream_pool;
struct connection_state;

// `client`: the session's connection state (for XCLIENT/XFORWARD); it outlives the upstream.
// `tls`: for smtps:// and STARTTLS to the upstream (null with upstream.starttls = "never").
// `pool`: where idle SMTP connections wait for the next session (null: none kept).
// `resolver`: the daemon's, for an upstream host given by name (null: the system's).
std::unique_ptr<upstream> make_upstream(const config& cfg, const session_log& log, const connection_state& client,
                                        asio::any_io_executor io, asio::thread_pool& blocking,
                                        std::shared_ptr<tls_client_context> tls, std::shared_ptr<upstream_pool> pool,
                                        std::shared_ptr<dns::resolver> resolver = nullptr);

// "250 2.0.0 Ok: queued as 4F2A1C" -> "4F2A1C" (Postfix, Exim and aiosmtpd say it so).
std::string queue_id_of(const smtp::reply& r);

}  // namespace portcullis
