#include "session/session.hpp"

#include <algorithm>
#include <charconv>
#include <ctime>

#include "config/config.hpp"
#include "policy/policy.hpp"
#include "server/server_context.hpp"
#include "session/received_header.hpp"
#include "smtp/dot_decoder.hpp"
#include "smtp/proxy_header.hpp"
#include "smtp/sasl.hpp"
#include "smtp/text.hpp"

namespace portcullis {

namespace {

using smtp::reply;

// RFC 5321 §4.2.2 / RFC 3463 replies the session gives itself.
reply ok() { return {250, "2.0.0", "Ok"}; }
reply bad_sequence(std::string text) { return {503, "5.5.1", std::move(text)}; }
reply bad_syntax(std::string text) { return {501, "5.5.4", std::move(text)}; }
reply upstream_lost() { return {451, "4.4.1", "Upstream connection lost, try again later"}; }

// pc.accept(text): on success the client reads the policy's text with the upstream's code.
reply with_policy_text(reply r, const verdict& v) {
  if (v.what == verdict::kind::accept && r.positive() && !v.reply.text().empty()) r.lines = v.reply.lines;
  return r;
}

constexpr std::chrono::seconds goodbye_timeout{10};  // writing the last reply to a client that left
constexpr std::uint64_t max_size_hint = 4 << 20;     // most we reserve up front from MAIL SIZE=
constexpr std::chrono::milliseconds proxy_header_pause{20};  // between peeks at a partial PROXY header

// RFC 5321 §4.1.1.1: Domain or address-literal. We accept any single token of
// visible ASCII (as Postfix does by default); policies may be stricter.
bool plausible_helo(std::string_view s) {
  if (s.empty() || s.size() > smtp::max_domain) return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f) return false;
  return true;
}

std::string join_recipients(const std::vector<smtp::address>& rcpts) {
  std::string out;
  for (const auto& r : rcpts) {
    if (!out.empty()) out += ',';
    out += '<' + r.str() + '>';
  }
  return out;
}

}  // namespace

session::session(tcp::socket socket, tcp::endpoint client, std::string id, server_context& server, bool implicit_tls)
    : cfg_(server.current_config()),
      policy_(server.current_policy()),
      tls_(server.current_tls()),
      upstream_tls_(server.current_upstream_tls()),
      relay_(server.current_relay()),
      users_(server.current_users()),
      proxy_trusted_(server.current_proxy_trusted()),
      server_(server),
      implicit_tls_(implicit_tls),
      log_(id),
      client_(std::move(socket)) {
  conn_.id = std::move(id);
  conn_.client = client;
}

session::~session() = default;

void session::stop() {
  stopping_ = true;
  client_.wake();
}

void session::queue(const reply& r) { out_ += r.wire(); }

reply session::refused_by_policy(const std::string& what, const verdict& v) {
  log_.info("{} refused by policy: {}", printable(what), printable(v.reply.summary()));
  return v.reply;
}

awaitable<bool> session::flush() {
  if (out_.empty()) co_return true;
  const bool written = co_await client_.write(std::string_view(out_), cfg_->server.idle_timeout);
  out_.clear();
  if (!written) {
    log_.info("write to client failed; closing");
    closing_ = true;
  }
  co_return written;
}

upstream& session::upstream_connection() {
  if (!upstream_)
    upstream_ = make_upstream(*cfg_, log_, conn_, client_.socket().get_executor(), server_.blocking_pool(), upstream_tls_);
  return *upstream_;
}

