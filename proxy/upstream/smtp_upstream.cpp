// The upstream as an SMTP client (RFC 5321 §3, §4.5.3.2 timeouts).
//
// Lock step: one command at a time, never pipelined, so the upstream owes us
// exactly one reply per command, and that reply must be one the command can
// get (RFC 5321 §4.3.2, smtp::fit). A reply out of place, or bytes the
// upstream sends while it owes us nothing, mean the two ends are out of step
// (a stray 354 after a RCPT reply would pass for DATA's go-ahead, and the
// message's final reply would then be that DATA's 354): the connection is
// dropped, the client gets 451 4.3.0, and the next MAIL opens a fresh one.
#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string_view>
#include <vector>

#include "dns/resolver.hpp"
#include "log.hpp"
#include "metrics/metrics.hpp"
#include "net/line_stream.hpp"
#include "net/network.hpp"
#include "state/connection_state.hpp"
#include "smtp/dot_decoder.hpp"
#include "smtp/text.hpp"
#include "upstream/maildir_upstream.hpp"
#include "upstream/upstream.hpp"
#include "upstream/upstream_pool.hpp"

namespace portcullis {

using namespace asio::experimental::awaitable_operators;

std::string_view name(upstream_failure f) {
  switch (f) {
    case upstream_failure::unreachable: return "unreachable";
    case upstream_failure::timeout: return "timeout";
    case upstream_failure::lost: return "lost";
    case upstream_failure::protocol: return "protocol";
    case upstream_failure::tls: return "tls";
    case upstream_failure::client_info_refused: return "client_info_refused";
  }
  return "?";
}

smtp::reply failure_reply(upstream_failure f) {
  switch (f) {
    case upstream_failure::unreachable:
    case upstream_failure::timeout:
    case upstream_failure::lost: return {451, "4.4.1", "Upstream server unavailable, try again later"};
    case upstream_failure::protocol:
    case upstream_failure::client_info_refused: return {451, "4.3.0", "Upstream server error, try again later"};
    case upstream_failure::tls: return {451, "4.7.5", "Upstream server TLS failure, try again later"};
  }
  return {451, "4.3.0", "Upstream server error, try again later"};
}

namespace {

// The longest reply line we read at all. RFC 5321 §4.5.3.1.5 says 512 octets;
// longer ones up to this are taken and cut (smtp::sanitized_reply_text),
// beyond it the upstream is answering nonsense.
constexpr std::size_t max_reply_read = 4096;
constexpr std::size_t max_reply_lines = 100;

// A RCPT this soon after the last reply goes without a look at the socket
// for an upstream gone meanwhile (after_wait): no command timeout is so short.
constexpr auto quick_next_command = std::chrono::milliseconds(100);

// A reply's time runs from the start of its wait, however many lines and
// reads it comes in (RFC 5321 §4.5.3.2: the timeouts are per reply): a reply
// dripped line by line took up to max_reply_lines timeouts, 100 minutes of
// `timeout` and 1,000 of data_done_timeout, past the client's own wait for
// the final dot's reply, which then sent the message again.
class reply_deadline {
 public:
  explicit reply_deadline(line_stream::duration timeout) : end_(std::chrono::steady_clock::now() + timeout) {}
  // What is left for the next read (at least a moment: a line already buffered is still taken).
  line_stream::duration left() const {
    return std::max<line_stream::duration>(end_ - std::chrono::steady_clock::now(), std::chrono::milliseconds(1));
  }

 private:
  std::chrono::steady_clock::time_point end_;
};

// A kept connection carries the upstream's state of it from one client's
// session to the next. Postfix's smtpd counts, per connection, the errors
// (4xx/5xx replies) and the "junk" commands (RSET, NOOP, HELO/EHLO, XCLIENT,
// XFORWARD: each kept connection's reuse costs a RSET), forgets both only
// when a message is delivered (XCLIENT forgets neither: tried on Postfix
// 3.7), and past its limits (smtpd_soft_error_limit 10,
// smtpd_junk_command_limit 100, 1 under stress) delays each reply by
// smtpd_error_sleep_time, then says 421: a legitimate client would pay for
// the refusals earned by the spammer before it. So a connection goes back to
// the pool only with no refusal since its last delivery (or its opening),
// with fewer junk commands than this since then, and when it has served
// fewer sessions than that (whatever else an upstream keeps per connection).
constexpr std::size_t max_junk_commands_kept = 50;  // half of Postfix's smtpd_junk_command_limit
constexpr std::size_t max_sessions_per_connection = 100;

using smtp::reply_fit;
using smtp::reply_to;

// What one command got back.
struct answer {
  smtp::reply reply;                        // the upstream's, or failure_reply(*failed)
  std::optional<upstream_failure> failed;   // set: no usable reply; the connection is closed
  reply_fit fit = reply_fit::out_of_place;  // with !failed: success or refusal
  bool ok() const { return !failed && fit == reply_fit::success; }
};

// A connection set-up (or identification) that did not succeed: why, and the
// upstream's own reply when it is worth passing on (a 421 or 4xx greeting).
struct setup_failure {
  upstream_failure kind;
  std::optional<smtp::reply> upstream_reply = std::nullopt;
  smtp::reply client_reply() const { return upstream_reply ? *upstream_reply : failure_reply(kind); }
};
using setup_result = std::optional<setup_failure>;  // nullopt: ready

class smtp_upstream final : public upstream {
 public:
  smtp_upstream(const config& cfg, const session_log& log, const connection_state& client, asio::any_io_executor io,
                std::shared_ptr<tls_client_context> tls, std::shared_ptr<upstream_pool> pool,
                std::shared_ptr<dns::resolver> resolver)
      : cfg_(cfg.upstream), log_(log), client_(client), io_(std::move(io)), tls_(std::move(tls)), pool_(std::move(pool)),
        resolver_(std::move(resolver)) {}

  awaitable<smtp::reply> mail(const smtp::address& sender, const mail_options& options) override {
    // A kept connection the upstream closed while idle (its own timeout) is
    // replaced (the one look at the socket before MAIL; a pooled one had its
    // look when taken); and if a kept or pooled one dies at this very MAIL,
    // or a pooled one refuses the RSET that goes with it, we try once more on
    // a fresh one: nothing of the transaction has reached the upstream yet
    // (or its MAIL dies with the connection we close), and the client must
    // not pay for a stale connection.
    if (stream_ && stream_->peer_gone()) {
      log_.info("upstream: idle connection closed by the upstream; reconnecting");
      close();
    }
    for (int attempt = 0;; ++attempt) {
      const bool fresh = attempt > 0;
      const bool had = stream_ != nullptr;
      auto r = co_await mail_once(sender, options, fresh);
      if ((had || reused_) && !stream_ && !fresh) continue;
      co_return r;
    }
  }

