// The upstream as an SMTP client (RFC 5321 §3, §4.5.3.2 timeouts).
#include <map>
#include <set>
#include <sstream>

#include "log.hpp"
#include "net/line_stream.hpp"
#include "net/network.hpp"
#include "session/state.hpp"
#include "smtp/dot_decoder.hpp"
#include "smtp/text.hpp"
#include "upstream/maildir_upstream.hpp"
#include "upstream/upstream.hpp"

namespace portcullis {

using namespace asio::experimental::awaitable_operators;

namespace {

// An upstream reply line longer than this is nonsense (RFC 5321 §4.5.3.1.5 says 512).
constexpr std::size_t max_reply_line = 4096;
constexpr std::size_t max_reply_lines = 100;
constexpr std::chrono::seconds quit_timeout{5};  // we do not wait long to say goodbye

smtp::reply unavailable() { return {451, "4.4.1", "Upstream server unavailable, try again later"}; }
smtp::reply nonsense() { return {451, "4.3.0", "Upstream server error, try again later"}; }

class smtp_upstream final : public upstream {
 public:
  smtp_upstream(const config& cfg, const session_log& log, const connection_state& client, asio::any_io_executor io,
                std::shared_ptr<tls_client_context> tls)
      : cfg_(cfg.upstream), log_(log), client_(client), io_(std::move(io)), tls_(std::move(tls)) {}

  awaitable<smtp::reply> mail(const smtp::address& sender, const mail_options& options) override {
    // A kept connection the upstream closed while idle (its own timeout) is
    // replaced; and if it dies at this very MAIL, we try once more on a fresh
    // one: nothing of the transaction has reached the upstream yet.
    if (stream_ && stream_->peer_gone()) {
      log_.info("upstream: idle connection closed by the upstream; reconnecting");
      close();
    }
    for (int attempt = 0;; ++attempt) {
      const bool reused = stream_.has_value();
      auto r = co_await mail_once(sender, options);
      if (reused && !stream_ && attempt == 0) continue;
      co_return r;
    }
  }

  awaitable<smtp::reply> mail_once(const smtp::address& sender, const mail_options& options) {
    if (!stream_) {
      auto failure = co_await connect();
      if (failure) co_return *failure;
    }
    if (cfg_.client_info == client_info_mode::xforward) {
      // XFORWARD attributes hold for the next transaction only: sent before each MAIL.
      const std::string attributes = client_attributes("XFORWARD");
      if (attributes.empty()) {
        log_.error("upstream: upstream.client_info = \"xforward\" but the upstream does not offer XFORWARD to us");
        co_return fail("no XFORWARD", true);
      }
      const std::string line = "XFORWARD" + attributes;
      auto forwarded = co_await command(line, "XFORWARD");
      if (forwarded.code != 250) {
        log_.error("upstream: XFORWARD refused: {}", printable(forwarded.summary()));
        co_return fail("XFORWARD refused", true);
      }
    }
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
    auto r = co_await command(cmd, "MAIL");  // cmd is a named local: see asio.hpp
    in_transaction_ = r.positive();
    co_return r;
  }

  awaitable<smtp::reply> rcpt(const smtp::address& recipient) override {
    if (!stream_) co_return unavailable();
    const std::string line = "RCPT TO:<" + recipient.str() + ">";
    auto r = co_await command(line, "RCPT");
    co_return r;
  }

  awaitable<smtp::reply> data(std::string_view header, std::string_view message) override {
    if (!stream_) co_return unavailable();
    auto go_ahead = co_await command("DATA", "DATA");
    if (go_ahead.code != 354) {
      if (go_ahead.positive()) co_return fail("a non-354 positive reply to DATA", true);
      co_return go_ahead;
    }
    // One gather write: our header, then the body as dot-stuffed slices of itself.
    const auto pieces = smtp::dot_stuffed_pieces(message);
    std::vector<asio::const_buffer> buffers;
    buffers.reserve(pieces.size() + 1);
    buffers.emplace_back(header.data(), header.size());
    for (auto p : pieces) buffers.emplace_back(p.data(), p.size());
    const bool written = co_await stream_->write(buffers, cfg_.timeout);
    if (!written) co_return fail(write_failure("sending the message"), false);
    auto r = co_await read_reply("end of data");
    in_transaction_ = false;
    co_return r;
  }

  awaitable<void> reset() override {
    if (!stream_ || !in_transaction_) co_return;
    auto r = co_await command("RSET", "RSET");
    in_transaction_ = false;
    if (r.code != 250) close();
  }

  bool connected() const override { return stream_.has_value(); }

  awaitable<void> quit() override {
    if (!stream_) co_return;
    const bool written = co_await stream_->write(std::string_view("QUIT\r\n"), quit_timeout);
    if (written) (void)co_await stream_->read_line(max_reply_line, quit_timeout);
    close();
  }

