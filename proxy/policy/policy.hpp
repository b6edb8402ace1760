// The policy await point: at every stage the session asks its policy for a
// verdict and awaits it without blocking its I/O thread (the Python engine
// runs hooks on its own threads and resumes the session on its strand).
// check -> policy -> proceed: the session validates syntax and sequence
// first, asks the policy second, and only then changes state.
//
// A policy may also rewrite: the sender and recipients in `tx`, the
// recipient being added, and the message. Whatever it hands back has been
// validated before the session sees it.
#pragma once

#include <string_view>
#include <vector>

#include "asio.hpp"
#include "session/state.hpp"
#include "smtp/reply.hpp"

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

  bool stops() const { return what == kind::reject || what == kind::tempfail; }
};

class policy {
 public:
  virtual ~policy() = default;
  virtual awaitable<verdict> on_connect(connection_state& conn) = 0;
  virtual awaitable<verdict> on_helo(connection_state& conn, std::string_view hostname) = 0;
  // accept: authenticated; reject/tempfail: refused with that reply; next: the users_file decides.
  virtual awaitable<verdict> on_auth(connection_state& conn, std::string_view mechanism, std::string_view username,
                                     std::string_view password) = 0;
  virtual awaitable<verdict> on_mail(connection_state& conn, transaction& tx) = 0;
  virtual awaitable<verdict> on_rcpt(connection_state& conn, transaction& tx, smtp::address& rcpt) = 0;
  // `message` is the whole message as received (CRLF lines, unstuffed).
  virtual awaitable<verdict> on_data(connection_state& conn, transaction& tx, std::string& message) = 0;
  virtual awaitable<void> on_disconnect(connection_state& conn) = 0;
};

// With no policy files configured, every stage proceeds: the upstream decides.
class upstream_decides final : public policy {
 public:
  awaitable<verdict> on_connect(connection_state&) override { co_return verdict{}; }
  awaitable<verdict> on_helo(connection_state&, std::string_view) override { co_return verdict{}; }
  awaitable<verdict> on_auth(connection_state&, std::string_view, std::string_view, std::string_view) override {
    co_return verdict{};
  }
  awaitable<verdict> on_mail(connection_state&, transaction&) override { co_return verdict{}; }
  awaitable<verdict> on_rcpt(connection_state&, transaction&, smtp::address&) override { co_return verdict{}; }
  awaitable<verdict> on_data(connection_state&, transaction&, std::string&) override { co_return verdict{}; }
  awaitable<void> on_disconnect(connection_state&) override { co_return; }
};

}  // namespace portcullis