  awaitable<smtp::reply> mail_once(const smtp::address& sender, const mail_options& options, bool fresh) {
    reused_ = false;
    failure_counted_ = false;
    if (!stream_ && !fresh) adopt_pooled();
    // A transaction the upstream still holds (it refused DATA: RFC 5321 leaves
    // MAIL and RCPT in force) is ended first: a MAIL now would be a nested
    // one, which Postfix answers 503 for good, as it does XCLIENT and XFORWARD
    // inside a transaction (identify() below relies on none being open).
    if (stream_ && in_transaction_) co_await reset();
    if (!stream_) {
      const auto connecting = std::chrono::steady_clock::now();
      auto failure = co_await connect();
      if (failure) co_return setup_failed(*failure);
      // Connection, greeting, EHLO and STARTTLS.
      metrics::observe_since(metrics::family::upstream_duration_seconds, {"CONNECT"}, connecting);
    }
    auto identified = co_await identify();
    if (identified) co_return setup_failed(*identified);
    std::string cmd = "MAIL FROM:<" + sender.str() + ">";
    if (options.size && caps_.count("SIZE")) cmd += " SIZE=" + std::to_string(*options.size);
    if (options.body_8bit) {
      // RFC 6152 §3: we may not push 8-bit data to a server that has not asked for it.
      if (!caps_.count("8BITMIME")) co_return smtp::reply{554, "5.6.3", "Upstream server cannot accept 8-bit content"};
      cmd += " BODY=8BITMIME";
    }
    if (options.smtputf8) {
      if (!caps_.count("SMTPUTF8")) co_return smtp::reply{553, "5.6.7", "Upstream server does not support SMTPUTF8"};
      cmd += " SMTPUTF8";
    }
    auto a = co_await command(cmd, reply_to::mail);  // cmd is a named local: see asio.hpp
    in_transaction_ = a.ok();
    co_return std::move(a.reply);
  }

  awaitable<smtp::reply> rcpt(const smtp::address& recipient) override {
    if (!stream_) co_return failure_reply(upstream_failure::lost);
    const std::string line = "RCPT TO:<" + recipient.str() + ">";
    auto a = co_await command(line, reply_to::rcpt);
    co_return std::move(a.reply);
  }

  awaitable<smtp::reply> data(std::string_view header, const message_store& message) override {
    if (!stream_) co_return failure_reply(upstream_failure::lost);
    // RFC 6152 §3, for 8-bit content the client never declared (BODY=8BITMIME
    // is refused at MAIL): looked for only when the upstream lacks 8BITMIME.
    if (!caps_.count("8BITMIME") && !all_ascii(message))
      co_return smtp::reply{554, "5.6.3", "Upstream server cannot accept 8-bit content"};
    const std::string line = "DATA";
    auto go_ahead = co_await command(line, reply_to::data);
    // Its refusal (the transaction stays open upstream: the next MAIL resets it), or a failure (a 250 is one).
    if (!go_ahead.ok()) co_return std::move(go_ahead.reply);
    // One gather write per slice of at most 64 KiB of the store's chunks (a
    // message held in memory is one chunk): our header first, then the
    // slice's dot-stuffed pieces, views of the message, not copies. Each
    // stuffed line is two pieces (32 bytes of views, an iovec of the write):
    // a slice with more than a write's batch of them is copied into one
    // buffer instead, or a message of "." lines would cost 20 times its size.
    message_store::reader in(message);
    smtp::dot_stuffer stuffer;
    std::vector<std::string_view> pieces;
    std::vector<asio::const_buffer> buffers;
    std::string packed;  // a slice with many stuffed lines, copied into one buffer
    bool first = true;
    owed_ = true;  // from the first byte of the message on, its final reply is owed
    const auto sending = std::chrono::steady_clock::now();
    constexpr std::size_t max_slice = 64 * 1024;
    constexpr std::size_t max_pieces = 64;  // line_stream::write's batch of iovecs
    std::string_view chunk;
    for (;;) {
      if (chunk.empty()) chunk = in.next();
      if (in.failed()) {
        // Never the end-of-data dot after a part of the message: closing the
        // connection makes the upstream drop what it got.
        log_.error("upstream: cannot read the message to send it: {}", in.error());
        close();
        co_return smtp::reply{451, "4.3.0", "Local error reading the message, try again later"};
      }
      pieces.clear();
      buffers.clear();
      if (first) buffers.emplace_back(header.data(), header.size());
      const auto slice = chunk.substr(0, max_slice);
      chunk.remove_prefix(slice.size());
      stuffer.stuff(slice, pieces);
      const bool last = chunk.empty() && in.at_end();
      // Its reply comes after the dot (RFC 5321 §4.1.1.4): anything the
      // upstream said while a message of several slices went out would be
      // read as the final reply ("250 early", then a refusal after the dot).
      // One look before the last slice; the dot then never goes, and closing
      // the connection makes the upstream drop what it got.
      if (last && !first) {
        const auto said = stream_->has_unread_input() ? line_stream::waiting::data : stream_->peek_socket();
        if (said == line_stream::waiting::end)
          co_return fail(upstream_failure::lost, "connection lost while sending the message").reply;
        if (said == line_stream::waiting::data)
          co_return fail(upstream_failure::protocol,
                         "spoke before the end of the message (out of step); dropping the connection")
              .reply;
      }
      if (last) stuffer.finish(pieces);  // in the same write as the last chunk
      if (pieces.size() > max_pieces) {
        packed.clear();
        for (auto p : pieces) packed.append(p);
        buffers.emplace_back(packed.data(), packed.size());
      } else {
        for (auto p : pieces) buffers.emplace_back(p.data(), p.size());
      }
      const bool written = co_await stream_->write(buffers, cfg_.timeout);
      if (!written) co_return write_failed("sending the message").reply;
      first = false;
      if (last) break;
    }
    auto final_reply = co_await read_reply(reply_to::end_of_data);
    if (final_reply.ok()) {
      refused_ = false;  // a delivery: Postfix forgives the connection's errors and junk commands
      junk_ = 0;
    }
    // From the first byte of the message to the final reply.
    if (!final_reply.failed) metrics::observe_since(metrics::family::upstream_duration_seconds, {"END-OF-DATA"}, sending);
    in_transaction_ = false;
    co_return std::move(final_reply.reply);
  }

