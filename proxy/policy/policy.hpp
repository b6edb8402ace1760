// The policy await point: at every stage the session asks its policy for a
// verdict and awaits it without blocking its I/O thread (the Python engine
// runs hooks on its own threads and resumes the session on its strand).
//
// check -> policy -> proceed: the session validates syntax and sequence
// first, asks the policy second, and only then changes state. The policy's
// inputs are read only; a verdict carries the rewrites the hooks made (the
// sender, the recipients, the message), already validated, and the session
// applies them in its proceed step: state changes in one place, and a stage
// whose rewrites are not all valid changes nothing.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "smtp/reply.hpp"
#include "state/connection_state.hpp"
#include "state/transaction.hpp"
#include "store/message_store.hpp"

namespace portcullis {

struct verdict {
  enum class kind {
    next,      // no opinion: proceed (relay to the upstream)
    accept,    // proceed; a non-empty reply text replaces the upstream's on success
    reject,    // `reply` (5xx) goes to the client, nothing upstream
    tempfail,  // `reply` (4xx) goes to the client, nothing upstream
    discard,   // rcpt: accept but do not deliver to it; data: accept and deliver nothing
    redirect,  // rcpt: accept and deliver to `redirect_to` instead
  };
  kind what = kind::next;
  smtp::reply reply;
  std::vector<smtp::address> redirect_to;

  // Rewrites, applied by the session whatever the verdict (a rewrite made in
  // a stage that rejects still matters if the transaction goes on).
  std::optional<smtp::address> sender;
  std::optional<std::vector<smtp::address>> recipients;
  std::shared_ptr<const std::string> message;  // on_data: the edited message (CRLF lines, unstuffed)
  std::optional<std::string> message_prefix;   // on_data, or: header fields to put on top of the message as received
  std::size_t message_keep_from = 0;           // ... from this byte of it on (its body: a new header section)
  std::optional<std::string> dkim_sign;  // tx.dkim_sign, from MAIL on ("": do not sign; else the domain to sign as)
  std::optional<bool> arc_seal;          // tx.arc_seal, from MAIL on (false: do not seal)
  bool failed = false;  // a hook failed (or returned something invalid): policy.on_error made this verdict
  std::string by;       // the policy file whose hook gave this verdict (or failed), for the log; "" for none

  // "reject by policies/spam.py" for the transaction's summary line; "" for no verdict.
  std::string described() const {
    static constexpr std::string_view names[] = {"", "accept", "reject", "tempfail", "discard", "redirect"};
    std::string out(failed ? "error" : names[static_cast<std::size_t>(what)]);
    if (!out.empty() && !by.empty()) out += " by " + by;
    return out;
  }

  bool stops() const { return what == kind::reject || what == kind::tempfail; }
};

// The message as received (CRLF lines, unstuffed), sealed: nobody writes to
// it any more. Shared, never copied: a policy job may hold it longer than the
// session waits for the job (its memory or spill file lives as long).
using message_ptr = std::shared_ptr<const message_store>;

class policy {
 public:
  virtual ~policy() = default;
  virtual awaitable<verdict> on_connect(const connection_state& conn) = 0;
  virtual awaitable<verdict> on_helo(const connection_state& conn, std::string_view hostname) = 0;
  // accept: authenticated; reject/tempfail: refused with that reply; next: the users_file decides.
  virtual awaitable<verdict> on_auth(const connection_state& conn, std::string_view mechanism,
                                     std::string_view username, std::string_view password) = 0;
  virtual awaitable<verdict> on_mail(const connection_state& conn, const transaction& tx) = 0;
  virtual awaitable<verdict> on_rcpt(const connection_state& conn, const transaction& tx,
                                     const smtp::address& rcpt) = 0;
  virtual awaitable<verdict> on_data(const connection_state& conn, const transaction& tx, message_ptr message) = 0;
  // A notification once the upstream gave its final reply to a message (the
  // transaction as delivered, and that reply); nothing it returns changes anything.
  virtual awaitable<void> on_delivered(const connection_state& conn, const transaction& tx, const smtp::reply& r) {
    co_return;
  }
  // A notification when a transaction (one MAIL accepted) ends: delivered,
  // refused, RSET, a new HELO or STARTTLS.
  virtual awaitable<void> on_reset(const connection_state& conn, const transaction& tx) { co_return; }
  virtual awaitable<void> on_disconnect(const connection_state& conn) = 0;
  // Whether on_delivered or on_reset run anything (and so may take time).
  virtual bool notifies_transactions() const { return false; }
};

// With no policy files configured, every stage proceeds: the upstream decides.
class upstream_decides final : public policy {
 public:
  awaitable<verdict> on_connect(const connection_state&) override { co_return verdict{}; }
  awaitable<verdict> on_helo(const connection_state&, std::string_view) override { co_return verdict{}; }
  awaitable<verdict> on_auth(const connection_state&, std::string_view, std::string_view, std::string_view) override {
    co_return verdict{};
  }
  awaitable<verdict> on_mail(const connection_state&, const transaction&) override { co_return verdict{}; }
  awaitable<verdict> on_rcpt(const connection_state&, const transaction&, const smtp::address&) override {
    co_return verdict{};
  }
  awaitable<verdict> on_data(const connection_state&, const transaction&, message_ptr) override {
    co_return verdict{};
  }
  awaitable<void> on_disconnect(const connection_state&) override { co_return; }
};

}  // namespace portcullis
