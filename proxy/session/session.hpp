// One SMTP client session: the protocol with the client (RFC 5321 §4.1.4
// ordering, one method per verb), in stages. One coroutine owns the client
// socket; the read loop alone writes replies. Every command goes through
// check (syntax, sequence) -> policy -> proceed (the only step that changes
// state). The upstream side of the lock step is upstream_relay's.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "asio.hpp"
#include "log.hpp"
#include "net/line_stream.hpp"
#include "session/environment.hpp"
#include "session/upstream_relay.hpp"
#include "smtp/command.hpp"
#include "smtp/reply.hpp"
#include "state/connection_state.hpp"
#include "state/transaction.hpp"

namespace portcullis {

class session : public std::enable_shared_from_this<session> {
 public:
  enum class stage {
    connected,    // before the greeting (PROXY header, implicit TLS handshake, on_connect)
    greeted,      // 220 sent; waiting for EHLO/HELO
    ready,        // EHLO/HELO said; no transaction
    transaction,  // MAIL accepted; RCPTs
    data,         // receiving and delivering the message
    closing,      // the last reply is out or about to be
  };

  // `implicit_tls`: a listen_tls connection, TLS from the first byte (RFC 8314).
  session(tcp::socket socket, tcp::endpoint client, std::string id, session_environment& env, bool implicit_tls);
  ~session();

  // Serves the client to the end; tidies up (upstream QUIT, on_disconnect)
  // on every way out, exceptions included.
  awaitable<void> run();
  // Shutdown: a session waiting for a command closes now (421); one in a
  // transaction finishes it first. Call on the session's executor.
  // The daemon stops: the session ends once it waits for the client's next
  // command outside a transaction (421). `now`: in a transaction too (the
  // grace period is over): 421, the transaction logged and ended upstream.
  void stop(bool now = false);
  asio::any_io_executor executor() { return client_.socket().get_executor(); }

 private:
  using reply = smtp::reply;

  awaitable<void> serve();
  awaitable<void> finish();
  void set_stage(stage to);

  awaitable<reply> dispatch(const smtp::command& cmd);
  awaitable<reply> on_helo(const smtp::command& cmd, bool extended);
  awaitable<reply> on_mail(const smtp::command& cmd);
  awaitable<reply> on_rcpt(const smtp::command& cmd);
  awaitable<reply> on_data(const smtp::command& cmd);
  awaitable<reply> on_rset(const smtp::command& cmd);
  awaitable<reply> on_starttls(const smtp::command& cmd);
  awaitable<reply> on_auth(const smtp::command& cmd);
  awaitable<reply> on_bdat(const smtp::command& cmd);
  // on_auth's check of the credentials: the policy first, then the users_file.
  awaitable<reply> check_credentials(std::string_view mechanism, const std::string& user, const std::string& password);
  bool auth_offered() const;
  std::vector<std::string> ehlo_lines() const;
  // The TLS handshake as server; false (logged) when it failed and the session must end.
  awaitable<bool> handshake();
  // The PROXY v1/v2 header (server.proxy_protocol); false (logged) when the session must end.
  awaitable<bool> take_proxy_header();

  // Reads the message after 354; nullopt when the session must end (timeout, lost client).
  awaitable<std::optional<reply>> receive_message();
  // The policy, then the upstream; `size` becomes the size of what went (or would have gone) upstream.
  awaitable<reply> deliver(std::size_t& size);
  // `message` without the Authentication-Results fields that claim our
  // hostname (itself when it has none); null when the copy cannot be stored.
  // [dkim_sign]: the DKIM-Signature fields (one a key) for the message going
  // upstream (or none); a reply when the message must not go (signing failed, a policy
  // asked for a key we do not have).
  awaitable<std::optional<reply>> dkim_sign(const message_ptr& message, std::string& field);
  // Has the client gone while its message waited for the checks and policies?
  bool client_left(std::chrono::steady_clock::time_point since);
  reply client_lost_before_delivery();
  // A signature or seal made (its fields into `field`, a log line a
  // selector), not made (a log line), or failed (the 451 for the client).
  std::optional<reply> take_signature(const checks::dkim_signing& s, std::string_view done, std::string& field) const;
  message_ptr without_claimed_results(message_ptr message);
  // Ends the transaction, here and upstream.
  awaitable<void> reset_transaction();
  // proceed: a verdict's rewrites become the transaction's.
  void apply_rewrites(const verdict& v);

  void queue(const reply& r);
  // A reply to the client's command (or connection), counted under its stage
  // (portcullis_replies_total), then queued.
  void answer(std::string_view stage, const reply& r);
  reply refused_by_policy(const std::string& what, const verdict& v);
  awaitable<bool> flush();
  void log_spf(const checks::spf_result& spf) const;
  void log_dmarc(const checks::dmarc_result& dmarc) const;
  void log_dkim(const checks::dkim_results& dkim) const;
  void log_arc(const checks::arc_result& arc) const;
  // The transaction's summary line (once), with what the policies said.
  void log_transaction(const reply& outcome, std::size_t size);
  void log_summary(std::string_view upstream, std::string_view queue_id, std::size_t size, std::string_view outcome);
  void log_command(const smtp::command& cmd, std::string_view line) const;
  // What a policy said at MAIL, a RCPT or DATA, for the summary line.
  void note_verdict(std::string_view stage, const verdict& v, const smtp::address* rcpt = nullptr);
  // portcullis_transactions_total: once per transaction, whichever way it ends.
  void count_transaction(std::string_view outcome);
  // A transaction ending before its message: counted as refused when each of
  // its RCPTs was (else not counted), and summarised (refused, or abandoned).
  void end_unfinished_transaction();

  std::shared_ptr<const generation> gen_;  // one snapshot for the whole session
  const config& cfg_;
  policy& policy_;
  session_environment& env_;
  bool implicit_tls_;
  session_log log_;
  line_stream client_;
  connection_state conn_;
  transaction tx_;
  upstream_relay relay_;
  stage stage_ = stage::connected;
  // The message being received, then delivered (shared with policy jobs once
  // sealed). Dropped at the end of the transaction: its memory goes back to
  // the budget and its spill file goes.
  std::shared_ptr<message_store> message_;
  // The upstream's final reply to the message just relayed, for on_delivered (cleared after).
  std::optional<reply> upstream_final_;
  std::string out_;                       // replies waiting to be written (RFC 2920 §3.2)
  std::size_t errors_ = 0;           // refusals in the session (its disconnect line)
  std::size_t errors_counted_ = 0;   // those that count toward max_errors: since the last message delivered
  std::size_t rcpt_overshoot_ = 0;   // RCPTs refused past max_recipients in the transaction
  std::size_t auth_failures_ = 0;
  bool stopping_ = false;
  bool stopping_now_ = false;  // stop(true): not even a transaction waits
  bool interruptible_wait_ = false;  // blocked reading the next command or the PROXY header: stop() may wake it
  // The transaction's metrics: counted yet; RCPT refusals (temporary, permanent); discarded by policy.
  bool tx_counted_ = false;
  bool tx_logged_ = false;  // its summary line is written
  bool after_refused_auth_ = false;  // the last command was an AUTH refused (its text is not logged)
  bool rcpt_tempfailed_ = false;
  bool rcpt_rejected_ = false;
  bool discarded_ = false;
};

}  // namespace portcullis