  // Nothing is owed (the last RCPT's reply was read) and nothing should
  // come; a look at the socket (one syscall, as before DATA anyway) says
  // whether the upstream closed the idle transaction: Postfix writes "421
  // 4.4.2 ... Error: timeout exceeded" and closes. Then nothing of the
  // message has gone, and the transaction can be given again on a new
  // connection (upstream_relay::data). Anything else it said unasked is out
  // of step (the stray 354 that would pass for DATA's go-ahead).
  awaitable<wait_outcome> after_wait(next_command next) override {
    if (!stream_ || owed_ || !in_transaction_) co_return wait_outcome::open;
    if (next == next_command::rcpt && std::chrono::steady_clock::now() - last_reply_ < quick_next_command)
      co_return wait_outcome::open;
    if (!stream_->peer_gone()) co_return wait_outcome::open;
    smtp::reply_parser parser;
    const reply_deadline deadline(cfg_.timeout);
    for (std::size_t n = 0; n < max_reply_lines; ++n) {
      auto line = co_await stream_->read_line(max_reply_read, deadline.left());
      if (line.st == line_stream::status::eof) {  // (after nothing, or a part of a 421)
        log_.warn("upstream: closed the connection while the transaction waited for the client");
        close();
        co_return wait_outcome::closed;
      }
      if (line.st != line_stream::status::ok || !line.text.starts_with("421")) break;
      const auto state = parser.feed_line(line.text);
      if (state == smtp::reply_parser::state::need_more) continue;
      if (state == smtp::reply_parser::state::malformed) break;
      const auto r = parser.take();
      log_.warn("upstream: closing while the transaction waited for the client: {}", printable(r.summary()));
      close();
      co_return wait_outcome::closed;
    }
    fail(upstream_failure::protocol, "unsolicited data from the upstream before DATA; dropping the connection");
    co_return wait_outcome::out_of_step;
  }

  awaitable<void> reset() override {
    if (!stream_ || !in_transaction_) co_return;
    const std::string line = "RSET";
    auto a = co_await command(line, reply_to::rset);
    in_transaction_ = false;
    if (!a.ok()) close();
  }

  bool connected() const override { return stream_ != nullptr; }

  awaitable<void> quit() override {
    if (!stream_) co_return;
    co_await say_goodbye(*stream_);
    close();
  }

  // Back to the pool only in step (no reply owed, nothing unread), and
  // with nothing the upstream holds against the connection that another
  // client would pay for (fit_for_another_client). The session makes sure
  // no transaction of its client was left open (upstream_relay::finish).
  // The RSET that readies it for another client goes with that client's
  // first command (command()): given back here, the connection costs no
  // round trip at the end of a session.
  awaitable<void> release() override {
    const bool poolable = stream_ && pool_ && !owed_ && pool_->keeps(cfg_);
    if (poolable && in_transaction_) co_await reset();  // (its DATA refused; a failed RSET closes it)
    if (poolable && stream_ && !in_transaction_ && fit_for_another_client()) {
      pooled_connection c{std::move(stream_), std::move(caps_), std::move(xclient_sent_)};
      c.sessions = sessions_;
      c.junk_commands = junk_;
      auto refused = pool_->give_back(cfg_, std::move(c));
      if (!refused) {
        log_.debug("upstream: connection kept for the next session");
        close();
        co_return;
      }
      stream_ = std::move(refused->stream);  // the pool is full (or shutting down): QUIT it
    }
    co_await quit();
  }

 private:
  // See max_junk_commands_kept: what the upstream counts against this connection is nothing another client should pay for.
  bool fit_for_another_client() const {
    // Postfix no longer offers XCLIENT once it was told of a client outside
    // smtpd_authorized_xclient_hosts (XCLIENT_README: "usually no longer
    // authorized"): the next client could not be named on this connection.
    if (sends_xclient() && (!caps_.count("XCLIENT") || extensions_unknown_)) {
      log_.debug("upstream: connection not kept: {}", extensions_unknown_
                                                          ? "after the client's HELO, whether it offers XCLIENT is unknown"
                                                          : "its last EHLO no longer offers XCLIENT");
      return false;
    }
    if (refused_) {
      log_.debug("upstream: connection not kept: the upstream refused a command on it since its last delivery "
                 "(it counts that against the connection)");
      return false;
    }
    if (junk_ >= max_junk_commands_kept) {
      log_.debug("upstream: connection not kept: {} commands outside a transaction (RSET, EHLO, ...) since its last "
                 "delivery",
                 junk_);
      return false;
    }
    if (sessions_ >= max_sessions_per_connection) {
      log_.debug("upstream: connection not kept: it served {} sessions", sessions_);
      return false;
    }
    return true;
  }

  // The config's choices (one place to read them).
  bool starttls_never() const { return cfg_.starttls == starttls_mode::never; }
  bool starttls_opportunistic() const { return cfg_.starttls == starttls_mode::opportunistic; }
  bool starttls_required() const { return cfg_.starttls == starttls_mode::required; }
  // TLS or no mail: "required", and "opportunistic" with tls_verify (Postfix's
  // "verify" level is mandatory TLS: a certificate that fails the check, or an
  // upstream that stops offering STARTTLS, must not get the mail in clear).
  bool tls_mandatory() const { return starttls_required() || (starttls_opportunistic() && cfg_.tls_verify); }
  bool sends_xclient() const { return cfg_.client_info == client_info_mode::xclient; }
  bool sends_xforward() const { return cfg_.client_info == client_info_mode::xforward; }

  // Connects, reads the greeting, EHLOs, and secures the connection as
  // upstream.starttls says. An opportunistic STARTTLS that fails is retried
  // once in clear on a new connection (as Postfix's "may" level), unless
  // tls_verify makes TLS mandatory.
  awaitable<setup_result> connect() {
    auto failure = co_await connect_once(true);
    if (failure && failure->kind == upstream_failure::tls && starttls_opportunistic() && !tls_mandatory() &&
        cfg_.scheme == upstream_config::kind::smtp) {
      log_.warn("upstream: retrying without TLS (upstream.starttls = \"opportunistic\")");
      auto plain = co_await connect_once(false);
      co_return plain;
    }
    co_return failure;
  }

  awaitable<setup_result> connect_once(bool try_starttls) {
    auto endpoints = co_await resolve();
    if (!endpoints) co_return setup_failure{upstream_failure::unreachable};
    stream_ = std::make_unique<line_stream>(tcp::socket(io_));
    sessions_ = 1;  // a new connection: the upstream holds nothing against it yet
    junk_ = 0;
    refused_ = false;
    const auto ec = co_await stream_->connect(*endpoints, cfg_.timeout);
    if (ec) {
      log_.warn("upstream: cannot connect to {}:{}: {}", cfg_.host, cfg_.port, ec.message());
      close();
      co_return setup_failure{upstream_failure::unreachable};
    }
    if (cfg_.scheme == upstream_config::kind::smtps) {  // RFC 8314: TLS from the first byte
      const bool secured = co_await secure();
      if (!secured) co_return setup_failure{upstream_failure::tls};
    }
    auto ready = co_await greet_and_ehlo();
    if (ready) co_return ready;
    if (cfg_.scheme != upstream_config::kind::smtp || starttls_never()) co_return std::nullopt;
    if (!caps_.count("STARTTLS") || !try_starttls) {
      if (tls_mandatory()) {
        log_.error("upstream: STARTTLS {} but {}", starttls_required() ? "required" : "with tls_verify",
                   try_starttls ? "not offered" : "it failed");
        close();
        co_return setup_failure{upstream_failure::tls};
      }
      co_return std::nullopt;  // opportunistic: in clear
    }
    const std::string line = "STARTTLS";
    auto go_ahead = co_await command(line, reply_to::starttls);
    // Anything the upstream sent after its 220 came in clear: a response
    // injection (the client side of CVE-2011-0411). read_reply() dropped the
    // connection for it (a protocol failure, never retried in clear).
    if (go_ahead.failed == upstream_failure::protocol) co_return setup_failure{upstream_failure::protocol};
    if (!go_ahead.ok()) {
      if (!go_ahead.failed) log_.warn("upstream: STARTTLS refused: {}", printable(go_ahead.reply.summary()));
      close();
      co_return setup_failure{upstream_failure::tls};
    }
    const bool secured = co_await secure();
    if (!secured) co_return setup_failure{upstream_failure::tls};
    // RFC 3207 §4.2: forget what the upstream said before TLS; EHLO again.
    auto again = co_await ehlo(cfg_.helo);
    co_return again;
  }

