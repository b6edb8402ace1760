// The C++ <-> Python policy protocol, typed once: a job (one hook stage's
// input) and its result. bindings/protocol.cpp binds both structs as
// `_portcullis_core.Job` and `_portcullis_core.Result`, in the daemon and in
// the extension module alike, so Python reads the daemon's own values
// (converted when a hook touches them, not before) and the engine's tests
// build the very objects the daemon sends. docs/policy-engine.md has the
// fields and who fills them.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "checks/results.hpp"
#include "smtp/address.hpp"
#include "store/message_store.hpp"

namespace portcullis {

// A loaded set of policies (one per successful load or reload, counting up).
// The daemon's settings snapshot and its sessions' Python policies are tied
// by this number, so a session never mixes two reloads.
using policy_generation = std::uint64_t;

// The hook stages, in SMTP order (their index is a bit in stage masks).
// Notifications: `delivered` after the upstream's final reply to the message
// (on_delivered), `reset` when a transaction ends however it ends (on_reset).
enum class policy_stage : std::uint8_t { connect, helo, auth, mail, rcpt, data, delivered, reset, disconnect };
inline constexpr std::size_t policy_stage_count = 9;
inline constexpr std::array<std::string_view, policy_stage_count> policy_stage_names = {
    "connect", "helo", "auth", "mail", "rcpt", "data", "delivered", "reset", "disconnect"};
constexpr std::string_view to_string(policy_stage s) { return policy_stage_names[static_cast<std::size_t>(s)]; }

// One hook stage's input, as plain C++ values (built on an I/O thread).
struct policy_job {
  policy_stage stage = policy_stage::connect;
  // (The small fields of the connection and the transaction are here, in
  // the stage's padding: see the size check below.)
  bool tls = false;        // connection
  bool has_tx = false;     // transaction (mail, rcpt, data)
  bool smtputf8 = false;   // MAIL ... SMTPUTF8 (RFC 6531): headers may be UTF-8 (RFC 6532)
  bool body_8bit = false;  // MAIL ... BODY=8BITMIME (RFC 6152)
  // The session's last job was abandoned at its deadline while a hook may
  // run on: the hooks get a new transaction object (see python_policy::run).
  bool fresh_transaction = false;
  unsigned short client_port = 0;
  policy_generation generation = 0;  // the policies to bind a new session to; 0: the current ones
  // connection
  std::string session_id, client_ip, helo;
  std::string tls_version, tls_cipher;
  std::optional<std::string> auth_user;
  // transaction
  // Addresses as the daemon parsed them (Python gets their parts, not text to parse again).
  std::string tx_id;
  smtp::address sender;
  std::vector<smtp::esmtp_param> sender_params;
  std::vector<smtp::address> recipients;
  std::optional<checks::spf_result> spf;     // [checks] spf on: the MAIL FROM's check
  std::optional<checks::dkim_results> dkim;  // [checks] dkim on, from data on: the message's signatures
  std::optional<checks::dmarc_result> dmarc;  // [checks] dmarc on, from data on
  std::optional<checks::arc_result> arc;      // [checks] arc on, from data on
  // stage arguments
  std::string hostname;                          // helo
  std::string mechanism, username, password;     // auth
  smtp::address rcpt;                            // rcpt
  std::vector<smtp::esmtp_param> rcpt_params;    // rcpt
  int reply_code = 0;                            // delivered: the upstream's final reply
  std::string reply_status, reply_text;          // delivered
  // data: the message, shared with the session (no copy). The job owns it:
  // the session may stop waiting (and drop its own reference) before a
  // policy thread takes the job. Python reads it only if a hook does.
  std::shared_ptr<const message_store> message;
};

// A job travels from the session to Python by this one allocation: moved as a pointer, never copied.
using policy_job_ptr = std::unique_ptr<policy_job>;

// glibc's per-thread cache takes blocks of up to 1,032 bytes; a larger one
// is allocated and freed under its arena's lock, the slow way (at 1,048
// bytes, every job was). Keep a job under it: move rare fields behind a
// pointer if one grows it.
static_assert(sizeof(policy_job) <= 1032, "policy_job outgrew glibc's thread cache (see above)");

// A verdict a hook returned, with the stage's code and status filled in.
struct policy_reply {
  std::string kind;  // accept reject tempfail discard redirect
  int code = 0;
  std::string status;
  std::optional<std::string> text;
  std::vector<std::string> addresses;  // redirect
};

// What a loaded generation has at each stage, so the daemon sends no job to
// a stage without hooks and sends each job where it runs best.
struct generation_hooks {
  std::array<unsigned, policy_stage_count> count{};  // hooks per stage
  std::uint32_t async_only = 0;  // bit per stage: every hook is `async def` (runs on the event loop)
  std::uint32_t any_async = 0;   // bit per stage: some hook is `async def`
  bool any(policy_stage s) const { return count[static_cast<std::size_t>(s)] > 0; }
  bool on_loop(policy_stage s) const { return (async_only >> static_cast<unsigned>(s)) & 1U; }
  // Every hook plain: nothing the stage runs waits for the event loop.
  bool all_plain(policy_stage s) const { return !((any_async >> static_cast<unsigned>(s)) & 1U); }
};

// A hook stage's outcome (Python fills it; None from Python is the empty one: "next").
struct policy_result {
  std::optional<std::string> error;  // a hook failed; the traceback (already logged by Python)
  std::optional<policy_reply> verdict;
  std::optional<bool> auth;  // on_auth's True/False
  // rewrites: set when a hook changed them
  std::optional<std::string> sender;
  std::optional<std::vector<std::string>> recipients;
  std::optional<std::string> message;
  // Or, for the commonest edit, only the header fields a hook put on top of
  // the message as received (whole CRLF-ended fields): the daemon puts them
  // above its own copy, and the message itself is neither read nor copied.
  std::optional<std::string> message_prefix;
  // With message_prefix, where the message as received goes on after it: 0,
  // all of it (fields put on top); else the start of its body, the prefix
  // then being a whole new header section (a header edit: the body, however
  // big, is neither read into Python nor copied back).
  std::size_t message_keep_from = 0;
  std::optional<std::string> dkim_sign;  // tx.dkim_sign: "" for False, else the domain
  std::optional<bool> arc_seal;          // tx.arc_seal: False
  // The policy file whose hook gave the verdict or the error ("": none did), for the log.
  std::string decided_by;
  // Answered at its deadline while a hook of it may still run (and write to
  // the transaction object it was given).
  bool abandoned = false;
  // reload: the generation loaded and its hooks
  policy_generation generation = 0;
  generation_hooks hooks;
};

}  // namespace portcullis
