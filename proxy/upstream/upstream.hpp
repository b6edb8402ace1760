// Where accepted mail goes: the upstream MTA over SMTP, or a Maildir.
// The session drives it in lock step, one command at a time, and hands the
// client whatever reply comes back. An upstream never throws: a failure to
// reach or understand the upstream is itself a reply (451 4.4.1 / 4.3.0),
// after which the upstream is closed and reconnects on the next MAIL.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "config/config.hpp"
#include "smtp/address.hpp"
#include "smtp/reply.hpp"

namespace portcullis {

class session_log;

// What MAIL FROM carried besides the address (RFC 1870, 6152, 6531).
struct mail_options {
  std::optional<std::uint64_t> size;
  bool body_8bit = false;
  bool smtputf8 = false;
};

class upstream {
 public:
  virtual ~upstream() = default;
  // Connects if needed (first MAIL of the session, or after a failure), then MAIL.
  virtual awaitable<smtp::reply> mail(const smtp::address& sender, const mail_options& options) = 0;
  virtual awaitable<smtp::reply> rcpt(const smtp::address& recipient) = 0;
  // DATA, then `header` (our Received:) and `message`, dot-stuffed, then the final reply.
  virtual awaitable<smtp::reply> data(std::string_view header, std::string_view message) = 0;
  // Ends the transaction in progress (RSET) so the connection serves the next one.
  virtual awaitable<void> reset() = 0;
  // False once a failure closed the connection (until the next MAIL reconnects).
  virtual bool connected() const = 0;
  // QUIT and close; the session is over.
  virtual awaitable<void> quit() = 0;
};

class tls_client_context;
struct connection_state;

// `client`: the session's connection state (for XCLIENT/XFORWARD); it outlives the upstream.
// `tls`: for smtps:// and STARTTLS to the upstream (null with upstream.starttls = "never").
std::unique_ptr<upstream> make_upstream(const config& cfg, const session_log& log, const connection_state& client,
                                        asio::any_io_executor io, asio::thread_pool& blocking,
                                        std::shared_ptr<tls_client_context> tls);

// "250 2.0.0 Ok: queued as 4F2A1C" -> "4F2A1C" (Postfix, Exim and aiosmtpd say it so).
std::string queue_id_of(const smtp::reply& r);

}  // namespace portcullis