  awaitable<bool> secure() {
    const bool ok = co_await stream_->start_tls(tls_->context(), ssl::stream_base::client, cfg_.tls_name, cfg_.timeout);
    if (!ok) {
      log_.warn("upstream: TLS handshake with {} failed: {}", cfg_.tls_name, stream_->last_error());
      close();
      co_return false;
    }
    const auto info = stream_->tls_info();
    log_.debug("upstream: TLS {} with {}", info.version, info.cipher);
    co_return true;
  }

  // Before each MAIL: tell the upstream who the client is. XFORWARD holds for
  // one transaction, so it goes every time. XCLIENT holds for the connection,
  // so it goes whenever what it would say differs from what it last said on
  // this connection: the first time, and after an AUTH, a STARTTLS that
  // cleared the login, or a new HELO. Otherwise the upstream would decide
  // relaying on a stale LOGIN=.
  awaitable<setup_result> identify() {
    if (!sends_xclient() && !sends_xforward()) co_return std::nullopt;
    const std::string verb = sends_xclient() ? "XCLIENT" : "XFORWARD";
    const auto offered = offered_attributes(verb);  // (empty: the upstream does not offer the verb)
    if (offered.count("NAME")) co_await find_client_hostname();
    const std::string attributes = client_attributes(verb, offered);
    if (attributes.empty()) {
      log_.error("upstream: upstream.client_info = \"{}\" but the upstream does not offer {} to us",
                 sends_xclient() ? "xclient" : "xforward", verb);
      close();
      co_return setup_failure{upstream_failure::client_info_refused};
    }
    if (sends_xforward()) {
      auto sent = co_await send_client_info(verb, attributes, reply_to::xforward);
      co_return sent;
    }
    // The EHLO after it speaks for the client too (send_xclient): an upstream whose XCLIENT
    // takes no HELO hears the client's name only there, so the name is part of what was said.
    const std::string identity = attributes + "\n" + client_ehlo_name();
    if (identity == xclient_sent_) co_return std::nullopt;
    auto sent = co_await send_xclient(attributes, identity);
    co_return sent;
  }

  // The attributes the upstream's `verb` (XCLIENT, XFORWARD) takes, upper case: its EHLO keyword's parameters.
  std::set<std::string> offered_attributes(const std::string& verb) const {
    std::set<std::string> wanted;
    if (const auto offered = caps_.find(verb); offered != caps_.end()) {
      std::istringstream words(smtp::to_upper(offered->second));
      for (std::string w; words >> w;) wanted.insert(w);
    }
    return wanted;
  }

  // NAME for XCLIENT and XFORWARD: the client's host name as Postfix's smtpd
  // finds it, a PTR name of its address whose own address records include
  // that address (forward-confirmed: what reject_unknown_client_hostname
  // checks); "[UNAVAILABLE]" without one, "[TEMPUNAVAIL]" when a lookup
  // failed for now (XCLIENT_README). Looked up through [dns], once a session
  // for its client's address. (Always "[UNAVAILABLE]" made Postfix refuse
  // every client under reject_unknown_client_hostname.)
  awaitable<void> find_client_hostname() {
    const auto address = unmapped(client_.client.address());
    if (hostname_of_ == address && !hostname_.empty()) co_return;
    hostname_of_ = address;
    hostname_ = "[UNAVAILABLE]";
    if (!resolver_) co_return;
    const auto temporary = [](const dns::answer& a) {
      return a.what == dns::answer::status::timeout || a.what == dns::answer::status::failure;
    };
    const auto names = co_await resolver_->async_lookup(dns::reverse_name(address), dns::rr_type::ptr, asio::use_awaitable);
    bool trouble = temporary(names);
    const auto family = address.is_v4() ? dns::rr_type::a : dns::rr_type::aaaa;
    constexpr std::size_t max_names = 10;  // (as for SPF's ptr: RFC 7208 §4.6.4)
    for (std::size_t i = 0; names.ok() && i < std::min(names.records.size(), max_names); ++i) {
      std::string name = names.records[i].value;
      if (!name.empty() && name.back() == '.') name.pop_back();
      // Postfix refuses XCLIENT with a NAME that is no host name (501 Bad NAME syntax: every
      // MAIL of the client would fail), and its smtpd takes such a name for "unknown" itself.
      if (!smtp::is_valid_hostname(name)) continue;
      const auto addresses = co_await resolver_->async_lookup(name, family, asio::use_awaitable);
      trouble = trouble || temporary(addresses);
      for (const auto& r : addresses.records) {
        boost::system::error_code bad;
        if (asio::ip::make_address(r.value, bad) == address && !bad) {
          hostname_ = name;
          co_return;
        }
      }
    }
    if (trouble) hostname_ = "[TEMPUNAVAIL]";
  }

