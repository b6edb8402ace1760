#include "session/upstream_relay.hpp"

#include "log.hpp"
#include "smtp/text.hpp"

namespace portcullis {

upstream_relay::upstream_relay(upstream_factory make, const session_log& log, const connection_state& client,
                               asio::any_io_executor io)
    : make_(std::move(make)), log_(log), client_(client), io_(std::move(io)) {}

upstream_relay::~upstream_relay() = default;

upstream& upstream_relay::connection() {
  if (!upstream_) upstream_ = make_(log_, client_, io_);
  return *upstream_;
}

awaitable<smtp::reply> upstream_relay::mail(const transaction& tx) {
  auto& up = connection();
  lost_ = false;
  auto r = co_await up.mail(tx.sender, tx.options);
  r = smtp::with_status(std::move(r), "2.1.0");
  open_ = r.positive();
  sender_ = tx.sender;
  options_ = tx.options;
  recipients_.clear();
  co_return r;
}

awaitable<smtp::reply> upstream_relay::rcpt(const smtp::address& recipient) {
  auto& up = connection();
  if (auto refused = co_await after_wait(upstream::next_command::rcpt)) {
    lost_ = true;  // the transaction is gone upstream: the rest of it cannot go through
    co_return *refused;
  }
  auto r = co_await up.rcpt(recipient);
  r = smtp::with_status(std::move(r), "2.1.5");
  if (r.positive())
    recipients_.push_back(recipient);
  else if (!up.connected())
    lost_ = true;  // the upstream went away: the rest of this transaction cannot go through
  co_return r;
}

awaitable<std::optional<smtp::reply>> upstream_relay::sync(const transaction& tx) {
  if (open_ && tx.sender == sender_ && tx.options == options_ && tx.recipients == recipients_) co_return std::nullopt;
  log_.info("envelope rewritten by policy: from=<{}> to={}; redoing the upstream transaction",
            printable(tx.sender.str()), printable(smtp::join_paths(tx.recipients), 2000));
  co_await reset();
  auto mail_reply = co_await mail(tx);
  if (!mail_reply.positive()) co_return mail_reply;
  for (const auto& r : tx.recipients) {
    auto rcpt_reply = co_await rcpt(r);
    if (!rcpt_reply.positive()) {
      log_.info("rewritten recipient <{}> refused: {}", printable(r.str()), printable(rcpt_reply.summary()));
      co_return rcpt_reply;
    }
  }
  co_return std::nullopt;
}

awaitable<smtp::reply> upstream_relay::data(std::string_view header, const message_store& message) {
  auto& up = connection();
  if (auto refused = co_await after_wait(upstream::next_command::data)) co_return *refused;
  auto r = co_await up.data(header, message);
  open_ = false;  // the final reply ends the upstream transaction, whatever it says
  co_return smtp::with_status(std::move(r), "2.0.0");
}

awaitable<std::optional<smtp::reply>> upstream_relay::after_wait(upstream::next_command next) {
  if (!open_) co_return std::nullopt;
  const auto waited = co_await connection().after_wait(next);
  if (waited == wait_outcome::out_of_step) {
    open_ = false;
    co_return failure_reply(upstream_failure::protocol);
  }
  if (waited == wait_outcome::closed) co_return co_await give_again();
  co_return std::nullopt;
}

// Nothing of the message went to the closed connection, so giving the
// transaction again cannot make a second copy. The client was told that
// the upstream took the sender and each of these recipients: if the
// upstream now answers any of them otherwise (a recipient refused, the
// connection refused), the message is refused for now (a 451, or the
// upstream's own 4xx) and the client sends it again later, when each reply
// reaches it in its place. Never a 250 for fewer recipients than the client
// was told (those left out would be lost), never the upstream's 5xx for a
// message whose envelope the client was told it took.
awaitable<std::optional<smtp::reply>> upstream_relay::give_again() {
  auto& up = connection();
  log_.info("upstream: giving the transaction again on a new connection: from=<{}> to={}", printable(sender_.str()),
            printable(smtp::join_paths(recipients_), 2000));
  auto r = co_await up.mail(sender_, options_);
  bool mail_taken = r.positive();
  for (std::size_t i = 0; mail_taken && i < recipients_.size() && r.positive(); ++i) {
    const auto& recipient = recipients_[i];
    r = co_await up.rcpt(recipient);
    if (!r.positive()) log_.info("upstream: <{}> refused this time: {}", printable(recipient.str()), printable(r.summary()));
  }
  if (r.positive()) co_return std::nullopt;
  log_.info("upstream: the transaction given again was refused ({}); the message is refused for now",
            printable(r.summary()));
  if (mail_taken) co_await up.reset();  // (RSET: the connection may serve on)
  open_ = false;
  if (r.transient()) co_return smtp::with_status(std::move(r), "2.0.0");
  co_return smtp::reply{451, "4.4.1", "Upstream connection lost, try again later"};
}

awaitable<void> upstream_relay::reset() {
  if (upstream_ && open_) co_await upstream_->reset();
  open_ = false;
  lost_ = false;
  recipients_.clear();
}

awaitable<void> upstream_relay::quit() {
  if (upstream_) co_await upstream_->quit();
  open_ = false;
}

awaitable<void> upstream_relay::finish() {
  if (!upstream_) co_return;
  if (open_) {
    co_await reset();
    co_await quit();
    co_return;
  }
  co_await upstream_->release();
}

}  // namespace portcullis
