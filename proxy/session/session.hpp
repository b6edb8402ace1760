// One SMTP client session: the state machine (RFC 5321 §4.1.4 ordering),
// relaying to the upstream in lock step. One coroutine owns the client
// socket and the upstream connection; the read loop alone writes replies.
#pragma once

#include <memory>
#include <string>

#include "asio.hpp"
#include "auth/users_file.hpp"
#include "log.hpp"
#include "net/line_stream.hpp"
#include "net/tls_context.hpp"
#include "session/relay_guard.hpp"
#include "session/state.hpp"
#include "smtp/command.hpp"
#include "smtp/reply.hpp"

namespace portcullis {

class server_context;
class policy;
struct config;
struct verdict;

class session : public std::enable_shared_from_this<session> {
 public:
  // `implicit_tls`: a listen_tls connection, TLS from the first byte (RFC 8314).
  session(tcp::socket socket, tcp::endpoint client, std::string id, server_context& server, bool implicit_tls);
  ~session();

  awaitable<void> run();
  // Shutdown: an idle session closes now (421), a busy one after its transaction.
  // Call on the session's executor.
  void stop();
  asio::any_io_executor executor() { return client_.socket().get_executor(); }

 private:
  using reply = smtp::reply;

  awaitable<reply> dispatch(const smtp::command& cmd);
  awaitable<reply> on_helo(const smtp::command& cmd, bool extended);
  awaitable<reply> on_mail(const smtp::command& cmd);
  awaitable<reply> on_rcpt(const smtp::command& cmd);
  awaitable<reply> on_data(const smtp::command& cmd);
  awaitable<reply> on_rset(const smtp::command& cmd);
  awaitable<reply> on_starttls(const smtp::command& cmd);
  awaitable<reply> on_auth(const smtp::command& cmd);
  // on_auth's check of the credentials: the policy first, then the users_file.
  awaitable<reply> check_credentials(std::string_view mechanism, const std::string& user, const std::string& password);
  bool auth_offered() const;
  std::vector<std::string> ehlo_lines() const;
  // The TLS handshake as server; false (logged) when it failed and the session must end.
  awaitable<bool> handshake();
  // The PROXY v1/v2 header (server.proxy_protocol); false (logged) when the session must end.
  awaitable<bool> read_proxy_header();

  // Reads the message after 354; nullopt when the session must end (timeout, lost client).
  awaitable<std::optional<reply>> receive_message();
  awaitable<reply> deliver();
  // Redoes the upstream transaction when policies changed the envelope after
  // it went upstream; returns the upstream's refusal, if any.
  awaitable<std::optional<reply>> sync_upstream_envelope();
  awaitable<void> reset_transaction();
  upstream& upstream_connection();

  void queue(const reply& r);
  reply refused_by_policy(const std::string& what, const verdict& v);
  awaitable<bool> flush();
  void log_transaction(const reply& outcome, std::size_t size);

  std::shared_ptr<const config> cfg_;
  std::shared_ptr<policy> policy_;
  std::shared_ptr<tls_server_context> tls_;
  std::shared_ptr<tls_client_context> upstream_tls_;
  std::shared_ptr<const relay_guard> relay_;
  std::shared_ptr<const auth::users_file> users_;
  std::shared_ptr<const network_list> proxy_trusted_;
  std::size_t auth_failures_ = 0;
  server_context& server_;
  bool implicit_tls_;
  session_log log_;
  line_stream client_;
  connection_state conn_;
  transaction tx_;
  std::unique_ptr<upstream> upstream_;
  std::string message_;  // the message being received; reused across transactions
  std::string out_;      // replies waiting to be written (RFC 2920 §3.2: one write per batch)
  std::size_t errors_ = 0;
  bool closing_ = false;
  bool stopping_ = false;
};

}  // namespace portcullis