  // XCLIENT / XFORWARD attributes the upstream asked for, xtext-encoded
  // (RFC 3461 §4): NAME ADDR PORT PROTO HELO LOGIN. Postfix refuses the
  // whole command (501) for a value over 255 octets as sent, which a HELO
  // name or a login full of characters xtext encodes can be: such a HELO is
  // left out (the EHLO after XCLIENT names the client), such a LOGIN goes
  // as [UNAVAILABLE] (left out, the last client's on this connection would
  // stand; the upstream then sees no login: less trust, never more).
  // `wanted`: offered_attributes(verb).
  std::string client_attributes(const std::string& verb, const std::set<std::string>& wanted) const {
    if (!caps_.count(verb)) return {};
    constexpr std::size_t max_value = 255;
    const bool v6 = unmapped(client_.client.address()).is_v6();
    std::string out;
    auto add = [&](const char* name, const std::string& value, const char* if_too_long = nullptr) {
      if (!wanted.count(name)) return;
      auto encoded = xtext(value);
      if (encoded.size() > max_value) {
        if (!if_too_long) return;
        encoded = if_too_long;
      }
      out += std::string(" ") + name + "=" + encoded;
    };
    // (find_client_hostname; XFORWARD's NAME takes no [TEMPUNAVAIL]: Postfix refuses the command)
    const bool unknown = hostname_.empty() || (verb == "XFORWARD" && hostname_ == "[TEMPUNAVAIL]");
    add("NAME", unknown ? "[UNAVAILABLE]" : hostname_);
    add("ADDR", v6 ? "IPV6:" + client_.client_ip : client_.client_ip);  // formatted once, by set_client
    add("PORT", std::to_string(client_.client.port()));
    add("PROTO", client_.esmtp ? "ESMTP" : "SMTP");
    add("HELO", client_.helo.empty() ? "[UNAVAILABLE]" : client_.helo);
    if (verb == "XCLIENT") add("LOGIN", client_.auth_user.value_or("[UNAVAILABLE]"), "[UNAVAILABLE]");
    return out;
  }

  // The commands that carry `attributes` (" NAME=... ADDR=...", xtext: no
  // space within a value): one when they fit SMTP's 512 octets, else as few
  // as keep each line within them, as XCLIENT_README and XFORWARD_README ask
  // ("send the information in multiple commands"): a HELO name and a login of
  // 255 octets each fill more than one line. Then NAME and ADDR go together
  // in the last: Postfix holds each XCLIENT after one that changed them to
  // the new client's rights (smtpd_authorized_xclient_hosts), and refused
  // the rest for a client outside them (every MAIL was 451).
  static std::vector<std::string> command_lines(const std::string& verb, std::string_view attributes) {
    constexpr std::size_t max_line = 510;  // 512 with the CRLF
    if (verb.size() + attributes.size() <= max_line) return {verb + std::string(attributes)};
    std::vector<std::string> units;  // each attribute with its space; NAME and ADDR one unit, last
    std::string identity;
    while (!attributes.empty()) {
      const auto end = std::min(attributes.find(' ', 1), attributes.size());
      const auto attribute = attributes.substr(0, end);  // (at most " LOGIN=" and 255 octets)
      if (attribute.starts_with(" NAME=") || attribute.starts_with(" ADDR="))
        identity += attribute;
      else
        units.emplace_back(attribute);
      attributes.remove_prefix(end);
    }
    if (!identity.empty()) units.push_back(identity);
    std::vector<std::string> lines{verb};
    for (const auto& unit : units) {
      if (lines.back().size() + unit.size() > max_line) lines.push_back(verb);
      lines.back() += unit;
    }
    return lines;
  }

  // The name our EHLO after XCLIENT gives: the client's.
  std::string client_ehlo_name() const { return client_.helo.empty() ? cfg_.helo : client_.helo; }

  static std::string xtext(const std::string& s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
      if (c >= 33 && c <= 126 && c != '+' && c != '=') {
        out += static_cast<char>(c);
      } else {
        out += '+';
        out += hex[c >> 4];
        out += hex[c & 15];
      }
    }
    return out;
  }

  // XCLIENT or XFORWARD with `attributes`, in as many commands as they take;
  // a refusal of any fails closed.
  awaitable<setup_result> send_client_info(const std::string& verb, const std::string& attributes, reply_to what) {
    for (const auto& line : command_lines(verb, attributes)) {
      auto answered = co_await command(line, what);
      if (answered.failed) co_return setup_failure{*answered.failed};
      if (!answered.ok()) {
        log_.error("upstream: {} refused: {}", verb, printable(answered.reply.summary()));
        close();
        co_return setup_failure{upstream_failure::client_info_refused};
      }
    }
    co_return std::nullopt;
  }

  // Postfix XCLIENT: the upstream then treats us as the client itself and
  // greets again; we EHLO again (XCLIENT_README). Refused, we fail closed:
  // relaying as 127.0.0.1 could make the upstream trust every client.
  awaitable<setup_result> send_xclient(const std::string& attributes, const std::string& identity) {
    if (auto failed = co_await send_client_info("XCLIENT", attributes, reply_to::xclient)) co_return failed;
    xclient_sent_ = identity;
    // Our EHLO now speaks for the client: its name, or XCLIENT's HELO would be overwritten.
    auto again = co_await ehlo(client_ehlo_name(), true);
    co_return again;
  }

  awaitable<setup_result> greet_and_ehlo() {
    auto greeting = co_await read_reply(reply_to::greeting);
    if (greeting.failed) co_return setup_failure{*greeting.failed};
    if (!greeting.ok()) {
      if (stream_) log_.warn("upstream: greeting refused: {}", printable(greeting.reply.summary()));
      close();
      // A 421 or 4xx greeting is the upstream's own word for "later": the client hears it.
      if (greeting.reply.transient()) co_return setup_failure{upstream_failure::unreachable, greeting.reply};
      co_return setup_failure{upstream_failure::unreachable};
    }
    auto capabilities = co_await ehlo(cfg_.helo);
    co_return capabilities;
  }

  // EHLO (HELO when refused) and the upstream's extensions. `for_client`:
  // the one after XCLIENT, which speaks for the client: HELO when the client
  // said HELO (else the upstream records ESMTP over XCLIENT's PROTO=SMTP),
  // HELO after EHLO only when EHLO is not known (500, 502: RFC 5321 §3.2),
  // and a refusal is the upstream's verdict on the client's name: the client
  // hears it as it is (a 5xx stays one), and it is no upstream failure.
  awaitable<setup_result> ehlo(const std::string& name, bool for_client = false) {
    const bool extended = !for_client || client_.esmtp;
    const std::string line = (extended ? "EHLO " : "HELO ") + name;
    auto ehlo = co_await command(line, extended ? reply_to::ehlo : reply_to::helo);
    const bool unknown_command = ehlo.reply.code == 500 || ehlo.reply.code == 502;
    bool listed = extended;  // an EHLO's reply lists the extensions, a HELO's none
    if (extended && !ehlo.failed && ehlo.reply.permanent() && stream_ && (!for_client || unknown_command)) {
      const std::string helo_line = "HELO " + name;
      auto helo = co_await command(helo_line, reply_to::helo);  // RFC 5321 §3.2
      ehlo = std::move(helo);
      listed = false;
    }
    if (ehlo.failed) co_return setup_failure{*ehlo.failed};
    if (!ehlo.ok()) {
      if (stream_) log_.warn("upstream: {} refused: {}", for_client ? "the client's HELO name" : "EHLO",
                             printable(ehlo.reply.summary()));
      close();
      if (for_client) {
        failure_counted_ = true;  // (not counted: setup_failed)
        co_return setup_failure{upstream_failure::client_info_refused, ehlo.reply};
      }
      co_return setup_failure{upstream_failure::unreachable};
    }
    if (for_client && !listed) {
      // What the upstream offered before XCLIENT stands for this session (its
      // next MAIL finds XCLIENT there, said already); whether it still offers
      // XCLIENT is unknown, so the connection is not kept for another client.
      extensions_unknown_ = true;
      co_return std::nullopt;
    }
    extensions_unknown_ = false;
    caps_.clear();
    for (std::size_t i = 1; i < ehlo.reply.lines.size(); ++i) {
      const auto& l = ehlo.reply.lines[i];
      const auto sp = l.find(' ');
      caps_[smtp::to_upper(std::string_view(l).substr(0, sp))] = sp == std::string::npos ? "" : l.substr(sp + 1);
    }
    log_.debug("upstream: connected to {}:{}", cfg_.host, cfg_.port);
    co_return std::nullopt;
  }