 private:
  // Connects, reads the greeting, EHLOs. Returns a reply only on failure.
  // Connects, reads the greeting, EHLOs, and secures the connection as
  // upstream.starttls says. An opportunistic STARTTLS whose handshake fails
  // is retried once in clear on a new connection (as Postfix's "may" level).
  awaitable<std::optional<smtp::reply>> connect() {
    auto failure = co_await connect_and_identify(true);
    if (failure && failure->status == "4.7.5" && cfg_.starttls == starttls_mode::opportunistic &&
        cfg_.scheme == upstream_config::kind::smtp) {
      log_.warn("upstream: retrying without TLS (upstream.starttls = \"opportunistic\")");
      auto plain = co_await connect_and_identify(false);
      co_return plain;
    }
    co_return failure;
  }

  awaitable<std::optional<smtp::reply>> connect_once(bool try_starttls) {
    auto endpoints = co_await resolve();
    if (!endpoints) co_return unavailable();
    stream_.emplace(tcp::socket(io_));
    const auto ec = co_await stream_->connect(*endpoints, cfg_.timeout);
    if (ec) {
      log_.warn("upstream: cannot connect to {}:{}: {}", cfg_.host, cfg_.port, ec.message());
      close();
      co_return unavailable();
    }
    if (cfg_.scheme == upstream_config::kind::smtps) {  // RFC 8314: TLS from the first byte
      const bool secured = co_await secure();
      if (!secured) co_return tls_failure();
    }
    auto ready = co_await greet_and_ehlo();
    if (ready) co_return ready;
    if (cfg_.scheme != upstream_config::kind::smtp || cfg_.starttls == starttls_mode::never) co_return std::nullopt;
    if (!caps_.count("STARTTLS") || !try_starttls) {
      if (cfg_.starttls == starttls_mode::required) {
        log_.error("upstream: STARTTLS required but {}", try_starttls ? "not offered" : "it failed");
        close();
        co_return tls_failure();
      }
      co_return std::nullopt;  // opportunistic: in clear
    }
    auto go_ahead = co_await command("STARTTLS", "STARTTLS");
    if (go_ahead.code != 220) {
      log_.warn("upstream: STARTTLS refused: {}", printable(go_ahead.summary()));
      close();
      co_return tls_failure();
    }
    // Anything the upstream sent after its 220 came in clear: a response
    // injection (the client side of CVE-2011-0411). Nothing of it is used.
    if (stream_->has_buffered_input()) {
      log_.error("upstream: data after the 220 to STARTTLS (response injection?); dropping the connection");
      close();
      co_return nonsense();
    }
    const bool secured = co_await secure();
    if (!secured) co_return tls_failure();
    // RFC 3207 §4.2: forget what the upstream said before TLS; EHLO again.
    auto again = co_await ehlo();
    co_return again;
  }

