#include "session/session.hpp"

#include <algorithm>
#include <ctime>
#include <utility>

#include "checks/authentication_results.hpp"
#include "config/config.hpp"
#include "metrics/metrics.hpp"
#include "policy/policy.hpp"
#include "session/received_header.hpp"
#include "smtp/dot_decoder.hpp"
#include "smtp/mail_options.hpp"
#include "net/proxy_reader.hpp"
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
reply too_many_recipients() { return {452, "4.5.3", "Too many recipients"}; }  // RFC 5321 §4.5.3.1.8
constexpr std::size_t max_rcpt_overshoot = 1000;  // such refusals that do not count as errors (serve())

// Whether a line the client sent (a command, or an AUTH exchange's answer) ends
// in CRLF and holds no bare CR or NUL (RFC 5321 §2.3.8).
bool well_ended(const line_stream::line& line) {
  return line.crlf && line.text.find_first_of(std::string_view("\r\0", 2)) == std::string_view::npos;
}

// pc.accept(text): on success the client reads the policy's text with the upstream's code.
reply with_policy_text(reply r, const verdict& v) {
  if (v.what == verdict::kind::accept && r.positive() && !v.reply.text().empty()) r.lines = v.reply.lines;
  return r;
}

constexpr std::chrono::seconds goodbye_timeout{10};  // writing the last reply to a client that left
constexpr std::chrono::seconds goodbye_drain{2};     // for a client that still sends, to read our last reply
// RFC 2920 §3.2 lets a server hold replies while complete pipelined commands
// wait, not forever: past this many octets of replies they go out first, and
// a client that does not read them stops being read (the write times out).
constexpr std::size_t max_held_replies = 16 * 1024;

// RFC 5321 §4.2.2 452 with RFC 3463's X.3.1 "mail system full": the message
// could not be stored (the spill file could not be made or written).
reply storage_full() { return {452, "4.3.1", "Insufficient system storage, try again later"}; }

// The DATA decoder writes straight into the session's message_store.
struct store_sink final : smtp::byte_sink {
  message_store& store;
  explicit store_sink(message_store& s) : store(s) {}
  void write(std::string_view bytes) override { store.append(bytes); }  // a failure is read after the end
};

const char* spill_reason_name(message_store::spill_reason r) {
  switch (r) {
    case message_store::spill_reason::none: return "none";
    case message_store::spill_reason::threshold: return "larger than server.message_memory_threshold";
    case message_store::spill_reason::budget: return "server.message_memory_budget in use by other messages";
  }
  return "?";
}

// RFC 5321 §4.1.1.1: Domain or address-literal. We accept any single token of
// visible ASCII (as Postfix does by default); policies may be stricter.
// The stage a command's reply counts under (portcullis_replies_total).
std::string_view stage_label(smtp::verb v) {
  using smtp::verb;
  switch (v) {
    case verb::helo:
    case verb::ehlo: return "helo";
    case verb::auth: return "auth";
    case verb::starttls: return "starttls";
    case verb::mail: return "mail";
    case verb::rcpt: return "rcpt";
    case verb::data: return "data";
    case verb::quit: return "quit";
    default: return "other";
  }
}

bool plausible_helo(std::string_view s) {
  if (s.empty() || s.size() > smtp::max_domain) return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f) return false;
  return true;
}


const char* stage_name(session::stage s) {
  switch (s) {
    case session::stage::connected: return "connected";
    case session::stage::greeted: return "greeted";
    case session::stage::ready: return "ready";
    case session::stage::transaction: return "transaction";
    case session::stage::data: return "data";
    case session::stage::closing: return "closing";
  }
  return "?";
}

}  // namespace

session::session(tcp::socket socket, tcp::endpoint client, std::string id, session_environment& env, bool implicit_tls)
    : gen_(env.current()),
      cfg_(*gen_->cfg),
      policy_(*gen_->pol),
      env_(env),
      implicit_tls_(implicit_tls),
      log_(id),
      client_(std::move(socket)),
      relay_(gen_->make_upstream, log_, conn_, client_.socket().get_executor()) {
  conn_.id = std::move(id);
  conn_.set_client(client);
  log_.context().client = conn_.client_literal;
  log_.context().stage = stage_name(stage_);
}

session::~session() = default;

void session::stop(bool now) {
  stopping_ = true;
  stopping_now_ = stopping_now_ || now;
  // Only a session blocked on the next command (or on its PROXY header) is
  // interrupted; one busy with a command (DATA, AUTH, a TLS handshake, a
  // write) finishes it.
  if (interruptible_wait_) client_.wake();
}

void session::set_stage(stage to) {
  if (to == stage_) return;
  log_.debug("stage {} -> {}", stage_name(stage_), stage_name(to));
  stage_ = to;
  log_.context().stage = stage_name(to);
}

void session::queue(const reply& r) { out_ += r.wire(); }

void session::answer(std::string_view stage, const reply& r) {
  metrics::count(metrics::family::replies_total, {stage, metrics::reply_class(r.code)});
  queue(r);
}

reply session::refused_by_policy(const std::string& what, const verdict& v) {
  if (v.by.empty()) {
    log_.info("{} refused by policy: {}", printable(what), printable(v.reply.summary()));
  } else {
    log_.info("{} refused by policy ({}): {}", printable(what), printable(v.by), printable(v.reply.summary()));
  }
  return v.reply;
}

awaitable<bool> session::flush() {
  if (out_.empty()) co_return true;
  const bool written = co_await client_.write(std::string_view(out_), cfg_.server.idle_timeout);
  out_.clear();
  if (!written) {
    log_.info("write to client failed or timed out; closing");
    set_stage(stage::closing);
  }
  co_return written;
}

awaitable<void> session::run() {
  log_.info("connect from {}:{}{}", conn_.client_literal, conn_.client.port(), implicit_tls_ ? " (implicit TLS)" : "");
  bool greeted = false;
  try {
    co_await serve();
    greeted = stage_ != stage::connected;
  } catch (const std::exception& e) {
    greeted = true;  // on_connect may have run: on_disconnect must
    log_.error("session failed: {}; cleaning up", e.what());
  }
  if (!greeted) {
    client_.close();
    log_.info("disconnect from {} before SMTP began", conn_.client_literal);
    co_return;
  }
  co_await finish();
}