  // A numeric address needs no resolver (whose thread costs more than the rest of a connect).
  awaitable<std::optional<tcp::resolver::results_type>> resolve() {
    boost::system::error_code ec;
    const auto numeric = asio::ip::make_address(cfg_.host, ec);
    const auto port = static_cast<unsigned short>(std::stoul(cfg_.port));
    if (!ec) co_return tcp::resolver::results_type::create(tcp::endpoint(numeric, port), cfg_.host, cfg_.port);
    if (resolver_) {
      auto found = co_await resolve_with_ours(port);
      co_return found;
    }
    asio::steady_timer timer(io_);
    timer.expires_after(cfg_.timeout);
    tcp::resolver resolver(io_);
    auto resolved = co_await (resolver.async_resolve(cfg_.host, cfg_.port, asio::redirect_error(asio::use_awaitable, ec)) ||
                              timer.async_wait(asio::use_awaitable));
    if (resolved.index() != 0 || ec) {
      log_.warn("upstream: cannot resolve {}: {}", cfg_.host, ec ? ec.message() : "timed out");
      co_return std::nullopt;
    }
    co_return std::get<0>(resolved);
  }

  // The daemon's resolver ([dns], its cache and timeout): the AAAA then the
  // A records, tried in that order (as getaddrinfo orders them on a host with both).
  awaitable<std::optional<tcp::resolver::results_type>> resolve_with_ours(unsigned short port) {
    std::vector<tcp::endpoint> endpoints;
    std::string trouble;
    for (const auto type : {dns::rr_type::aaaa, dns::rr_type::a}) {
      const auto answer = co_await resolver_->async_lookup(cfg_.host, type, asio::use_awaitable);
      if (answer.ok()) {
        for (const auto& r : answer.records) {
          boost::system::error_code ec;
          const auto address = asio::ip::make_address(r.value, ec);
          if (!ec) endpoints.emplace_back(address, port);
        }
      } else if (answer.what != dns::answer::status::nxdomain) {
        trouble = std::string(dns::to_string(answer.what)) + (answer.error.empty() ? "" : ": " + answer.error);
      }
    }
    if (endpoints.empty()) {
      log_.warn("upstream: cannot resolve {}: {}", cfg_.host, trouble.empty() ? "no such name, or no address" : trouble);
      co_return std::nullopt;
    }
    co_return tcp::resolver::results_type::create(endpoints.begin(), endpoints.end(), cfg_.host, cfg_.port);
  }

  // Takes a kept connection from the pool, if one is there.
  void adopt_pooled() {
    if (!pool_) return;
    std::size_t dropped = 0;
    auto c = pool_->take(cfg_, io_, &dropped);
    if (dropped)
      log_.info("upstream pool: {} kept connection(s) closed by the upstream while idle (or it spoke unasked); dropped",
                dropped);
    if (!c) return;
    stream_ = std::move(c->stream);
    caps_ = std::move(c->caps);
    xclient_sent_ = std::move(c->xclient_sent);
    sessions_ = c->sessions + 1;
    junk_ = c->junk_commands;
    refused_ = false;  // (a connection is kept only so)
    in_transaction_ = false;
    owed_ = false;
    reused_ = true;
    rset_due_ = true;
    log_.debug("upstream: reusing a kept connection");
  }

  awaitable<answer> command(const std::string& line, reply_to what) {
    if (unsolicited_input(what))
      co_return fail(upstream_failure::protocol, "unsolicited data from the upstream before " + std::string(name(what)) +
                                                     "; dropping the connection");
    // A pooled connection's first command has the RSET that readies it for
    // this client before it: in the same write when the upstream offers
    // PIPELINING (RFC 2920 lets RSET go anywhere in a group; the command
    // after it ends the group), else on its own first.
    bool with_rset = std::exchange(rset_due_, false);
    if (with_rset && !caps_.count("PIPELINING")) {
      const std::string rset = "RSET";
      auto a = co_await command(rset, reply_to::rset);
      if (!rset_took(a)) co_return a;
      with_rset = false;
    }
    const std::string wire = (with_rset ? "RSET\r\n" : "") + line + "\r\n";
    junk_ += (with_rset ? 1 : 0) + (junk_command(what) ? 1 : 0);
    owed_ = true;
    const auto sent = std::chrono::steady_clock::now();
    const bool written = co_await stream_->write(std::string_view(wire), cfg_.timeout);
    if (!written) co_return write_failed(std::string(name(what)));
    if (with_rset) {
      auto reset = co_await read_reply(reply_to::rset, true);
      if (!reset.failed) metrics::observe_since(metrics::family::upstream_duration_seconds, {"RSET"}, sent);
      if (!rset_took(reset)) co_return reset;  // the command after it went to a connection now closed
    }
    auto a = co_await read_reply(what);
    // The verb: "MAIL", "RCPT", "XCLIENT", ...
    if (!a.failed) metrics::observe_since(metrics::family::upstream_duration_seconds, {line.substr(0, line.find(' '))}, sent);
    co_return a;
  }

  // Postfix's junk commands (smtpd_junk_command_limit): those outside a transaction.
  static bool junk_command(reply_to what) {
    return what == reply_to::rset || what == reply_to::ehlo || what == reply_to::helo || what == reply_to::xclient ||
           what == reply_to::xforward;
  }

  // RSET got exactly 250: RFC 5321 §4.1.1.5 makes 250 the only answer to
  // RSET, so anything else (a refusal, a 421, no reply) means a kept
  // connection cannot be trusted with another client's mail. Such a one is
  // closed (and `a` says so): the caller's command is tried on a fresh
  // connection (mail()). Not an upstream failure (no count): the client is
  // served all the same.
  bool rset_took(answer& a) {
    if (a.ok() && a.reply.code == 250) return true;
    if (!a.failed) {
      log_.warn("upstream: RSET answered {}, not 250; dropping the kept connection", printable(a.reply.summary()));
      close();
      a = answer{failure_reply(upstream_failure::lost), upstream_failure::lost, reply_fit::out_of_place};
      failure_counted_ = true;
    }
    return false;
  }