awaitable<void> session::run() {
  const auto& s = cfg_->server;
  log_.info("connect from {}{}", address_literal(conn_.client.address()) + ":" + std::to_string(conn_.client.port()),
            implicit_tls_ ? " (implicit TLS)" : "");
  if (s.proxy_protocol) {
    const bool told = co_await read_proxy_header();
    if (!told) {
      client_.close();
      log_.info("disconnect from {} before SMTP began", address_literal(conn_.client.address()));
      co_return;
    }
  }
  if (implicit_tls_) {
    const bool secured = co_await handshake();
    if (!secured) {
      client_.close();
      log_.info("disconnect from {} before SMTP began", address_literal(conn_.client.address()));
      co_return;
    }
  }
  auto v = co_await policy_->on_connect(conn_);
  if (v.stops()) {
    // RFC 5321 §3.1: a 554 greeting; we then simply close rather than wait for QUIT.
    queue(refused_by_policy("connection", v));
    closing_ = true;
  } else {
    const bool own_text = v.what == verdict::kind::accept && !v.reply.text().empty();
    queue(reply{220, "", s.hostname + " " + (own_text ? v.reply.text() : "ESMTP Portcullis")});
  }

  while (!closing_) {
    // RFC 2920 §3.2: hold replies while pipelined commands are waiting.
    if (!client_.has_buffered_input()) {
      const bool flushed = co_await flush();
      if (!flushed) break;
    }
    if ((stopping_ || server_.stopping()) && !tx_.active) {
      queue(reply{421, "4.3.2", s.hostname + " Service shutting down, closing connection"});
      break;
    }
    // AUTH may carry a long initial response (RFC 4954 §4); every other
    // command keeps max_line_length, checked below.
    const std::size_t read_limit = cfg_->auth.enabled ? std::max(s.max_line_length, smtp::sasl_max_line_length)
                                                      : s.max_line_length;
    auto line = co_await client_.read_line(read_limit, s.idle_timeout);
    if (line.st == line_stream::status::woken) continue;
    if (line.st == line_stream::status::eof) {
      log_.info("client closed the connection{}", tx_.active ? " in a transaction; nothing delivered" : "");
      break;
    }
    if (line.st == line_stream::status::timeout) {
      log_.info("timeout waiting for a command");
      queue(reply{421, "4.4.2", s.hostname + " Timeout, closing connection"});
      break;
    }
    reply r;
    const bool too_long = line.st == line_stream::status::too_long ||
                          (line.text.size() + 2 > s.max_line_length &&
                           smtp::parse_command(line.text).kind != smtp::verb::auth);
    if (too_long) {
      r = reply{500, "5.5.2", "Line too long"};  // RFC 5321 §4.5.3.1.4
    } else if (!line.crlf || line.text.find_first_of(std::string_view("\r\0", 2)) != std::string_view::npos) {
      r = reply{500, "5.5.2", "Command lines must end with CRLF and hold no bare CR or NUL"};
    } else {
      const auto cmd = smtp::parse_command(line.text);
      log_.debug("<- {}", printable(cmd.kind == smtp::verb::auth ? cmd.name : line.text));
      r = co_await dispatch(cmd);
    }
    if (r.code) queue(r);  // 0: the reply was already written (DATA's 354 path failed)
    if (r.code >= 500 && ++errors_ >= s.max_errors) {
      log_.warn("too many errors ({}); closing", errors_);
      queue(reply{421, "4.7.0", s.hostname + " Too many errors, closing connection"});
      break;
    }
    if (r.code == 421 || r.code == 221) closing_ = true;
  }
  // The last replies go out even when the client no longer reads.
  if (!out_.empty()) {
    const bool written = co_await client_.write(std::string_view(out_), goodbye_timeout);
    (void)written;
  }
  out_.clear();
  // The client has had its last word: it is let go before we tidy up
  // upstream and notify the policy, however long that takes.
  client_.close();
  if (tx_.active) co_await reset_transaction();
  if (upstream_) co_await upstream_->quit();
  co_await policy_->on_disconnect(conn_);
  log_.info("disconnect from {} transactions={} errors={}", address_literal(conn_.client.address()),
            conn_.transactions, errors_);
}