awaitable<void> session::serve() {
  const auto& s = cfg_.server;
  if (s.proxy_protocol) {
    interruptible_wait_ = true;  // (a stop closes a connection that has not said who it is for yet)
    const bool told = co_await take_proxy_header();
    interruptible_wait_ = false;
    if (!told) co_return;
  }
  if (implicit_tls_) {
    const bool secured = co_await handshake();
    if (!secured) co_return;
  }
  auto v = co_await policy_.on_connect(conn_);
  set_stage(stage::greeted);
  if (v.stops()) {
    // RFC 5321 §3.1: a 554 greeting; we then simply close rather than wait for QUIT.
    answer("connect", refused_by_policy("connection", v));
    set_stage(stage::closing);
  } else {
    const bool own_text = v.what == verdict::kind::accept && !v.reply.text().empty();
    answer("connect", reply{220, "", s.hostname + " " + (own_text ? v.reply.text() : "ESMTP Portcullis")});
  }

  while (stage_ != stage::closing) {
    // RFC 2920 §3.2: replies wait only while complete commands do, and only so many.
    if (!client_.has_buffered_line() || out_.size() >= max_held_replies) {
      const bool flushed = co_await flush();
      if (!flushed) break;
    }
    if ((stopping_ || env_.stopping()) && (stage_ != stage::transaction || stopping_now_)) {
      queue(reply{421, "4.3.2", s.hostname + " Service shutting down, closing connection"});
      break;
    }
    // AUTH may carry a long initial response (RFC 4954 §4); every other
    // command keeps max_line_length, checked below.
    const std::size_t read_limit = cfg_.auth.enabled ? std::max(s.max_line_length, smtp::sasl_max_line_length)
                                                     : s.max_line_length;
    client_.shrink_if_idle();  // between commands: no argument points into the buffer now
    interruptible_wait_ = true;
    auto line = co_await client_.read_line(read_limit, s.idle_timeout);
    interruptible_wait_ = false;
    if (line.st == line_stream::status::woken) continue;
    if (line.st == line_stream::status::eof) {
      log_.info("client closed the connection{}",
                stage_ == stage::transaction ? " in a transaction; nothing delivered" : "");
      break;
    }
    if (line.st == line_stream::status::timeout) {
      log_.info("timeout waiting for a command");
      queue(reply{421, "4.4.2", s.hostname + " Timeout, closing connection"});
      break;
    }
    reply r;
    std::string_view replied_at = "other";  // the stage label of its reply (metrics)
    const bool too_long = line.st == line_stream::status::too_long ||
                          (line.text.size() + 2 > s.max_line_length &&
                           smtp::parse_command(line.text).kind != smtp::verb::auth);
    if (too_long && cfg_.auth.enabled && smtp::parse_command(line.text).kind == smtp::verb::auth) {
      r = smtp::reply_for(smtp::sasl_error::line_too_long);  // an initial response too long (RFC 4954 §4)
    } else if (too_long) {
      r = reply{500, "5.5.2", "Line too long"};  // RFC 5321 §4.5.3.1.4
    } else if (!well_ended(line)) {
      r = reply{500, "5.5.2", "Command lines must end with CRLF and hold no bare CR or NUL"};
    } else {
      const auto cmd = smtp::parse_command(line.text);
      if (log_.debugging()) log_command(cmd, line.text);
      replied_at = stage_label(cmd.kind);
      const bool in_transaction = stage_ == stage::transaction;
      r = co_await dispatch(cmd);
      if (cmd.kind == smtp::verb::auth)
        after_refused_auth_ = r.code != 235;
      else if (cmd.kind != smtp::verb::unknown && !cmd.bad_syntax)
        after_refused_auth_ = false;
      if (cmd.kind == smtp::verb::rcpt && in_transaction && r.code >= 400) {
        (r.code < 500 ? rcpt_tempfailed_ : rcpt_rejected_) = true;
        // Every refused RCPT of the transaction counts in its summary: the relay guard's,
        // a bad address's and a limit's as well as a policy's or the upstream's.
        if (stage_ == stage::transaction) ++tx_.rejected_rcpts;
      }
    }
    if (r.code) answer(replied_at, r);  // 0: the reply was already written (DATA's 354 path failed)
    // Refusals cost the client, temporary ones too: each may have cost an
    // upstream round trip. Not a RCPT past max_recipients, up to 1,000 of them
    // a transaction (Postfix's smtpd_recipient_overshoot_limit): RFC 5321 §4.5.3.1.10 has
    // the client send those in a transaction of its own, after this one's
    // DATA (counted, a message to 1,010 recipients never went).
    if (r.code >= 400 && r.code != 421) {
      ++errors_;
      const bool overshoot = r.code == 452 && r.status == "4.5.3" && ++rcpt_overshoot_ <= max_rcpt_overshoot;
      if (!overshoot && ++errors_counted_ >= s.max_errors) {
        log_.warn("too many errors ({}); closing", errors_counted_);
        queue(reply{421, "4.7.0", s.hostname + " Too many errors, closing connection"});
        break;
      }
    }
    if (r.code == 421 || r.code == 221) set_stage(stage::closing);
  }
  set_stage(stage::closing);
}

awaitable<void> session::finish() {
  // The last replies go out even when the client no longer reads.
  if (!out_.empty()) {
    try {
      const bool written = co_await client_.write(std::string_view(out_), goodbye_timeout);
      (void)written;
    } catch (const std::exception& e) {
      log_.warn("writing the last reply failed: {}", e.what());
    }
  }
  out_.clear();
  // The client has had its last word: it is let go before we tidy up
  // upstream and notify the policy, however long that takes.
  try {
    co_await client_.close_after_drain(goodbye_drain);
  } catch (const std::exception& e) {
    client_.close();
  }
  end_unfinished_transaction();
  try {
    co_await relay_.finish();
  } catch (const std::exception& e) {
    log_.warn("upstream clean-up failed: {}", e.what());
  }
  try {
    co_await policy_.on_disconnect(conn_);
  } catch (const std::exception& e) {
    log_.warn("on_disconnect failed: {}", e.what());
  }
  log_.info("disconnect from {} transactions={} errors={}", conn_.client_literal,
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
      co_return reply{221, "2.0.0", cfg_.server.hostname + " Bye"};
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
    case verb::bdat: co_return co_await on_bdat(cmd);
    case verb::unknown: break;
  }
  co_return reply{500, "5.5.1", "Command unrecognized"};
}

// Debug logging shows every command but never credentials: an AUTH's
// arguments are left out, and so is a line that is no command, which may
// be a client's base64 credentials pipelined behind an AUTH we refused
// (538, 503, 504, 421) or sent where a command was expected. Such a line
// shows its first few characters (a mistyped verb is still seen) and its
// length, and right after a refused AUTH only its length.
void session::log_command(const smtp::command& cmd, std::string_view line) const {
  constexpr std::size_t shown_of_non_command = 4;  // characters of its first word
  if (cmd.kind == smtp::verb::auth) {
    log_.debug("<- {}", printable(cmd.name));
  } else if (cmd.kind != smtp::verb::unknown && !cmd.bad_syntax) {
    log_.debug("<- {}", printable(line));
  } else if (after_refused_auth_) {
    log_.debug("<- a line that is no command, {} octets (not shown: it follows a refused AUTH)", line.size());
  } else {
    const auto word = line.substr(0, std::min(line.find(' '), shown_of_non_command));
    log_.debug("<- a line that is no command, {} octets, starting {}...", line.size(), log_word(word));
  }
}