  // The one reply the upstream owes us for `what`; with `more_owed`, the
  // first of a pipelined group (the next reply may already be buffered).
  awaitable<answer> read_reply(reply_to what, bool more_owed = false) {
    const std::string stage(name(what));
    const bool final_dot = what == reply_to::end_of_data;
    // RFC 5321 §4.5.3.2.6: the final dot's reply may take 10 minutes (content
    // filters run first); cut short, the client sends the message again.
    const reply_deadline deadline(final_dot ? cfg_.data_done_timeout : cfg_.timeout);
    smtp::reply_parser parser;
    std::string first;  // the final dot's: its reply's first line, or its start (taken_anyway)
    for (std::size_t n = 0; n < max_reply_lines; ++n) {
      if (final_dot && n == 0) {
        // Its start looked at before read_line takes the line: one over
        // max_reply_read comes back with no text at all.
        auto in = co_await stream_->read_some(deadline.left());  // what is buffered, else one read
        if (in.empty()) {
          if (stream_->last_status() == line_stream::status::timeout)
            co_return fail(upstream_failure::timeout, "timed out waiting for the reply to " + stage);
          co_return fail(upstream_failure::lost, "connection lost waiting for the reply to " + stage);
        }
        first = std::string(in.substr(0, std::min({in.size(), in.find('\n'), smtp::max_reply_line_octets})));
      }
      auto line = co_await stream_->read_line(max_reply_read, deadline.left());
      switch (line.st) {
        case line_stream::status::ok: break;
        case line_stream::status::timeout:
          if (auto taken = taken_anyway(what, first, "timed out waiting for the rest of the reply")) co_return *taken;
          co_return fail(upstream_failure::timeout, "timed out waiting for the reply to " + stage);
        case line_stream::status::too_long:
          if (auto taken = taken_anyway(what, first, "over-long reply line")) co_return *taken;
          co_return fail(upstream_failure::protocol, "over-long reply line to " + stage);
        default:
          if (auto taken = taken_anyway(what, first, "connection lost in the reply")) co_return *taken;
          co_return fail(upstream_failure::lost, "connection lost waiting for the reply to " + stage);
      }
      if (final_dot && n == 0) first = std::string(line.text);
      switch (parser.feed_line(line.text)) {
        case smtp::reply_parser::state::need_more: continue;
        case smtp::reply_parser::state::malformed:
          if (auto taken = taken_anyway(what, first, "malformed reply line " + printable(line.text))) co_return *taken;
          co_return fail(upstream_failure::protocol, "malformed reply to " + stage + ": " + printable(line.text));
        case smtp::reply_parser::state::complete: break;
      }
      last_reply_ = std::chrono::steady_clock::now();
      const bool codes_differed = parser.codes_differed();
      auto r = parser.take();
      if (codes_differed)
        log_.warn("upstream: the lines of its reply to {} give different codes (RFC 5321 §4.2.1); the last line's "
                  "is taken: {}",
                  stage, printable(r.summary()));
      if (r.code == 421) {
        // RFC 5321 §3.8: the upstream is closing; so do we, cleanly.
        log_.warn("upstream: closing at {}: {}", stage, printable(r.summary()));
        close();
        co_return answer{std::move(r), std::nullopt, reply_fit::refusal};
      }
      const auto fits = smtp::fit(what, r.code);
      if (fits == reply_fit::refusal) refused_ = true;
      if (fits == reply_fit::out_of_place)
        co_return fail(upstream_failure::protocol,
                       "a " + std::to_string(r.code) + " reply does not answer " + stage + " (RFC 5321 §4.3.2): " +
                           printable(r.summary()) + "; dropping the connection");
      if (more_owed) co_return answer{std::move(r), std::nullopt, fits};
      // Lock step: nothing more is owed until our next command.
      if (stream_->has_unread_input()) {
        if (final_dot && fits == reply_fit::success) {
          // The upstream took the message (RFC 5321 §6.1: its 250 takes on
          // responsibility for it): a 451 now would make the client send it
          // twice. The client hears the 250; the connection is not reused.
          log_.warn("upstream: unsolicited data after the 250 to end of data (the message is queued upstream); "
                    "dropping the connection");
          close();
          co_return answer{std::move(r), std::nullopt, fits};
        }
        if (fits == reply_fit::refusal) {
          // RFC 5321 §3.8 lets a server say 421 at any time: Postfix at its
          // smtpd_hard_error_limit writes its refusal and "421 ... Error: too
          // many errors" in one go. The client hears the refusal (a 5xx
          // stays one), and the connection is closed.
          auto closing = co_await closing_reply_behind();
          if (closing) {
            log_.warn("upstream: {} to {}, then closing: {}", printable(r.summary()), stage,
                      printable(closing->summary()));
            close();
            co_return answer{std::move(r), std::nullopt, fits};
          }
        }
        co_return fail(upstream_failure::protocol, "unsolicited data after the reply to " + stage +
                                                       " (out of step, or a response injection); dropping the connection");
      }
      owed_ = false;
      metrics::get(metrics::family::upstream_last_reply_seconds)
          .set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
      co_return answer{std::move(r), std::nullopt, fits};
    }
    if (auto taken = taken_anyway(what, first, "more than " + std::to_string(max_reply_lines) + " reply lines"))
      co_return *taken;
    co_return fail(upstream_failure::protocol, "too many reply lines to " + stage);
  }

  // What is unread behind a refusal, when it is exactly one whole 421 reply
  // (one line or more, nothing after it): the upstream closing. Anything
  // else there (another reply, a part of one) keeps the lock step's guard:
  // nullopt, a protocol failure, never a reply taken out of its place. A
  // 421 partly arrived is waited for as any reply is. (Under TLS, records
  // TLS still holds behind it are not looked at: the connection closes.)
  awaitable<std::optional<smtp::reply>> closing_reply_behind() {
    smtp::reply_parser parser;
    const reply_deadline deadline(cfg_.timeout);
    for (std::size_t n = 0; n < max_reply_lines; ++n) {
      auto line = co_await stream_->read_line(max_reply_read, deadline.left());
      if (line.st != line_stream::status::ok || !line.text.starts_with("421")) co_return std::nullopt;
      const auto state = parser.feed_line(line.text);
      if (state == smtp::reply_parser::state::malformed) co_return std::nullopt;
      if (state == smtp::reply_parser::state::need_more) continue;
      if (stream_->has_buffered_input()) co_return std::nullopt;
      co_return parser.take();
    }
    co_return std::nullopt;
  }

