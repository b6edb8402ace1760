// The policy that asks the operator's Python hooks (through python_engine),
// re-validates whatever they hand back, and maps failures per policy.on_error.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "config/config.hpp"
#include "policy/policy.hpp"
#include "policy/python_engine.hpp"

namespace portcullis {

class python_policy final : public policy {
 public:
  // The policies of `generation` (loaded for `cfg`): every session made with
  // this object runs on them, whatever reloads come later.
  python_policy(std::shared_ptr<python_engine> engine, const config& cfg, policy_generation generation);
  ~python_policy() override;

  awaitable<verdict> on_connect(const connection_state& conn) override;
  awaitable<verdict> on_helo(const connection_state& conn, std::string_view hostname) override;
  awaitable<verdict> on_auth(const connection_state& conn, std::string_view mechanism, std::string_view username,
                             std::string_view password) override;
  awaitable<verdict> on_mail(const connection_state& conn, const transaction& tx) override;
  awaitable<verdict> on_rcpt(const connection_state& conn, const transaction& tx, const smtp::address& rcpt) override;
  awaitable<verdict> on_data(const connection_state& conn, const transaction& tx, message_ptr message) override;
  awaitable<void> on_delivered(const connection_state& conn, const transaction& tx, const smtp::reply& r) override;
  awaitable<void> on_reset(const connection_state& conn, const transaction& tx) override;
  awaitable<void> on_disconnect(const connection_state& conn) override;
  bool notifies_transactions() const override {
    return has_hooks(policy_stage::delivered) || has_hooks(policy_stage::reset);
  }

 private:
  // Whether the stage has hooks; a stage without any costs no job.
  bool has_hooks(policy_stage stage) const { return hooks_.any(stage); }
  // Submits the job and waits, on the session's strand, for its result; past
  // the deadline the result is abandoned and counts as an error. The result
  // comes by pointer: held by value (480 bytes), it made this coroutine's
  // frame and its callers' too large for Asio to recycle (it keeps frames of
  // up to 1,020 bytes), a trip to malloc's slow path for each.
  awaitable<std::unique_ptr<policy_result>> run(policy_job_ptr job);
  // The result as a verdict carrying its rewrites, all validated (syntax and
  // the server's limits) before any is handed on: anything invalid makes the
  // whole result a hook error, so a failed stage rewrites nothing.
  // The verdict names the policy file whose hook gave it (for the log).
  verdict decide(const std::string& stage, const connection_state& conn, policy_result&& result,
                 const transaction* tx) const;
  verdict verdict_of(const std::string& stage, const connection_state& conn, policy_result&& result,
                     const transaction* tx) const;
  // What policy.on_error says a failed hook means: proceed, or 451 4.3.0.
  verdict on_error() const;
  // A failure found here (invalid verdict or rewrite): logged, then on_error().
  verdict failure(const connection_state& conn, const std::string& stage, const std::string& why) const;
  // A failure the same at every try (the rewrite would be made again): its
  // refusal, unless on_error accepts, is `refusal`, for good; a 451 had the
  // client retry until the message bounced, days later.
  verdict failure_for_good(const connection_state& conn, const std::string& stage, const std::string& why,
                           smtp::reply refusal) const;
  // An edited message of `size` octets, past server.max_message_size: 552 5.3.4.
  verdict too_big(const connection_state& conn, std::size_t size) const;
  // More recipients than server.max_recipients (`why` says how): 550 5.5.3.
  verdict too_many(const connection_state& conn, const std::string& stage, const std::string& why) const;

  std::shared_ptr<python_engine> engine_;
  policy_generation generation_;
  generation_hooks hooks_;
  std::chrono::seconds timeout_;  // policy.timeout, per hook call
  // Sessions Python holds a record of (it got a job of theirs): their end is
  // told to Python even when no hook runs at disconnect.
  std::mutex known_mutex_;
  std::unordered_set<std::string> known_;
  // Sessions whose last job was abandoned while a hook may run on: their
  // next transaction job gets a fresh transaction object.
  std::unordered_set<std::string> abandoned_;
  bool accept_on_error_;
  std::size_t max_recipients_;
  std::string hostname_;  // server.hostname: a greeting's own text goes after it
  std::uint64_t max_message_size_;
};

}  // namespace portcullis