awaitable<reply> session::on_helo(const smtp::command& cmd, bool extended) {
  const auto& s = cfg_.server;
  if (cmd.arg.empty()) co_return bad_syntax(extended ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
  if (!plausible_helo(cmd.arg)) co_return reply{501, "5.5.2", "Invalid hostname"};
  std::string hostname(cmd.arg);  // owned: the command's view is not kept across the awaits below
  auto v = co_await policy_.on_helo(conn_, hostname);
  if (v.stops()) co_return refused_by_policy("HELO " + hostname, v);
  // RFC 5321 §4.1.4: EHLO/HELO ends any transaction in progress.
  co_await reset_transaction();
  conn_.helo = std::move(hostname);
  conn_.esmtp = extended;
  set_stage(stage::ready);
  // RFC 2034 §3: no enhanced status code in the reply to HELO/EHLO.
  if (!extended) co_return reply{250, "", s.hostname};
  co_return reply{250, "", ehlo_lines()};
}

std::vector<std::string> session::ehlo_lines() const {
  const auto& s = cfg_.server;
  std::vector<std::string> lines{
      s.hostname + " Hello " + conn_.helo + " " + conn_.client_literal,
      "PIPELINING",                                   // RFC 2920
      "SIZE " + std::to_string(s.max_message_size),  // RFC 1870
      "8BITMIME",                                     // RFC 6152
      "SMTPUTF8",                                     // RFC 6531
      "ENHANCEDSTATUSCODES",                          // RFC 2034
  };
  if (gen_->tls && !conn_.tls) lines.push_back("STARTTLS");  // RFC 3207
  if (auth_offered() && !conn_.auth_user) lines.push_back("AUTH PLAIN LOGIN");  // RFC 4954
  return lines;
}

bool session::auth_offered() const { return cfg_.auth.enabled && (conn_.tls || cfg_.auth.allow_plaintext); }

// CHUNKING is not offered (RFC 3030), but a client that sends BDAT anyway
// sends its chunk right behind the command: those octets are read and
// dropped, never taken for commands (a line of the message reading "RSET"
// or "MAIL FROM:<...>" would be one). Where the chunk ends is unknown when
// the size is not one, and a chunk over max_message_size is not worth
// reading: the connection is closed then.
awaitable<reply> session::on_bdat(const smtp::command& cmd) {
  // (cmd's views point into the read buffer: gone once the chunk is read. Copied first.)
  const std::string verb(cmd.name);
  const auto size = smtp::bdat_chunk_size(cmd.arg);
  if (!size || *size > cfg_.server.max_message_size) {
    log_.warn("BDAT {} (CHUNKING is not offered): {}; closing", printable(cmd.arg),
              size ? "its chunk is over max_message_size" : "where its chunk ends is unknown");
    co_return reply{421, "4.5.0", cfg_.server.hostname + " BDAT not implemented (use DATA); closing connection"};
  }
  for (std::uint64_t left = *size; left > 0;) {
    auto in = co_await client_.read_some(cfg_.server.data_timeout);
    if (in.empty() && client_.last_status() == line_stream::status::woken) continue;
    if (in.empty()) {
      log_.info("{} in a BDAT chunk", client_.last_status() == line_stream::status::timeout ? "timeout" : "client lost");
      co_return reply{421, "4.4.2", cfg_.server.hostname + " Timeout, closing connection"};
    }
    const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(left, in.size()));
    client_.consume(take);
    left -= take;
  }
  log_.info("BDAT (CHUNKING is not offered): its {} octets dropped", *size);
  co_return reply{502, "5.5.1", verb + " not implemented (use DATA)"};
}