  // The reply to the final dot went wrong (a line too long, too many lines,
  // a broken line, the connection lost or silent) after its first line had
  // said 250: the upstream has taken the message (RFC 5321 §6.1), and a 451
  // would make the client send it again. The client gets that first line
  // alone, as a 250 we can stand behind (its enhanced code kept, its text cut
  // to fit, smtp::reply_parser); the connection, out of step, is dropped.
  // `first` is the first line, or the start of one over max_reply_read.
  std::optional<answer> taken_anyway(reply_to what, std::string_view first, const std::string& why) {
    if (!first.empty() && first.back() == '\r') first.remove_suffix(1);  // (a line cut short by a loss)
    if (what != reply_to::end_of_data || !first.starts_with("250")) return std::nullopt;
    if (first.size() > 3 && first[3] != ' ' && first[3] != '-') return std::nullopt;
    std::string line(first);
    if (line.size() > 3) line[3] = ' ';  // the first line as the whole reply
    smtp::reply_parser alone;
    if (alone.feed_line(line) != smtp::reply_parser::state::complete) return std::nullopt;
    auto r = alone.take();
    log_.warn("upstream: {} after the 250 to end of data (the message is queued upstream): the client gets its first "
              "line, {}; dropping the connection",
              why, printable(r.summary()));
    close();
    return answer{std::move(r), std::nullopt, reply_fit::success};
  }

  // Bytes from the upstream while it owes us no reply. What came with the
  // last reply is in the buffer (free to check, and read_reply already did).
  // What came in a later segment needs a look at the socket (MSG_PEEK, one
  // syscall), taken only where a reply out of step would do harm:
  // - before DATA: its 354 sends the message, and every reply owed for
  //   XFORWARD, MAIL and RCPT has arrived by then, so one look catches any
  //   shift in the step (a stray 354 taken for the go-ahead; a stray 250
  //   taken for RCPT's leaves RCPT's real reply waiting); before those
  //   commands a stray reply is either out of place (caught by smtp::fit) or
  //   shifts the step, which this look then sees;
  // - before STARTTLS (what came after the 220 in clear is an injection,
  //   CVE-2011-0411) and XCLIENT (who the client is for the whole
  //   connection must not be answered by a stray reply); both are rare;
  // - before the first command on a kept or pooled connection: peer_gone()
  //   in mail() and upstream_pool::take().
  // Under TLS what TLS holds counts too (a record behind the last reply, in
  // the same segment: has_unread_input), and bytes on the socket count as
  // in clear text: they may be a TLS record with no data in it (a session
  // ticket, a key update), but a server sends its tickets at the handshake
  // (taken in with the EHLO reply) and updates keys seldom, and a stray
  // reply there would send the message twice.
  // (A closed socket is no unsolicited input: the write or read that follows says so.)
  bool unsolicited_input(reply_to what) {
    if (stream_->has_unread_input()) return true;
    const bool look = what == reply_to::data || what == reply_to::starttls || what == reply_to::xclient;
    return look && stream_->peek_socket() == line_stream::waiting::data;
  }

  // A write to the upstream that timed out or failed, at `stage`.
  answer write_failed(const std::string& stage) {
    const bool timed_out = stream_->last_status() == line_stream::status::timeout;
    return fail(timed_out ? upstream_failure::timeout : upstream_failure::lost,
                (timed_out ? "write timed out at " : "write failed at ") + stage);
  }

  // A connection that could not be set up, counted unless fail() did.
  smtp::reply setup_failed(const setup_failure& f) {
    if (!failure_counted_) metrics::count(metrics::family::upstream_failures_total, {name(f.kind)});
    return f.client_reply();
  }

  answer fail(upstream_failure kind, const std::string& why) {
    log_.warn("upstream: {}", why);
    metrics::count(metrics::family::upstream_failures_total, {name(kind)});
    failure_counted_ = true;
    close();
    return answer{failure_reply(kind), kind, reply_fit::out_of_place};
  }

  void close() {
    if (stream_) stream_->close();
    stream_.reset();
    in_transaction_ = false;
    owed_ = false;
    rset_due_ = false;
    xclient_sent_.clear();
  }

  const upstream_config& cfg_;
  const session_log& log_;
  const connection_state& client_;  // the session's: who the client really is
  asio::any_io_executor io_;
  std::unique_ptr<line_stream> stream_;  // a unique_ptr: it may go to the pool and come to another session
  std::shared_ptr<tls_client_context> tls_;
  std::shared_ptr<upstream_pool> pool_;  // null: no connection is kept past the session
  std::shared_ptr<dns::resolver> resolver_;  // null: the system's (getaddrinfo), and no client host name
  bool extensions_unknown_ = false;  // the last greeting was the client's HELO after XCLIENT (ehlo)
  asio::ip::address hostname_of_;  // the client address hostname_ is the name of
  std::string hostname_;           // its XCLIENT/XFORWARD NAME (find_client_hostname)
  std::map<std::string, std::string> caps_;  // EHLO keyword (upper case) -> its parameters
  bool in_transaction_ = false;
  bool owed_ = false;    // a command (or message) went out and its reply has not been read: out of step
  std::chrono::steady_clock::time_point last_reply_;  // when the last reply was read whole (after_wait)
  bool reused_ = false;  // this MAIL's connection came from the pool
  bool rset_due_ = false;  // ... and its RSET goes with the next command (command())
  bool failure_counted_ = false;  // fail() counted this MAIL's failure (portcullis_upstream_failures_total)
  std::string xclient_sent_;  // the attributes of the last XCLIENT the upstream took on this connection, and the EHLO name after it
  // What the upstream holds against this connection (fit_for_another_client), kept with it in the pool:
  bool refused_ = false;       // it refused a command since the connection's last delivery (or opening)
  std::size_t junk_ = 0;       // commands outside a transaction since then (junk_command)
  std::size_t sessions_ = 0;   // the client sessions it served, this one included
};

}  // namespace

std::unique_ptr<upstream> make_upstream(const config& cfg, const session_log& log, const connection_state& client,
                                        asio::any_io_executor io, asio::thread_pool& blocking,
                                        std::shared_ptr<tls_client_context> tls, std::shared_ptr<upstream_pool> pool,
                                        std::shared_ptr<dns::resolver> resolver) {
  if (cfg.upstream.scheme == upstream_config::kind::maildir)
    return std::make_unique<maildir_upstream>(cfg, log, io, blocking);  // nothing to keep open
  return std::make_unique<smtp_upstream>(cfg, log, client, std::move(io), std::move(tls), std::move(pool),
                                         std::move(resolver));
}

std::string queue_id_of(const smtp::reply& r) {
  for (const auto& line : r.lines) {
    for (std::string_view marker : {"queued as ", "id="}) {
      auto at = line.find(marker);
      if (at == std::string::npos) continue;
      std::string_view rest = std::string_view(line).substr(at + marker.size());
      rest = rest.substr(0, rest.find_first_of(" ;,)"));
      if (!rest.empty()) return printable(rest, 64);
    }
  }
  return {};
}

}  // namespace portcullis