  // After TLS: XCLIENT when configured (its 220 and our new EHLO end the set-up).
  awaitable<std::optional<smtp::reply>> connect_and_identify(bool try_starttls) {
    auto failure = co_await connect_once(try_starttls);
    if (failure || cfg_.client_info != client_info_mode::xclient) co_return failure;
    auto identified = co_await send_xclient();
    co_return identified;
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

  static smtp::reply tls_failure() { return {451, "4.7.5", "Upstream server TLS failure, try again later"}; }

  // XCLIENT / XFORWARD attributes the upstream asked for, xtext-encoded
  // (RFC 3461 §4): NAME ADDR PORT PROTO HELO LOGIN.
  std::string client_attributes(const std::string& verb) const {
    const auto offered = caps_.find(verb);
    if (offered == caps_.end()) return {};
    std::set<std::string> wanted;
    std::istringstream words(smtp::to_upper(offered->second));
    for (std::string w; words >> w;) wanted.insert(w);
    const auto ip = unmapped(client_.client.address());
    std::string out;
    auto add = [&](const char* name, const std::string& value) {
      if (wanted.count(name)) out += std::string(" ") + name + "=" + xtext(value);
    };
    add("NAME", "[UNAVAILABLE]");  // no reverse DNS lookups in the proxy
    add("ADDR", ip.is_v6() ? "IPV6:" + ip.to_string() : ip.to_string());
    add("PORT", std::to_string(client_.client.port()));
    add("PROTO", client_.esmtp ? "ESMTP" : "SMTP");
    add("HELO", client_.helo.empty() ? "[UNAVAILABLE]" : client_.helo);
    if (verb == "XCLIENT") add("LOGIN", client_.auth_user.value_or("[UNAVAILABLE]"));
    return out;
  }

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

  // Postfix XCLIENT: the upstream then treats us as the client itself and
  // greets again. Refused, we fail closed: relaying as 127.0.0.1 could make
  // the upstream trust every client.
  awaitable<std::optional<smtp::reply>> send_xclient() {
    const std::string attributes = client_attributes("XCLIENT");
    if (attributes.empty()) {
      log_.error("upstream: upstream.client_info = \"xclient\" but the upstream does not offer XCLIENT to us");
      close();
      co_return nonsense();
    }
    const std::string line = "XCLIENT" + attributes;
    auto greeting = co_await command(line, "XCLIENT");
    if (greeting.code != 220) {
      log_.error("upstream: XCLIENT refused: {}", printable(greeting.summary()));
      close();
      co_return nonsense();
    }
    // Our EHLO now speaks for the client: its name, or XCLIENT's HELO would be overwritten.
    const std::string name = client_.helo.empty() ? cfg_.helo : client_.helo;
    auto again = co_await ehlo(name);
    co_return again;
  }

  awaitable<std::optional<smtp::reply>> greet_and_ehlo() {
    auto greeting = co_await read_reply("greeting");
    if (greeting.code != 220) {
      if (stream_) log_.warn("upstream: greeting refused: {}", printable(greeting.summary()));
      close();
      co_return greeting.code == 421 || greeting.transient() ? greeting : unavailable();
    }
    auto capabilities = co_await ehlo();
    co_return capabilities;
  }

  // EHLO (HELO when refused) and the upstream's extensions; a reply on failure.
  awaitable<std::optional<smtp::reply>> ehlo() {
    auto result = co_await ehlo(cfg_.helo);
    co_return result;
  }

  awaitable<std::optional<smtp::reply>> ehlo(const std::string& name) {
    const std::string line = "EHLO " + name;
    auto ehlo = co_await command(line, "EHLO");
    if (ehlo.permanent() && stream_) {
      const std::string helo_line = "HELO " + name;
      auto helo = co_await command(helo_line, "HELO");  // RFC 5321 §3.2
      ehlo = std::move(helo);
    }
    if (ehlo.code != 250) {
      if (stream_) log_.warn("upstream: EHLO refused: {}", printable(ehlo.summary()));
      close();
      co_return unavailable();
    }
    caps_.clear();
    for (std::size_t i = 1; i < ehlo.lines.size(); ++i) {
      const auto& l = ehlo.lines[i];
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

  awaitable<smtp::reply> command(const std::string& line, const char* stage) {
    const std::string wire = line + "\r\n";
    const bool written = co_await stream_->write(std::string_view(wire), cfg_.timeout);
    if (!written) co_return fail(write_failure(stage), false);
    auto r = co_await read_reply(stage);
    co_return r;
  }

  awaitable<smtp::reply> read_reply(const char* stage) {
    smtp::reply_parser parser;
    for (std::size_t n = 0; n < max_reply_lines; ++n) {
      auto line = co_await stream_->read_line(max_reply_line, cfg_.timeout);
      switch (line.st) {
        case line_stream::status::ok: break;
        case line_stream::status::timeout: co_return fail(std::string("timed out waiting for the reply to ") + stage, false);
        case line_stream::status::too_long: co_return fail(std::string("over-long reply line to ") + stage, true);
        default: co_return fail(std::string("connection lost waiting for the reply to ") + stage, false);
      }
      switch (parser.feed_line(line.text)) {
        case smtp::reply_parser::state::need_more: continue;
        case smtp::reply_parser::state::malformed:
          co_return fail(std::string("malformed reply to ") + stage + ": " + printable(line.text), true);
        case smtp::reply_parser::state::complete: {
          auto r = parser.take();
          if (r.code == 421) {
            // RFC 5321 §3.8: the upstream is closing; so do we, cleanly.
            log_.warn("upstream: closing at {}: {}", stage, printable(r.summary()));
            close();
          }
          co_return r;
        }
      }
    }
    co_return fail(std::string("too many reply lines to ") + stage, true);
  }

  std::string write_failure(const std::string& stage) const {
    return (stream_->last_status() == line_stream::status::timeout ? "write timed out at " : "write failed at ") + stage;
  }

  smtp::reply fail(const std::string& why, bool protocol_error) {
    log_.warn("upstream: {}", why);
    close();
    return protocol_error ? nonsense() : unavailable();
  }

  void close() {
    if (stream_) stream_->close();
    stream_.reset();
    in_transaction_ = false;
  }

  const upstream_config& cfg_;
  const session_log& log_;
  const connection_state& client_;  // the session's: who the client really is
  asio::any_io_executor io_;
  std::optional<line_stream> stream_;
  std::shared_ptr<tls_client_context> tls_;
  std::map<std::string, std::string> caps_;  // EHLO keyword (upper case) -> its parameters
  bool in_transaction_ = false;
};

}  // namespace

std::unique_ptr<upstream> make_upstream(const config& cfg, const session_log& log, const connection_state& client,
                                        asio::any_io_executor io, asio::thread_pool& blocking,
                                        std::shared_ptr<tls_client_context> tls) {
  if (cfg.upstream.scheme == upstream_config::kind::maildir)
    return std::make_unique<maildir_upstream>(cfg, log, io, blocking);
  return std::make_unique<smtp_upstream>(cfg, log, client, std::move(io), std::move(tls));
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