awaitable<reply> session::dispatch(const smtp::command& cmd) {
  using smtp::verb;
  switch (cmd.kind) {
    case verb::helo: co_return co_await on_helo(cmd, false);
    case verb::ehlo: co_return co_await on_helo(cmd, true);
    case verb::mail: co_return co_await on_mail(cmd);
    case verb::rcpt: co_return co_await on_rcpt(cmd);
    case verb::data: co_return co_await on_data(cmd);
    case verb::rset: co_return co_await on_rset(cmd);
    case verb::noop: co_return ok();
    case verb::quit:
      co_return reply{221, "2.0.0", cfg_->server.hostname + " Bye"};
    case verb::help:
      co_return reply{214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"};
    case verb::vrfy:
      if (cmd.arg.empty()) co_return bad_syntax("Syntax: VRFY address");
      // RFC 5321 §3.5.3: we cannot verify, but will relay.
      co_return reply{252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"};
    case verb::expn: co_return reply{502, "5.5.1", "EXPN not available"};
    case verb::http:
      // A web client or a cross-protocol attack: nothing good can follow (Postfix does the same).
      log_.warn("HTTP command '{}' on the SMTP port; closing", printable(cmd.name));
      co_return reply{221, "2.7.0", "This is an SMTP server, not a web server; closing connection"};
    case verb::xclient:
    case verb::xforward:
      // Only we may tell the upstream who the client is; never forwarded.
      co_return reply{502, "5.5.1", std::string(cmd.name) + " not available"};
    case verb::starttls: co_return co_await on_starttls(cmd);
    case verb::auth: co_return co_await on_auth(cmd);
    case verb::bdat:
      co_return reply{502, "5.5.1", std::string(cmd.name) + " not implemented"};
    case verb::unknown: break;
  }
  co_return reply{500, "5.5.1", "Command unrecognized"};
}

awaitable<reply> session::on_helo(const smtp::command& cmd, bool extended) {
  const auto& s = cfg_->server;
  if (cmd.arg.empty()) co_return bad_syntax(extended ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
  if (!plausible_helo(cmd.arg)) co_return reply{501, "5.5.2", "Invalid hostname"};
  auto v = co_await policy_->on_helo(conn_, cmd.arg);
  if (v.stops()) co_return refused_by_policy("HELO " + std::string(cmd.arg), v);
  // RFC 5321 §4.1.4: EHLO/HELO ends any transaction in progress.
  co_await reset_transaction();
  conn_.helo = std::string(cmd.arg);
  conn_.esmtp = extended;
  // RFC 2034 §3: no enhanced status code in the reply to HELO/EHLO.
  if (!extended) co_return reply{250, "", s.hostname};
  co_return reply{250, "",
                  ehlo_lines()};
}

std::vector<std::string> session::ehlo_lines() const {
  const auto& s = cfg_->server;
  std::vector<std::string> lines{
      s.hostname + " Hello " + conn_.helo + " " + address_literal(conn_.client.address()),
      "PIPELINING",                                   // RFC 2920
      "SIZE " + std::to_string(s.max_message_size),  // RFC 1870
      "8BITMIME",                                     // RFC 6152
      "SMTPUTF8",                                     // RFC 6531
      "ENHANCEDSTATUSCODES",                          // RFC 2034
  };
  if (tls_ && !conn_.tls) lines.push_back("STARTTLS");  // RFC 3207
  if (auth_offered() && !conn_.auth_user) lines.push_back("AUTH PLAIN LOGIN");  // RFC 4954
  return lines;
}

bool session::auth_offered() const { return cfg_->auth.enabled && (conn_.tls || cfg_->auth.allow_plaintext); }

awaitable<reply> session::on_auth(const smtp::command& cmd) {
  const auto& a = cfg_->auth;
  if (!a.enabled) co_return reply{502, "5.5.1", "AUTH not available"};
  if (!conn_.esmtp) co_return bad_sequence("Send EHLO first");
  if (conn_.auth_user) co_return bad_sequence("Already authenticated");  // RFC 4954 §4
  if (tx_.active) co_return bad_sequence("AUTH not allowed during a mail transaction");
  if (!auth_offered()) co_return reply{538, "5.7.11", "Encryption required for requested authentication mechanism"};
  if (server_.failed_logins().over_limit(conn_.client.address(), a.max_failures_per_client, a.failure_window)) {
    log_.warn("too many failed logins from this address; closing");
    co_return reply{421, "4.7.0", cfg_->server.hostname + " Too many failed logins, try again later"};
  }
  smtp::sasl_exchange exchange;
  auto step = exchange.start(cmd.arg);
  while (step.state == smtp::sasl_exchange::status::challenge) {
    queue(reply{334, "", step.challenge});
    const bool flushed = co_await flush();
    if (!flushed) co_return reply{};
    auto line = co_await client_.read_line(smtp::sasl_max_line_length, cfg_->server.idle_timeout);
    if (line.st == line_stream::status::too_long) {
      step.state = smtp::sasl_exchange::status::failed;
      step.error = smtp::sasl_error::line_too_long;
      break;
    }
    if (line.st != line_stream::status::ok) {
      closing_ = true;
      co_return reply{421, "4.4.2", cfg_->server.hostname + " Timeout or lost connection during AUTH"};
    }
    step = exchange.respond(line.text);
  }
  reply r;
  if (step.state == smtp::sasl_exchange::status::failed) {
    log_.info("AUTH failed: {}", smtp::to_string(step.error));  // never the credentials
    r = smtp::reply_for(step.error);
  } else {
    const auto& creds = exchange.credentials();
    const char* mechanism = creds.mechanism == smtp::sasl_mechanism::plain ? "PLAIN" : "LOGIN";
    r = co_await check_credentials(mechanism, creds.authcid, creds.password);
    if (r.code == 235) {
      conn_.auth_user = creds.authcid;
      log_.info("AUTH {} as {}", mechanism, printable(creds.authcid));
      co_return r;
    }
    log_.info("AUTH {} as {} refused: {}", mechanism, printable(creds.authcid), printable(r.summary()));
  }
  if (r.code == 535 || step.error == smtp::sasl_error::malformed || step.error == smtp::sasl_error::bad_base64) {
    server_.failed_logins().record(conn_.client.address(), a.failure_window);
    if (++auth_failures_ >= a.max_failures) {
      log_.warn("{} failed logins in this session; closing", auth_failures_);
      queue(r);
      co_return reply{421, "4.7.0", cfg_->server.hostname + " Too many failed logins, closing connection"};
    }
  }
  co_return r;
}

awaitable<reply> session::check_credentials(std::string_view mechanism, const std::string& user,
                                            const std::string& password) {
  // RFC 4954 §6: one reply for an unknown user and a wrong password.
  const reply invalid{535, "5.7.8", "Authentication credentials invalid"};
  auto v = co_await policy_->on_auth(conn_, mechanism, user, password);
  if (v.what == verdict::kind::accept) co_return reply{235, "2.7.0", "Authentication successful"};
  if (v.stops()) co_return v.reply;
  if (!users_) co_return invalid;
  // crypt(3) is deliberately slow: it runs on the blocking pool, never here.
  auto verify = [users = users_, user, password]() -> awaitable<bool> { co_return users->verify(user, password); };
  const bool ok = co_await asio::co_spawn(server_.blocking_pool(), std::move(verify), asio::use_awaitable);
  if (!ok) co_return invalid;
  co_return reply{235, "2.7.0", "Authentication successful"};
}

awaitable<bool> session::read_proxy_header() {
  // Only a trusted load balancer may say who the client is; anyone else
  // could claim any address (and with it, trusted_networks).
  if (!proxy_trusted_->contains(conn_.client.address())) {
    log_.warn("{} is not in server.proxy_trusted but server.proxy_protocol is on; closing",
              address_literal(conn_.client.address()));
    co_return false;
  }
  // Peeked, never read past: what follows may be a TLS ClientHello.
  smtp::proxy_header header;
  const auto deadline = std::chrono::steady_clock::now() + cfg_->server.idle_timeout;
  std::size_t seen = 0;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    std::string_view in;
    if (left.count() > 0) {
      auto peeked = co_await client_.peek(smtp::proxy_v2_max_length, left);
      in = peeked;
    }
    if (in.empty()) {
      log_.info("no PROXY header before the connection ended or timed out");
      co_return false;
    }
    const auto parsed = smtp::parse_proxy_header(in, header);
    if (parsed == smtp::proxy_parse::invalid) {
      log_.warn("invalid PROXY header ({}); closing", header.problem.empty() ? "malformed" : header.problem);
      co_return false;
    }
    if (parsed == smtp::proxy_parse::done) break;
    if (in.size() == seen) {
      // The rest of the header has not arrived: the socket stays readable, so wait a moment.
      asio::steady_timer pause(client_.socket().get_executor(), proxy_header_pause);
      co_await pause.async_wait(asio::use_awaitable);
    }
    seen = in.size();
  }
  if (!client_.skip_peeked(header.length)) {
    log_.info("lost the connection while reading the PROXY header");
    co_return false;
  }
  if (!header.local_or_unknown) {
    // From here on the header's source is the client: policies, relay
    // decisions, logs, Received and XCLIENT all see it.
    const auto via = conn_.client;
    conn_.client = tcp::endpoint(asio::ip::make_address(header.source_ip), header.source_port);
    log_.info("PROXY v{}: client {}:{} via {}", header.version, address_literal(conn_.client.address()),
              conn_.client.port(), address_literal(via.address()));
  }
  co_return true;
}

awaitable<bool> session::handshake() {
  const bool ok = co_await client_.start_tls(tls_->context(), ssl::stream_base::server, {}, cfg_->server.idle_timeout);
  if (!ok) {
    log_.info("TLS handshake failed: {}", client_.last_error());
    co_return false;
  }
  const auto info = client_.tls_info();
  conn_.tls = true;
  conn_.tls_version = info.version;
  conn_.tls_cipher = info.cipher;
  conn_.tls_bits = info.bits;
  log_.info("TLS established: {} with {} ({} bits)", info.version, info.cipher, info.bits);
  co_return true;
}

awaitable<reply> session::on_starttls(const smtp::command& cmd) {
  if (!tls_) co_return reply{502, "5.5.1", "STARTTLS not available"};
  if (conn_.tls) co_return reply{554, "5.5.1", "TLS already active"};  // RFC 3207 §4
  if (!cmd.arg.empty()) co_return bad_syntax("Syntax: STARTTLS");
  if (tx_.active) co_return bad_sequence("STARTTLS not allowed during a mail transaction");
  queue(reply{220, "2.0.0", "Ready to start TLS"});
  const bool flushed = co_await flush();
  if (!flushed) co_return reply{};
  // CVE-2011-0411: anything pipelined behind STARTTLS came in clear; it is
  // dropped unread and gets no reply.
  if (const auto dropped = client_.discard_buffered())
    log_.warn("discarded {} bytes pipelined behind STARTTLS (possible command injection)", dropped);
  const bool secured = co_await handshake();
  if (!secured) {
    closing_ = true;
    co_return reply{};
  }
  // RFC 3207 §4.2: forget everything learnt before; the client says EHLO again.
  co_await reset_transaction();
  conn_.helo.clear();
  conn_.esmtp = false;
  conn_.auth_user.reset();
  co_return reply{};
}

awaitable<reply> session::on_mail(const smtp::command& cmd) {
  const auto& s = cfg_->server;
  // check: sequence and syntax
  if (conn_.helo.empty()) co_return bad_sequence("Send EHLO or HELO first");
  if (tx_.active) co_return bad_sequence("Nested MAIL command");
  if (s.require_tls && !conn_.tls) co_return reply{530, "5.7.0", "Must issue a STARTTLS command first"};
  if (s.require_auth && !conn_.auth_user) co_return reply{530, "5.7.0", "Authentication required"};  // RFC 4954 §6
  if (cmd.bad_syntax) co_return bad_syntax("Syntax: MAIL FROM:<address>");
  auto parsed = smtp::parse_path_argument(cmd.arg, true, false);
  switch (parsed.error) {
    case smtp::path_error::none: break;
    case smtp::path_error::non_ascii: co_return reply{553, "5.6.7", "Non-ASCII address needs SMTPUTF8"};
    case smtp::path_error::bad_params: co_return bad_syntax("Bad ESMTP parameter syntax");
    default: co_return reply{501, "5.1.7", "Bad sender address syntax"};
  }
  mail_options options;
  std::vector<std::string> seen;
  for (const auto& p : parsed.value->params) {
    if (!conn_.esmtp) co_return reply{555, "5.5.4", "ESMTP parameters need EHLO"};
    if (std::find(seen.begin(), seen.end(), p.keyword) != seen.end())
      co_return bad_syntax("Duplicate parameter " + p.keyword);
    seen.push_back(p.keyword);
    if (p.keyword == "SIZE") {  // RFC 1870 §6
      // size-value = 1*20DIGIT: twenty digits may overflow 64 bits, and are then simply too big.
      std::uint64_t size = 0;
      const bool digits = !p.value.empty() && p.value.size() <= 20 &&
                          p.value.find_first_not_of("0123456789") == std::string::npos;
      if (!digits) co_return bad_syntax("Bad SIZE value");
      const auto [end, ec] = std::from_chars(p.value.data(), p.value.data() + p.value.size(), size);
      if (ec == std::errc::result_out_of_range || size > s.max_message_size)
        co_return reply{552, "5.3.4", "Message size exceeds fixed maximum message size"};
      options.size = size;
    } else if (p.keyword == "BODY") {  // RFC 6152 §2
      if (smtp::equals_nocase(p.value, "8BITMIME"))
        options.body_8bit = true;
      else if (!smtp::equals_nocase(p.value, "7BIT"))
        co_return bad_syntax("BODY must be 7BIT or 8BITMIME");
    } else if (p.keyword == "SMTPUTF8") {  // RFC 6531 §3.4
      if (p.has_value) co_return bad_syntax("SMTPUTF8 takes no value");
      options.smtputf8 = true;
    } else if (p.keyword == "AUTH" && cfg_->auth.enabled) {
      // RFC 4954 §5: part of the AUTH extension we offer. Accepted and not
      // passed on: the upstream learns who authenticated through XCLIENT.
      if (!p.has_value) co_return bad_syntax("AUTH needs a value");
    } else {
      co_return reply{555, "5.5.4", "Unsupported parameter " + p.keyword};
    }
  }
  // A new transaction; the policy sees it before anything goes upstream.
  tx_ = transaction{};
  tx_.id = conn_.id + "." + std::to_string(++conn_.transactions);
  tx_.sender = parsed.value->addr;
  tx_.sender_params = parsed.value->params;
  tx_.options = options;
  auto v = co_await policy_->on_mail(conn_, tx_);
  if (v.stops()) {
    tx_ = transaction{};
    co_return refused_by_policy("MAIL FROM:<" + parsed.value->addr.str() + ">", v);
  }
  // proceed: the upstream's own reply goes to the client (with the sender a policy may have rewritten)
  auto upstream_reply = co_await upstream_connection().mail(tx_.sender, tx_.options);
  auto r = with_policy_text(smtp::with_status(std::move(upstream_reply), "2.1.0"), v);
  if (r.positive()) {
    tx_.active = true;
    tx_.upstream_sender = tx_.sender;
    log_.debug("transaction {} from=<{}>", tx_.id, printable(tx_.sender.str()));
  } else {
    log_.info("MAIL FROM:<{}> refused: {}", printable(tx_.sender.str()), printable(r.summary()));
    tx_ = transaction{};
  }
  co_return r;
}

awaitable<reply> session::on_rcpt(const smtp::command& cmd) {
  if (!tx_.active) co_return bad_sequence("Need MAIL before RCPT");
  if (cmd.bad_syntax) co_return bad_syntax("Syntax: RCPT TO:<address>");
  auto parsed = smtp::parse_path_argument(cmd.arg, false, tx_.options.smtputf8);
  switch (parsed.error) {
    case smtp::path_error::none: break;
    case smtp::path_error::non_ascii: co_return reply{553, "5.6.7", "Non-ASCII address needs SMTPUTF8"};
    case smtp::path_error::bad_params: co_return bad_syntax("Bad ESMTP parameter syntax");
    default: co_return reply{501, "5.1.3", "Bad recipient address syntax"};
  }
  if (!parsed.value->params.empty())
    co_return reply{555, "5.5.4", "Unsupported parameter " + parsed.value->params.front().keyword};
  if (tx_.upstream_lost) co_return upstream_lost();
  // Not an open relay: decided here, before the policy or the upstream hear of it.
  if (relay_->enabled() && !conn_.auth_user && !relay_->trusted(conn_.client.address()) &&
      !relay_->is_local(parsed.value->addr)) {
    log_.info("RCPT TO:<{}> refused: relay access denied", printable(parsed.value->addr.str()));
    co_return reply{554, "5.7.1", "Relay access denied"};
  }
  // RFC 5321 §4.5.3.1.8: 452 for too many recipients; the client sends the rest later.
  if (tx_.recipients.size() >= cfg_->server.max_recipients) co_return reply{452, "4.5.3", "Too many recipients"};
  smtp::address rcpt = parsed.value->addr;
  auto v = co_await policy_->on_rcpt(conn_, tx_, rcpt);
  if (v.stops()) {
    ++tx_.rejected_recipients;
    co_return refused_by_policy("RCPT TO:<" + rcpt.str() + ">", v);
  }
  if (v.what == verdict::kind::discard) {
    // Accepted, never delivered: the client must not learn the difference.
    ++tx_.accepted_recipients;
    log_.info("RCPT TO:<{}> discarded by policy", printable(rcpt.str()));
    co_return reply{250, "2.1.5", "Ok"};
  }
  // A redirect delivers to its targets instead; each goes upstream in turn.
  const std::vector<smtp::address> targets =
      v.what == verdict::kind::redirect ? v.redirect_to : std::vector<smtp::address>{rcpt};
  const std::size_t delivered_before = tx_.recipients.size();
  reply r;
  for (const auto& target : targets) {
    const bool known = std::any_of(tx_.recipients.begin(), tx_.recipients.end(),
                                   [&](const smtp::address& a) { return smtp::same_mailbox(a, target); });
    if (known) {
      r = reply{250, "2.1.5", "Ok"};  // already a recipient: delivered once
      continue;
    }
    auto upstream_reply = co_await upstream_connection().rcpt(target);
    r = smtp::with_status(std::move(upstream_reply), "2.1.5");
    if (!r.positive()) break;
    tx_.recipients.push_back(target);
    tx_.upstream_recipients.push_back(target);
  }
  r = with_policy_text(std::move(r), v);
  if (r.positive()) {
    ++tx_.accepted_recipients;
    if (v.what == verdict::kind::redirect) {
      log_.info("RCPT TO:<{}> redirected by policy", printable(rcpt.str()));
      // The upstream's reply may name the target; where mail goes is not the client's business.
      r = reply{250, "2.1.5", "Ok"};
    }
  } else {
    // Targets of a failed redirect that the upstream took are not delivered:
    // the envelope is redone before DATA.
    tx_.recipients.resize(std::min(tx_.recipients.size(), delivered_before));
    ++tx_.rejected_recipients;
    log_.info("RCPT TO:<{}> refused: {}", printable(rcpt.str()), printable(r.summary()));
    // The upstream went away: the rest of this transaction cannot go through.
    if (!upstream_->connected()) tx_.upstream_lost = true;
  }
  co_return r;
}

awaitable<reply> session::on_data(const smtp::command& cmd) {
  if (!tx_.active) co_return bad_sequence("Need MAIL before DATA");
  if (!cmd.arg.empty()) co_return bad_syntax("Syntax: DATA");
  // RFC 2920 §3.1: with pipelining, DATA after only failed RCPTs gets 554.
  if (tx_.accepted_recipients == 0) co_return reply{554, "5.5.1", "No valid recipients"};
  if (tx_.upstream_lost) {
    co_await reset_transaction();
    co_return upstream_lost();
  }
  queue(reply{354, "", "End data with <CR><LF>.<CR><LF>"});
  const bool flushed = co_await flush();
  if (!flushed) co_return reply{};
  auto refused = co_await receive_message();
  if (!refused) {
    closing_ = true;
    co_return reply{421, "4.4.2", cfg_->server.hostname + " Timeout or lost connection during DATA"};
  }
  reply r = *refused;
  if (!r.code) {
    auto delivered = co_await deliver();
    r = std::move(delivered);
  }
  log_transaction(r, message_.size());
  co_await reset_transaction();
  co_return r;
}

awaitable<std::optional<reply>> session::receive_message() {
  const auto& s = cfg_->server;
  message_.clear();
  // Trust a declared SIZE only so far: it is the client's word, not its bytes.
  if (tx_.options.size) message_.reserve(std::min<std::uint64_t>(*tx_.options.size, max_size_hint) + 1024);
  smtp::dot_decoder decoder(s.max_message_size);
  while (!decoder.done()) {
    auto in = co_await client_.read_some(s.data_timeout);
    if (in.empty() && client_.last_status() == line_stream::status::woken) continue;  // shutdown: finish this message
    if (in.empty()) {
      log_.info("{} during DATA; nothing delivered",
                client_.last_status() == line_stream::status::timeout ? "timeout" : "client lost");
      co_return std::nullopt;
    }
    client_.consume(decoder.feed(in, message_));
  }
  switch (decoder.failure()) {
    case smtp::dot_decoder::fault::none: co_return reply{};
    case smtp::dot_decoder::fault::bare_line_ending:
      log_.warn("message refused: bare CR or LF (possible SMTP smuggling)");
      co_return reply{550, "5.5.2", "Message refused: bare CR or LF; lines must end with CRLF"};
    case smtp::dot_decoder::fault::nul:
      log_.warn("message refused: NUL byte");
      co_return reply{550, "5.6.0", "Message refused: NUL byte in message"};
    case smtp::dot_decoder::fault::too_big:
      co_return reply{552, "5.3.4", "Message size exceeds fixed maximum message size"};  // RFC 1870 §6.1
  }
  co_return reply{};
}

awaitable<reply> session::deliver() {
  auto v = co_await policy_->on_data(conn_, tx_, message_);
  if (v.stops()) co_return refused_by_policy("message", v);
  if (v.what == verdict::kind::discard) {
    log_.info("message discarded by policy");
    co_return reply{250, "2.0.0", "Ok: discarded"};
  }
  if (tx_.recipients.empty()) {
    log_.info("every recipient was discarded by policy; nothing to deliver");
    co_return reply{250, "2.0.0", "Ok: discarded"};
  }
  auto refused = co_await sync_upstream_envelope();
  if (refused) co_return *refused;
  const std::string header = received_header(conn_, tx_, cfg_->server.hostname, std::time(nullptr));
  // The client hears 250 only once the upstream said 250 (lock step: nothing lost, nothing doubled).
  auto upstream_reply = co_await upstream_connection().data(header, message_);
  co_return with_policy_text(smtp::with_status(std::move(upstream_reply), "2.0.0"), v);
}

awaitable<std::optional<reply>> session::sync_upstream_envelope() {
  if (tx_.sender == tx_.upstream_sender && tx_.recipients == tx_.upstream_recipients) co_return std::nullopt;
  // A policy changed what the upstream was given: it gets the final envelope
  // in a fresh transaction. Any refusal now is the client's answer to its DATA.
  log_.info("envelope rewritten by policy: from=<{}> to={}; redoing the upstream transaction",
            printable(tx_.sender.str()), printable(join_recipients(tx_.recipients), 2000));
  auto& up = upstream_connection();
  co_await up.reset();
  tx_.upstream_recipients.clear();
  auto mail_reply = co_await up.mail(tx_.sender, tx_.options);
  if (!mail_reply.positive()) co_return smtp::with_status(std::move(mail_reply), "2.1.0");
  tx_.upstream_sender = tx_.sender;
  for (const auto& r : tx_.recipients) {
    auto rcpt_reply = co_await up.rcpt(r);
    if (!rcpt_reply.positive()) {
      log_.info("rewritten recipient <{}> refused: {}", printable(r.str()), printable(rcpt_reply.summary()));
      co_return smtp::with_status(std::move(rcpt_reply), "2.1.5");
    }
    tx_.upstream_recipients.push_back(r);
  }
  co_return std::nullopt;
}

awaitable<reply> session::on_rset(const smtp::command& cmd) {
  if (!cmd.arg.empty()) co_return bad_syntax("Syntax: RSET");
  co_await reset_transaction();
  co_return ok();
}

awaitable<void> session::reset_transaction() {
  if (upstream_ && tx_.active) co_await upstream_->reset();
  tx_ = transaction{};
  // An idle session keeps no big buffers.
  if (message_.capacity() > (1 << 20)) std::string().swap(message_);
  client_.shrink_if_idle();
}

void session::log_transaction(const reply& outcome, std::size_t size) {
  const char* verdict = outcome.positive() ? "delivered" : outcome.transient() ? "tempfail" : "rejected";
  log_.info("tx={} client={} helo={} from=<{}> to={} rejected_rcpts={} size={} upstream=\"{}\" queue_id={} verdict={}",
            tx_.id, address_literal(conn_.client.address()), printable(conn_.helo), printable(tx_.sender.str()),
            printable(join_recipients(tx_.recipients), 2000), tx_.rejected_recipients, size,
            printable(outcome.summary()), queue_id_of(outcome), verdict);
}

}  // namespace portcullis