awaitable<reply> session::on_auth(const smtp::command& cmd) {
  const auto& a = cfg_.auth;
  if (!a.enabled) co_return reply{502, "5.5.1", "AUTH not available"};
  if (!conn_.esmtp) co_return bad_sequence("Send EHLO first");
  if (conn_.auth_user) co_return bad_sequence("Already authenticated");  // RFC 4954 §4
  if (stage_ == stage::transaction) co_return bad_sequence("AUTH not allowed during a mail transaction");
  if (!auth_offered()) co_return reply{538, "5.7.11", "Encryption required for requested authentication mechanism"};
  if (env_.failed_logins().over_limit(conn_.client.address(), a.max_failures_per_client, a.failure_window)) {
    log_.warn("too many failed logins from this address; closing");
    co_return reply{421, "4.7.0", cfg_.server.hostname + " Too many failed logins, try again later"};
  }
  smtp::sasl_exchange exchange;
  auto step = exchange.start(cmd.arg);
  while (step.state == smtp::sasl_exchange::status::challenge) {
    answer(stage_label(smtp::verb::auth), reply{334, "", step.challenge});  // (the command loop answers only the final reply)
    const bool flushed = co_await flush();
    if (!flushed) co_return reply{};
    auto line = co_await client_.read_line(smtp::sasl_max_line_length, cfg_.server.idle_timeout);
    if (line.st == line_stream::status::too_long) {
      step.state = smtp::sasl_exchange::status::failed;
      step.error = smtp::sasl_error::line_too_long;
      break;
    }
    if (line.st != line_stream::status::ok) {
      log_.info("{} during AUTH", line.st == line_stream::status::timeout ? "timeout" : "connection lost");
      set_stage(stage::closing);
      co_return reply{421, "4.4.2", cfg_.server.hostname + " Timeout or lost connection during AUTH"};
    }
    if (!well_ended(line)) {
      step.state = smtp::sasl_exchange::status::failed;  // (as a command line would be refused)
      step.error = smtp::sasl_error::bad_line_ending;
      break;
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
    // Counted as a failure before the (slow) check, atomically with the
    // limit: sessions in parallel (in any worker) cannot each get a guess
    // past max_failures_per_client. Taken back unless the answer is 535.
    const auto reserved =
        env_.failed_logins().reserve(conn_.client.address(), a.max_failures_per_client, a.failure_window);
    if (!reserved) {
      log_.warn("too many failed logins from this address; closing");
      co_return reply{421, "4.7.0", cfg_.server.hostname + " Too many failed logins, try again later"};
    }
    r = co_await check_credentials(mechanism, creds.authcid, creds.password);
    if (r.code != 535) env_.failed_logins().cancel(conn_.client.address(), *reserved);
    if (r.code == 235) {
      conn_.auth_user = creds.authcid;
      log_.info("AUTH {} as {}", mechanism, printable(creds.authcid));
      metrics::count(metrics::family::auth_total, {"success"});
      co_return r;
    }
    log_.info("AUTH {} as {} refused: {}", mechanism, printable(creds.authcid), printable(r.summary()));
  }
  metrics::count(metrics::family::auth_total, {r.transient() ? "tempfail" : "failure"});
  if (r.code == 535 || step.error == smtp::sasl_error::malformed || step.error == smtp::sasl_error::bad_base64) {
    if (r.code != 535) env_.failed_logins().record(conn_.client.address(), a.failure_window);  // (a 535 was reserved)
    if (++auth_failures_ >= a.max_failures) {
      log_.warn("{} failed logins in this session; closing", auth_failures_);
      answer(stage_label(smtp::verb::auth), r);
      co_return reply{421, "4.7.0", cfg_.server.hostname + " Too many failed logins, closing connection"};
    }
  }
  co_return r;
}

awaitable<reply> session::check_credentials(std::string_view mechanism, const std::string& user,
                                            const std::string& password) {
  // RFC 4954 §6: one reply for an unknown user and a wrong password.
  const reply invalid{535, "5.7.8", "Authentication credentials invalid"};
  auto v = co_await policy_.on_auth(conn_, mechanism, user, password);
  if (v.what == verdict::kind::accept) co_return v.reply.code == 235 ? v.reply : reply{235, "2.7.0", "Authentication successful"};
  if (v.stops()) co_return v.reply;
  if (!gen_->users) co_return invalid;
  // crypt(3) is deliberately slow: it runs on the blocking pool, never here.
  auto verify = [users = gen_->users, user, password]() -> awaitable<bool> { co_return users->verify(user, password); };
  const bool ok = co_await asio::co_spawn(env_.blocking_pool(), std::move(verify), asio::use_awaitable);
  if (!ok) co_return invalid;
  co_return reply{235, "2.7.0", "Authentication successful"};
}

awaitable<bool> session::take_proxy_header() {
  // Only a trusted load balancer may say who the client is; anyone else
  // could claim any address (and with it, trusted_networks).
  if (!gen_->proxy_trusted->contains(conn_.client.address())) {
    log_.warn("{} is not in server.proxy_trusted but server.proxy_protocol is on; closing",
              conn_.client_literal);
    co_return false;
  }
  const auto read = co_await read_proxy_header(client_, std::chrono::steady_clock::now() + cfg_.server.idle_timeout);
  switch (read.what) {
    case proxy_header_read::outcome::read: break;
    case proxy_header_read::outcome::invalid: log_.warn("{}; closing", read.problem); co_return false;
    case proxy_header_read::outcome::woken: log_.info("{}; closing", read.problem); co_return false;
    case proxy_header_read::outcome::ended: log_.info("{}", read.problem); co_return false;
  }
  const auto& header = read.header;
  if (!header.local_or_unknown) {
    // From here on the header's source is the client: policies, relay
    // decisions, logs, Received and XCLIENT all see it.
    const auto via = conn_.client;
    conn_.set_client(tcp::endpoint(asio::ip::make_address(header.source_ip), header.source_port));
    log_.context().client = conn_.client_literal;
    log_.info("PROXY v{}: client {}:{} via {}", header.version, conn_.client_literal,
              conn_.client.port(), address_literal(via.address()));
  }
  co_return true;
}

awaitable<bool> session::handshake() {
  if (!gen_->tls) {  // a listen_tls port whose generation has no [tls]: the server never lets this happen
    log_.error("no TLS certificate for this connection; closing");
    co_return false;
  }
  const bool ok = co_await client_.start_tls(gen_->tls->context(), ssl::stream_base::server, {}, cfg_.server.idle_timeout);
  if (!ok) {
    log_.info("TLS handshake failed: {}", client_.last_error());
    metrics::count(metrics::family::tls_handshakes_total, {"none", "failed"});
    co_return false;
  }
  const auto info = client_.tls_info();
  metrics::count(metrics::family::tls_handshakes_total, {info.version, "ok"});
  conn_.tls = true;
  conn_.tls_version = info.version;
  conn_.tls_cipher = info.cipher;
  conn_.tls_bits = info.bits;
  log_.info("TLS established: {} with {} ({} bits)", info.version, info.cipher, info.bits);
  co_return true;
}

awaitable<reply> session::on_starttls(const smtp::command& cmd) {
  if (!gen_->tls) co_return reply{502, "5.5.1", "STARTTLS not available"};
  if (conn_.tls) co_return reply{554, "5.5.1", "TLS already active"};  // RFC 3207 §4
  if (!cmd.arg.empty()) co_return bad_syntax("Syntax: STARTTLS");
  if (stage_ == stage::transaction) co_return bad_sequence("STARTTLS not allowed during a mail transaction");
  answer(stage_label(smtp::verb::starttls), reply{220, "2.0.0", "Ready to start TLS"});
  const bool flushed = co_await flush();
  if (!flushed) co_return reply{};
  // CVE-2011-0411: anything pipelined behind STARTTLS came in clear; it is
  // dropped unread and gets no reply.
  if (const auto dropped = client_.discard_buffered())
    log_.warn("discarded {} bytes pipelined behind STARTTLS (possible command injection)", dropped);
  const bool secured = co_await handshake();
  if (!secured) {
    set_stage(stage::closing);
    co_return reply{};
  }
  // RFC 3207 §4.2: forget everything learnt before; the client says EHLO again.
  co_await reset_transaction();
  conn_.helo.clear();
  conn_.esmtp = false;
  conn_.auth_user.reset();
  set_stage(stage::greeted);
  co_return reply{};
}

awaitable<reply> session::on_mail(const smtp::command& cmd) {
  const auto& s = cfg_.server;
  // check: sequence and syntax
  if (stage_ == stage::greeted) co_return bad_sequence("Send EHLO or HELO first");
  if (stage_ == stage::transaction) co_return bad_sequence("Nested MAIL command");
  rcpt_overshoot_ = 0;  // (a transaction's own, as Postfix's rcpt_overshoot)
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
  auto options = smtp::parse_mail_params(parsed.value->params,
                                         {s.max_message_size, conn_.esmtp, auth_offered()});
  if (auto* refusal = std::get_if<reply>(&options)) co_return *refusal;

  // policy: it sees the transaction before anything goes upstream
  transaction tx;
  tx.id = conn_.id + "." + std::to_string(conn_.transactions + 1);
  tx.sender = parsed.value->addr;
  tx.sender_params = parsed.value->params;
  tx.options = std::get<smtp::mail_options>(options);
  if (gen_->checks && cfg_.checks.spf) {
    // RFC 7208 §2.4: the MAIL FROM identity, from the real client (after PROXY/XCLIENT).
    const auto client = conn_.client.address();
    const std::string helo = conn_.helo;
    const smtp::address sender = tx.sender;
    auto spf = co_await gen_->checks->spf(client, helo, sender);
    log_spf(spf);
    tx.spf = std::move(spf);
  }
  auto v = co_await policy_.on_mail(conn_, tx);
  ++conn_.transactions;
  tx_ = std::move(tx);
  log_.context().tx = tx_.id;
  note_verdict("mail", v);
  apply_rewrites(v);
  if (v.stops()) {
    tx_ = transaction{};
    log_.context().tx.clear();
    metrics::count(metrics::family::transactions_total, {v.reply.transient() ? "tempfailed" : "rejected"});
    co_return refused_by_policy("MAIL FROM:<" + parsed.value->addr.str() + ">", v);
  }
  // proceed: the upstream's own reply goes to the client (with the sender a policy may have rewritten)
  auto upstream_reply = co_await relay_.mail(tx_);
  auto r = with_policy_text(std::move(upstream_reply), v);
  if (r.positive()) {
    set_stage(stage::transaction);
    if (log_.debugging()) log_.debug("transaction {} from=<{}>", tx_.id, printable(tx_.sender.str()));
  } else {
    log_.info("MAIL FROM:<{}> refused: {}", printable(tx_.sender.str()), printable(r.summary()));
    metrics::count(metrics::family::transactions_total, {r.transient() ? "tempfailed" : "rejected"});
    tx_ = transaction{};
    log_.context().tx.clear();
  }
  co_return r;
}

awaitable<reply> session::on_rcpt(const smtp::command& cmd) {
  const auto max_recipients = cfg_.server.max_recipients;
  if (stage_ != stage::transaction) co_return bad_sequence("Need MAIL before RCPT");
  if (cmd.bad_syntax) co_return bad_syntax("Syntax: RCPT TO:<address>");
  auto parsed = smtp::parse_path_argument(cmd.arg, false, tx_.options.smtputf8);
  switch (parsed.error) {
    case smtp::path_error::none: break;
    case smtp::path_error::non_ascii: co_return reply{553, "5.6.7", "Non-ASCII address needs SMTPUTF8"};
    case smtp::path_error::bad_params: co_return bad_syntax("Bad ESMTP parameter syntax");
    default: co_return reply{501, "5.1.3", "Bad recipient address syntax"};
  }
  if (!parsed.value->params.empty())
    co_return smtp::unsupported_parameter(parsed.value->params.front().keyword);
  if (relay_.lost()) co_return upstream_lost();
  const auto& gen = *gen_;
  // Not an open relay: decided here, before the policy or the upstream hear of it.
  if (gen.relay->enabled() && !conn_.auth_user && !gen.relay->trusted(conn_.client.address()) &&
      !gen.relay->is_local(parsed.value->addr)) {
    log_.info("RCPT TO:<{}> refused: relay access denied", printable(parsed.value->addr.str()));
    co_return reply{554, "5.7.1", "Relay access denied"};
  }
  // Accepted RCPTs count, discarded ones too, and so does every mailbox to deliver to.
  if (tx_.accepted_rcpts >= max_recipients || tx_.recipients.size() >= max_recipients)
    co_return too_many_recipients();
  const smtp::address& rcpt = parsed.value->addr;
  auto v = co_await policy_.on_rcpt(conn_, tx_, rcpt);
  note_verdict("rcpt", v, &rcpt);
  apply_rewrites(v);
  if (v.stops()) co_return refused_by_policy("RCPT TO:<" + rcpt.str() + ">", v);
  if (v.what == verdict::kind::discard) {
    // Accepted, never delivered: the client must not learn the difference.
    ++tx_.accepted_rcpts;
    log_.info("RCPT TO:<{}> discarded by policy", printable(rcpt.str()));
    co_return reply{250, "2.1.5", "Ok"};
  }
  // A redirect delivers to its targets instead; each goes upstream in turn.
  std::vector<smtp::address> targets;
  for (const auto& t : v.what == verdict::kind::redirect ? v.redirect_to : std::vector<smtp::address>{rcpt}) {
    const bool known = std::any_of(tx_.recipients.begin(), tx_.recipients.end(),
                                   [&](const smtp::address& a) { return smtp::same_mailbox(a, t); });
    if (!known) targets.push_back(t);  // already a recipient: delivered once
  }
  if (tx_.recipients.size() + targets.size() > max_recipients) {
    log_.info("RCPT TO:<{}> refused: its {} new recipient(s) would pass server.max_recipients",
              printable(rcpt.str()), targets.size());
    co_return too_many_recipients();
  }
  const std::size_t delivered_before = tx_.recipients.size();
  reply r{250, "2.1.5", "Ok"};
  for (const auto& target : targets) {
    r = co_await relay_.rcpt(target);
    if (!r.positive()) break;
    tx_.recipients.push_back(target);
  }
  r = with_policy_text(std::move(r), v);
  if (r.positive()) {
    ++tx_.accepted_rcpts;
    if (v.what == verdict::kind::redirect) {
      log_.info("RCPT TO:<{}> redirected by policy", printable(rcpt.str()));
      // The upstream's reply may name the target; where mail goes is not the client's business.
      r = reply{250, "2.1.5", "Ok"};
    }
  } else {
    // Targets of a failed redirect that the upstream took are not delivered:
    // the envelope is redone before DATA.
    tx_.recipients.resize(delivered_before);
    log_.info("RCPT TO:<{}> refused: {}", printable(rcpt.str()), printable(r.summary()));
  }
  co_return r;
}

awaitable<reply> session::on_data(const smtp::command& cmd) {
  if (stage_ != stage::transaction) co_return bad_sequence("Need MAIL before DATA");
  if (!cmd.arg.empty()) co_return bad_syntax("Syntax: DATA");
  // RFC 2920 §3.1: with pipelining, DATA after only failed RCPTs gets 554.
  if (tx_.accepted_rcpts == 0) co_return reply{554, "5.5.1", "No valid recipients"};
  if (relay_.lost()) {
    co_await reset_transaction();
    co_return upstream_lost();
  }
  set_stage(stage::data);
  answer(stage_label(smtp::verb::data), reply{354, "", "End data with <CR><LF>.<CR><LF>"});
  const bool flushed = co_await flush();
  if (!flushed) co_return reply{};
  auto refused = co_await receive_message();
  if (!refused) {
    message_.reset();  // its memory back to the budget now, not when the session is gone
    set_stage(stage::closing);
    co_return reply{421, "4.4.2", cfg_.server.hostname + " Timeout or lost connection during DATA"};
  }
  reply r = *refused;
  std::size_t size = message_->size();
  metrics::get(metrics::family::message_size_bytes).observe(static_cast<double>(size));
  if (!r.code) {
    auto delivered = co_await deliver(size);
    r = std::move(delivered);
  }
  log_transaction(r, size);
  // A message delivered forgives the client's errors so far, as Postfix's
  // smtpd does: a relay that reuses its connection is not cut off by the
  // refused recipients of earlier messages.
  if (r.positive() && upstream_final_) errors_counted_ = 0;  // (not a discard: nothing delivered)
  if (auto final_reply = std::exchange(upstream_final_, std::nullopt)) {
    if (r.positive() && policy_.notifies_transactions()) {
      // The upstream has the message: the client hears so now, before the
      // notifications (on_delivered, on_reset) run. A stop's grace period
      // ending, a crash or a slow hook while they run must not leave
      // delivered mail unacknowledged: the client would send it again.
      // (Without them, it goes with the replies to what the client
      // pipelined after the dot, in one write: nothing comes between.)
      message_.reset();  // its memory back to the budget first (the notifications do not see it)
      answer(stage_label(smtp::verb::data), r);
      co_await flush();  // (a client gone: flush() ends the session)
      r = reply{};  // (0: written already; serve() queues nothing)
    }
    try {
      co_await policy_.on_delivered(conn_, tx_, *final_reply);  // a notification: its outcome changes nothing
    } catch (const std::exception& e) {
      log_.warn("on_delivered failed: {}", e.what());
    }
  }
  co_await reset_transaction();
  co_return r;
}

awaitable<std::optional<reply>> session::receive_message() {
  const auto& s = cfg_.server;
  // A new store for every message: one a policy job still holds is its own.
  message_ = std::make_shared<message_store>(env_.messages_memory(),
                                             spill_settings{s.message_memory_threshold, s.message_spill_dir});
  store_sink sink(*message_);
  bool spill_logged = false;
  smtp::dot_decoder decoder(s.max_message_size);
  while (!decoder.done()) {
    auto in = co_await client_.read_some(s.data_timeout);
    if (in.empty() && client_.last_status() == line_stream::status::woken) continue;  // shutdown: finish this message
    if (in.empty()) {
      log_.info("{} during DATA; nothing delivered",
                client_.last_status() == line_stream::status::timeout ? "timeout" : "client lost");
      co_return std::nullopt;
    }
    client_.consume(decoder.feed(in, sink));
    if (message_->spilled() && !spill_logged) {
      spill_logged = true;
      log_.debug("message goes to a temporary file in {} at {} octets ({})", message_->spill_directory().string(),
                 message_->size(), spill_reason_name(message_->why_spilled()));
    }
  }
  const bool stored = message_->seal();
  switch (decoder.failure()) {
    case smtp::dot_decoder::fault::none: {
      if (!stored) {
        log_.error("message not stored: {}", message_->error());
        co_return storage_full();
      }
      // A first line that continues nothing (RFC 5322 §2.2.3) is read three
      // ways: the body's start (the policies' pc.Message), a line skipped
      // (Python's email, the checks), or, once our Received: is on top, its
      // continuation, and the fields after it the upstream's and the mail
      // reader's: an attachment or a Subject the policies never saw.
      message_store::reader first(*message_, 1);
      const auto start = first.next();
      if (!start.empty() && (start.front() == ' ' || start.front() == '\t')) {
        log_.warn("message refused: its first line starts with white space (a continuation of nothing)");
        co_return reply{550, "5.6.0", "Message refused: its first line starts with white space"};
      }
      co_return reply{};
    }
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

awaitable<reply> session::deliver(std::size_t& size) {
  const message_ptr received = message_;
  const auto received_at = std::chrono::steady_clock::now();
  if (gen_->checks && (cfg_.checks.dkim || cfg_.checks.dmarc || cfg_.checks.arc)) {
    // Over the message exactly as received, before any policy sees or edits
    // it: DKIM (RFC 6376), DMARC judged on those results and SPF's (RFC
    // 7489), and the chain of intermediaries' seals (RFC 8617 §5.2).
    const auto& spf = tx_.spf;
    auto found = co_await gen_->checks->message(received, spf);
    if (found.dkim) log_dkim(*found.dkim);
    if (found.dmarc) log_dmarc(*found.dmarc);
    if (found.arc) log_arc(*found.arc);
    tx_.dkim = std::move(found.dkim);
    tx_.dmarc = std::move(found.dmarc);
    tx_.arc = std::move(found.arc);
  }
  auto v = co_await policy_.on_data(conn_, tx_, received);
  note_verdict("data", v);
  apply_rewrites(v);
  message_ptr message = received;
  // RFC 6152 §3: 8-bit text an edit brought in is declared to the upstream
  // (the envelope is then redone with BODY=8BITMIME).
  const std::string* edit = v.message ? v.message.get() : v.message_prefix ? &*v.message_prefix : nullptr;
  if (edit && !tx_.options.body_8bit && !tx_.options.smtputf8 && !smtp::is_ascii(*edit) && all_ascii(*received))
    tx_.options.body_8bit = true;
  if (v.message) {
    message = message_store::wrap(v.message);
  } else if (v.message_prefix) {
    // Fields put on top, or a new header section: above the message (or its
    // body) as received, which is shared, not copied.
    message = message_store::with_prefix(std::move(*v.message_prefix), received, v.message_keep_from);
  }
  size = message->size();
  if (v.stops()) co_return refused_by_policy("message", v);
  if (v.what == verdict::kind::discard) {
    log_.info("message discarded by policy");
    discarded_ = true;
    co_return reply{250, "2.0.0", "Ok: discarded"};
  }
  if (tx_.recipients.empty()) {
    log_.info("every recipient was discarded by policy; nothing to deliver");
    discarded_ = true;
    co_return reply{250, "2.0.0", "Ok: discarded"};
  }
  if (client_left(received_at)) co_return client_lost_before_delivery();
  auto refused = co_await relay_.sync(tx_);
  if (refused) co_return *refused;
  std::string header;
  if (cfg_.checks.authentication_results) {
    // Ours goes on top, and no field claiming to be ours comes with it (RFC 8601 §5, §7.1).
    message = without_claimed_results(std::move(message));
    if (!message) co_return storage_full();
    header = checks::authentication_results_header(cfg_.server.hostname, tx_.spf, tx_.dkim, tx_.dmarc, tx_.arc);
  }
  std::string signature;
  if (auto failed = co_await dkim_sign(message, signature)) co_return *failed;
  header = signature + header + received_header(conn_, tx_, cfg_.server.hostname, std::time(nullptr));
  if (gen_->sealer && tx_.arc_seal.value_or(true)) {
    // ARC: the very last change, over everything the upstream gets (RFC 8617 §5.1).
    const auto sealed = co_await gen_->sealer->seal(header, message, tx_.arc);
    std::string seal;
    if (auto failed = take_signature(sealed, "ARC sealed", seal)) co_return *failed;
    header = seal + header;
  }
  // The client hears 250 only once the upstream said 250 (lock step: nothing lost, nothing doubled).
  if (client_left(received_at)) co_return client_lost_before_delivery();
  auto upstream_reply = co_await relay_.data(header, *message);
  upstream_final_ = upstream_reply;
  co_return with_policy_text(std::move(upstream_reply), v);
}

// A client that reset the connection, or closed it with nothing more said,
// while the message was checked and the policies ran (up to policy.timeout)
// never hears the upstream's 250 and sends the message again: relayed now,
// the upstream would get it twice. (A FIN behind a pipelined QUIT, or TLS's
// close_notify, still has the message relayed: a client that closes its
// side may still read the replies.) Looked at once the message has waited
// 50 ms: no system call a message on the fast path, where the window is
// the one every SMTP server has (RFC 1047).
bool session::client_left(std::chrono::steady_clock::time_point since) {
  if (std::chrono::steady_clock::now() - since < std::chrono::milliseconds(50)) return false;
  return !client_.has_unread_input() && client_.peek_socket() == line_stream::waiting::end;
}

reply session::client_lost_before_delivery() {
  log_.info("client lost before the message went upstream; nothing delivered");
  set_stage(stage::closing);
  return reply{421, "4.4.2", cfg_.server.hostname + " Lost connection before delivery"};
}

awaitable<std::optional<reply>> session::dkim_sign(const message_ptr& message, std::string& field) {
  // The last change to the message: over it as the upstream gets it, after every policy edit.
  const auto& choice = tx_.dkim_sign;  // the policy's: unset, the rule; "", not signed; else the domain
  if (choice && choice->empty()) co_return std::nullopt;
  const reply policy_failure{451, "4.3.0", "Temporary policy failure, try again later"};
  if (!gen_->signer) {
    if (!choice) co_return std::nullopt;
    log_.error("policy asked to sign as {}, but there is no [dkim_sign]", printable(*choice));
    co_return policy_failure;
  }
  std::string domain;  // empty: the From domain's, when it is ours
  if (choice) {
    if (!gen_->signer->signs_as(*choice)) {
      log_.error("policy asked to sign as {}, which is not one of [dkim_sign] domains", printable(*choice));
      co_return policy_failure;
    }
    domain = *choice;
  } else if (!conn_.auth_user && !gen_->signer->trusts(conn_.client.address())) {
    co_return std::nullopt;  // not our users' mail: never lend it our signature
  }
  const auto signed_ = co_await gen_->signer->sign(message, domain);
  co_return take_signature(signed_, "DKIM signed", field);
}

std::optional<reply> session::take_signature(const checks::dkim_signing& s, std::string_view done,
                                             std::string& field) const {
  if (!s.error.empty()) {
    // Sent without it, the message could fail at its destination: the client tries again.
    log_.error("not {}: {}", done, printable(s.error));
    return reply{451, "4.3.0", "Local error: the message could not be signed, try again later"};
  }
  if (s.field.empty()) {
    log_.info("not {}: {}", done, printable(s.why_not));
  } else {
    for (const auto& selector : s.selectors) log_.info("{} d={} s={}", done, s.domain, selector);
    field = s.field;
  }
  return std::nullopt;
}

message_ptr session::without_claimed_results(message_ptr message) {
  const auto& hostname = cfg_.server.hostname;
  checks::claimed_results_finder finder(hostname);
  message_store::reader in(*message);
  for (auto chunk = in.next(); !chunk.empty() && finder.feed(chunk); chunk = in.next()) {
  }
  if (in.failed()) return message;  // the upstream's read fails the same way, and says so
  finder.finish();
  const auto& claimed = finder.claimed();
  if (claimed.empty()) return message;
  const auto& s = cfg_.server;
  auto kept = std::make_shared<message_store>(env_.messages_memory(),
                                              spill_settings{s.message_memory_threshold, s.message_spill_dir});
  message_store::reader again(*message);
  std::uint64_t offset = 0;
  auto next_claim = claimed.begin();
  for (auto chunk = again.next(); !chunk.empty(); chunk = again.next()) {
    // The chunk less the claimed ranges it overlaps.
    const std::uint64_t end = offset + chunk.size();
    std::uint64_t at = offset;
    while (at < end) {
      while (next_claim != claimed.end() && next_claim->second <= at) ++next_claim;
      const std::uint64_t stop = next_claim == claimed.end() ? end : std::min(end, next_claim->first);
      if (stop > at) kept->append(chunk.substr(at - offset, stop - at));
      at = next_claim == claimed.end() || stop < next_claim->first ? stop : std::min(end, next_claim->second);
    }
    offset = end;
  }
  if (again.failed() || !kept->seal()) {
    log_.error("message not stored without its forged Authentication-Results: {}",
               again.failed() ? again.error() : kept->error());
    return nullptr;
  }
  log_.info("removed {} Authentication-Results field{} claiming {}", claimed.size(), claimed.size() == 1 ? "" : "s",
            hostname);
  return kept;
}

void session::apply_rewrites(const verdict& v) {
  if (v.sender) tx_.sender = *v.sender;
  if (v.recipients) tx_.recipients = *v.recipients;
  if (v.dkim_sign) tx_.dkim_sign = v.dkim_sign;
  if (v.arc_seal) tx_.arc_seal = v.arc_seal;
}

awaitable<reply> session::on_rset(const smtp::command& cmd) {
  if (!cmd.arg.empty()) co_return bad_syntax("Syntax: RSET");
  co_await reset_transaction();
  co_return ok();
}

awaitable<void> session::reset_transaction() {
  end_unfinished_transaction();
  tx_counted_ = tx_logged_ = rcpt_tempfailed_ = rcpt_rejected_ = discarded_ = false;
  if (stage_ == stage::transaction || stage_ == stage::data) {
    try {
      co_await policy_.on_reset(conn_, tx_);  // a notification: its outcome changes nothing
    } catch (const std::exception& e) {
      log_.warn("on_reset failed: {}", e.what());
    }
  }
  co_await relay_.reset();
  tx_ = transaction{};
  log_.context().tx.clear();
  if (stage_ == stage::transaction || stage_ == stage::data) set_stage(stage::ready);
  // An idle session keeps no big buffers (the input buffer is given back
  // between commands, in serve(): a command's arguments point into it).
  message_.reset();  // its memory back to the budget, its spill file gone (unless a policy job still holds it)
}

void session::log_spf(const checks::spf_result& spf) const {
  const auto result = checks::to_string(spf.result);
  const auto identity = spf.helo ? "helo" : "mailfrom";
  metrics::count(metrics::family::sender_checks_total, {"spf", result});
  if (!session_log::informing()) return;
  if (spf.problem.empty()) {
    log_.info("spf={} {}={} client={}", result, identity, log_word(spf.domain), conn_.client_literal);
  } else {
    log_.info("spf={} {}={} client={} ({})", result, identity, log_word(spf.domain), conn_.client_literal,
              printable(spf.problem));
  }
}

void session::log_arc(const checks::arc_result& arc) const {
  metrics::count(metrics::family::sender_checks_total, {"arc", checks::to_string(arc.result)});
  if (!session_log::informing()) return;
  if (arc.problem.empty()) {
    std::string by;
    for (const auto& d : arc.sealers) by += (by.empty() ? " by " : ", ") + d;
    log_.info("arc={} (i={}{})", checks::to_string(arc.result), arc.instances, printable(by));
  } else {
    log_.info("arc={} ({})", checks::to_string(arc.result), printable(arc.problem));
  }
}

void session::log_dmarc(const checks::dmarc_result& dmarc) const {
  const auto result = checks::to_string(dmarc.result);
  metrics::count(metrics::family::sender_checks_total, {"dmarc", result});
  if (!session_log::informing()) return;
  if (dmarc.result == checks::dmarc_result::kind::pass || dmarc.result == checks::dmarc_result::kind::fail) {
    log_.info("dmarc={} header.from={} p={} dis={}{}", result, log_word(dmarc.domain), checks::to_string(dmarc.policy),
              checks::to_string(dmarc.disposition), dmarc.org_record ? " (the organizational domain's policy)" : "");
  } else {
    log_.info("dmarc={} header.from={} ({})", result, dmarc.domain.empty() ? "-" : log_word(dmarc.domain),
              printable(dmarc.problem));
  }
}

void session::log_dkim(const checks::dkim_results& dkim) const {
  if (dkim.empty()) {
    metrics::count(metrics::family::sender_checks_total, {"dkim", "none"});
    log_.info("dkim=none (no signature)");
    return;
  }
  for (const auto& s : dkim) {
    metrics::count(metrics::family::sender_checks_total, {"dkim", checks::to_string(s.result)});
    if (!session_log::informing()) continue;
    if (s.problem.empty()) {
      log_.info("dkim={} d={} s={}", checks::to_string(s.result), log_word(s.domain), log_word(s.selector));
    } else {
      log_.info("dkim={} d={} s={} ({})", checks::to_string(s.result), log_word(s.domain), log_word(s.selector),
                printable(s.problem));
    }
  }
}

void session::count_transaction(std::string_view outcome) {
  if (std::exchange(tx_counted_, true)) return;
  metrics::count(metrics::family::transactions_total, {outcome});
}

void session::end_unfinished_transaction() {
  // (By then a QUIT or a lost client has made the stage closing: the open transaction is told by its id.)
  if (tx_logged_ || tx_.id.empty()) return;
  // Every RCPT refused: the client will try again later (a 4xx among them) or not at all.
  const bool refused = tx_.accepted_rcpts == 0 && (rcpt_tempfailed_ || rcpt_rejected_);
  if (refused) count_transaction(rcpt_tempfailed_ ? "tempfailed" : "rejected");
  log_summary("", "-", 0, !refused ? "abandoned" : rcpt_tempfailed_ ? "tempfail" : "rejected");
}

void session::note_verdict(std::string_view stage, const verdict& v, const smtp::address* rcpt) {
  // Refused RCPTs are not bounded by server.max_recipients: neither is this list, but for this cap.
  constexpr std::size_t noted = 50;
  auto said = v.described();  // (every RCPT comes here: nothing more is built when no hook said anything)
  if (said.empty()) return;
  auto& list = tx_.policy_verdicts;
  if (list.size() < noted) {
    std::string what(stage);
    if (rcpt) what += " <" + rcpt->str() + ">";
    list.push_back(what + " " + said);
  } else if (list.size() == noted) {
    list.push_back("...");
  }
}

void session::log_transaction(const reply& outcome, std::size_t size) {
  const char* verdict = outcome.positive() ? (discarded_ ? "discarded" : "delivered")
                        : outcome.transient() ? "tempfail"
                                              : "rejected";
  count_transaction(outcome.positive() ? verdict : outcome.transient() ? "tempfailed" : "rejected");
  log_summary(outcome.summary(), queue_id_of(outcome), size, verdict);
}

// One word per field, whatever the client sent: in the addresses and the
// HELO name a space, quote or angle bracket is escaped (log_word), in the
// quoted upstream reply and policy list a quote; so a quoted local part
// like "a> verdict=delivered x"@example.test can neither end its path early
// nor add a field of its own (a JSON reader takes the first of a key).
void session::log_summary(std::string_view upstream, std::string_view queue_id, std::size_t size,
                          std::string_view outcome) {
  tx_logged_ = true;
  if (!session_log::informing()) return;  // (its arguments are half a dozen escaped copies)
  constexpr std::size_t recipients_shown = 2000;  // characters of the to= list, then "..."
  std::string said;
  for (const auto& v : tx_.policy_verdicts) said += (said.empty() ? "" : "; ") + v;
  const auto policy_field = said.empty() ? std::string() : " policy=\"" + printable(said, 4000, "\"") + '"';
  std::string to;
  for (const auto& r : tx_.recipients) {
    if (to.size() >= recipients_shown) {
      to += "...";
      break;
    }
    if (!to.empty()) to += ',';
    to += '<';
    to += log_word(r.str(), recipients_shown);
    to += '>';
  }
  log_.info("tx={} client={} helo={} from=<{}> to={} rejected_rcpts={} size={} upstream=\"{}\" queue_id={} verdict={}{}",
            tx_.id, conn_.client_literal, log_word(conn_.helo), log_word(tx_.sender.str()), to, tx_.rejected_rcpts,
            size, printable(upstream, 200, "\""), log_word(queue_id), outcome, policy_field);
}

}  // namespace portcullis
