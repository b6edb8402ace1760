#include "policy/python_policy.hpp"

#include "log.hpp"
#include "net/network.hpp"
#include "net/session_executor.hpp"
#include "smtp/message_check.hpp"
#include "smtp/text.hpp"

namespace portcullis {

namespace {

// Async hooks: Python enforces policy.timeout per hook (and cancels); this
// is the backstop for an event loop that cannot answer at all (an async hook
// spinning in C with the GIL held).
constexpr std::chrono::seconds loop_safety_margin{5};

policy_job_ptr base_job(policy_stage stage, const connection_state& conn) {
  auto job = std::make_unique<policy_job>();
  auto& j = *job;
  j.stage = stage;
  j.session_id = conn.id;
  j.client_ip = conn.client_ip;
  j.client_port = conn.client.port();
  j.helo = conn.helo;
  j.tls = conn.tls;
  j.tls_version = conn.tls_version;
  j.tls_cipher = conn.tls_cipher;
  j.auth_user = conn.auth_user;
  return job;
}

void add_transaction(policy_job& j, const transaction& tx) {
  j.has_tx = true;
  j.tx_id = tx.id;
  j.sender = tx.sender;
  j.sender_params = tx.sender_params;
  j.recipients = tx.recipients;
  // Python encodes the header values a policy generates per RFC 2047 unless
  // the transaction may carry UTF-8 headers (RFC 6532).
  j.smtputf8 = tx.options.smtputf8;
  j.body_8bit = tx.options.body_8bit;
  j.spf = tx.spf;
  j.dkim = tx.dkim;
  j.dmarc = tx.dmarc;
  j.arc = tx.arc;
}

std::optional<smtp::address> address_from(const std::string& s, bool utf8, bool null_ok) {
  if (s.empty()) return null_ok ? std::optional(smtp::address{}) : std::nullopt;
  if (smtp::equals_nocase(s, "postmaster") && !null_ok) return smtp::address{s, ""};
  return smtp::parse_valid_mailbox(s, utf8);
}

// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
constexpr std::size_t max_reply_line = 512;

bool text_fits(const std::string& text, std::size_t status_size) {
  return 3 + 1 + status_size + 1 + text.size() + 2 <= max_reply_line && smtp::is_safe_reply_text(text) &&
         smtp::is_valid_utf8(text);
}

// A reply a policy may give: the right class, a second digit 0-5 (RFC 5321
// §4.2.1), a matching enhanced status, and clean text that fits one line.
bool valid_reply(int code, const std::string& status, const std::optional<std::string>& text, char cls) {
  if (code / 100 != cls - '0' || (code / 10) % 10 > 5) return false;
  if (!smtp::is_enhanced_status(status) || status[0] != cls) return false;
  return !text || text_fits(*text, status.size());
}

// Policies hand back lists; each mailbox is delivered once.
void add_once(std::vector<smtp::address>& list, smtp::address a) {
  for (const auto& x : list)
    if (smtp::same_mailbox(x, a)) return;
  list.push_back(std::move(a));
}

}  // namespace

python_policy::python_policy(std::shared_ptr<python_engine> engine, const config& cfg,
                             policy_generation generation)
    : engine_(std::move(engine)),
      generation_(generation),
      hooks_(engine_->hooks(generation)),
      timeout_(cfg.policy.timeout),
      accept_on_error_(cfg.policy.on_error == on_error_mode::accept),
      max_recipients_(cfg.server.max_recipients),
      hostname_(cfg.server.hostname),
      max_message_size_(cfg.server.max_message_size) {}

// The last session of this settings snapshot is gone (or it never had one).
python_policy::~python_policy() { engine_->release(generation_); }

awaitable<std::unique_ptr<policy_result>> python_policy::run(policy_job_ptr job) {
  job->generation = generation_;
  const auto stage = job->stage;
  const auto route = hooks_.on_loop(stage)     ? python_engine::route::loop
                     : hooks_.all_plain(stage) ? python_engine::route::in_place
                                               : python_engine::route::worker;
  // A plain hook cannot be stopped: its job's deadline is policy.timeout per
  // hook from now (time queued behind busy workers included), and the
  // session goes on without it. Async hooks are cancelled by Python at
  // policy.timeout; the deadline here is only a backstop.
  const auto hooks = static_cast<long>(hooks_.count[static_cast<std::size_t>(stage)]);
  const auto deadline = timeout_ * std::max(1L, hooks) +
                        (route == python_engine::route::loop ? loop_safety_margin : std::chrono::seconds(0));
  const std::string session_id = job->session_id;  // (a short string: no allocation)
  {
    std::lock_guard lock(known_mutex_);
    if (stage == policy_stage::disconnect) {
      known_.erase(session_id);
      abandoned_.erase(session_id);
    } else {
      known_.insert(session_id);
      // A hook of the job abandoned before may still write to the transaction
      // object it got, into this stage's rewrites: this job's hooks get a new one.
      if (job->has_tx && !abandoned_.empty() && abandoned_.erase(session_id)) job->fresh_transaction = true;
    }
  }
  // The engine answers exactly once: with the result, or at the deadline
  // with what became of the job (it keeps the deadlines: no timer per job
  // here). The answer resumes the session on its strand.
  auto ex = co_await asio::this_coro::executor;
  auto result = co_await asio::async_initiate<const asio::use_awaitable_t<>, void(std::unique_ptr<policy_result>)>(
      [&](auto handler) {
        auto resume = std::make_shared<decltype(handler)>(std::move(handler));  // std::function copies
        auto done = [resume, ex](policy_result&& r) {
          auto go_on = [resume, r = std::make_unique<policy_result>(std::move(r))]() mutable {
            std::move(*resume)(std::move(r));
          };
          if (python_engine::completing_in_place()) {
            asio::dispatch(ex, std::move(go_on));  // the session's strand is free: it goes on right here
          } else {
            asio::defer(ex, std::move(go_on));
          }
        };
        const auto by = std::chrono::steady_clock::now() + deadline;
        if (route == python_engine::route::worker) {
          engine_->submit(std::move(job), route, by, timeout_, std::move(done));
          return;
        }
        // Submitted from outside the session's strand (sessions run on
        // strands of the daemon's io_context): the engine may run the hooks
        // (plain ones, or an async job's first step) right there, on this I/O
        // thread, and a deadline answer still reaches the session while a
        // hook runs on. As soon as the strand is left, on this thread
        // (net/session_executor.hpp), else posted.
        auto submit = [engine = engine_, job = std::move(job), route, by, timeout = timeout_,
                       done = std::move(done)]() mutable {
          engine->submit(std::move(job), route, by, timeout, std::move(done));
        };
        if (run_after_strand(ex, submit)) return;
        auto& io = static_cast<asio::io_context&>(asio::query(ex, asio::execution::context));
        asio::defer(io, std::move(submit));
      },
      asio::use_awaitable);
  if (result->abandoned && stage != policy_stage::disconnect) {
    std::lock_guard lock(known_mutex_);
    abandoned_.insert(session_id);
  }
  co_return result;
}

verdict python_policy::on_error() const {
  verdict v;
  v.failed = true;
  if (accept_on_error_) return v;
  v.what = verdict::kind::tempfail;
  v.reply = smtp::reply{451, "4.3.0", "Temporary policy failure, try again later"};
  return v;
}

verdict python_policy::failure(const connection_state& conn, const std::string& stage, const std::string& why) const {
  session_log(conn.id).error("policy error in on_{}: {}", stage, why);
  return on_error();
}

verdict python_policy::failure_for_good(const connection_state& conn, const std::string& stage, const std::string& why,
                                        smtp::reply refusal) const {
  auto v = failure(conn, stage, why);
  if (v.what == verdict::kind::tempfail) {
    v.what = verdict::kind::reject;
    v.reply = std::move(refusal);
  }
  return v;
}

verdict python_policy::too_big(const connection_state& conn, std::size_t size) const {
  // (RFC 1870 §6.1; Postfix's cleanup says the same of a milter's edit that grew too big.)
  return failure_for_good(conn, "data",
                          "the message from policy has " + std::to_string(size) + " octets; server.max_message_size is " +
                              std::to_string(max_message_size_),
                          smtp::reply{552, "5.3.4", "Message size exceeds fixed maximum message size"});
}

verdict python_policy::too_many(const connection_state& conn, const std::string& stage, const std::string& why) const {
  return failure_for_good(conn, stage, why + "; server.max_recipients is " + std::to_string(max_recipients_),
                          smtp::reply{550, "5.5.3", "Too many recipients"});  // RFC 3463
}

verdict python_policy::decide(const std::string& stage, const connection_state& conn, policy_result&& result,
                              const transaction* tx) const {
  auto by = std::move(result.decided_by);
  auto v = verdict_of(stage, conn, std::move(result), tx);
  v.by = std::move(by);
  return v;
}

verdict python_policy::verdict_of(const std::string& stage, const connection_state& conn, policy_result&& result,
                                  const transaction* tx) const {
  if (result.error) {
    // Python logged the traceback with the session id; one line here says what we did about it.
    session_log(conn.id).warn("policy error in on_{} ({}): {}", stage,
                              accept_on_error_ ? "accepting, per policy.on_error" : "451 4.3.0",
                              std::string_view(*result.error).substr(0, result.error->find('\n')));
    return on_error();
  }
  const bool utf8 = tx && tx->options.smtputf8;
  verdict v;
  // Rewrites: every one validated before the verdict carries any.
  if (tx && result.sender) {
    auto s = address_from(*result.sender, utf8, true);
    if (!s) return failure(conn, stage, "invalid sender from policy: " + printable(*result.sender));
    v.sender = std::move(*s);
  }
  if (tx && result.recipients) {
    std::vector<smtp::address> rcpts;
    for (const auto& r : *result.recipients) {
      auto a = address_from(r, utf8, false);
      if (!a) return failure(conn, stage, "invalid recipient from policy: " + printable(r));
      add_once(rcpts, std::move(*a));
    }
    if (rcpts.size() > max_recipients_)
      return too_many(conn, stage, "policy set " + std::to_string(rcpts.size()) + " recipients");
    v.recipients = std::move(rcpts);
  }
  if (result.dkim_sign) {
    if (!result.dkim_sign->empty() && !is_domain(*result.dkim_sign))
      return failure(conn, stage, "tx.dkim_sign is not a domain: " + printable(*result.dkim_sign));
    v.dkim_sign = smtp::to_lower(*result.dkim_sign);
  }
  if (result.arc_seal) v.arc_seal = result.arc_seal;
  if (stage == "data" && result.message) {
    if (auto problem = smtp::message_problem(*result.message))
      return failure(conn, stage, "invalid message from policy: " + *problem);
    if (result.message->size() > max_message_size_) return too_big(conn, result.message->size());
    v.message = std::make_shared<const std::string>(std::move(*result.message));
  }
  if (stage == "data" && result.message_prefix) {
    if (result.message) return failure(conn, stage, "the policy gave both a message and fields for its top");
    const auto& prefix = *result.message_prefix;
    // Fields on top of the message, or (kept from its body on) a whole header section, empty line included.
    const bool whole_head = prefix.ends_with("\r\n\r\n") || prefix == "\r\n";
    auto problem = result.message_keep_from == 0 ? smtp::header_fields_problem(prefix)
                   : !whole_head ? std::optional<std::string>("its header section does not end with an empty line")
                                 : smtp::message_problem(prefix);
    if (problem) return failure(conn, stage, "invalid message from policy: " + *problem);
    v.message_prefix = std::move(*result.message_prefix);
    v.message_keep_from = result.message_keep_from;
  }

  if (!result.verdict) return v;
  const auto& r = *result.verdict;
  const auto& k = r.kind;
  if (k == "accept") {
    if (r.text && !text_fits(*r.text, std::string_view("2.0.0").size()))
      return failure(conn, stage, "invalid accept text");
    v.what = verdict::kind::accept;
    if (r.text) v.reply = smtp::reply{250, "", *r.text};
  } else if (k == "reject" || k == "tempfail") {
    const char cls = k == "reject" ? '5' : '4';
    if (!valid_reply(r.code, r.status, r.text, cls))
      return failure(conn, stage, "invalid " + k + " verdict (code " + std::to_string(r.code) + ")");
    v.what = k == "reject" ? verdict::kind::reject : verdict::kind::tempfail;
    v.reply = smtp::reply{r.code, r.status, r.text.value_or(k == "reject" ? "Rejected" : "Try again later")};
  } else if (k == "discard" && (stage == "rcpt" || stage == "data")) {
    v.what = verdict::kind::discard;
  } else if (k == "redirect" && stage == "rcpt") {
    if (r.addresses.empty()) return failure(conn, stage, "redirect without addresses");
    for (const auto& to : r.addresses) {
      auto a = address_from(to, utf8, false);
      if (!a) return failure(conn, stage, "invalid redirect address: " + printable(to));
      add_once(v.redirect_to, std::move(*a));
    }
    if (v.redirect_to.size() > max_recipients_)
      return too_many(conn, stage, "redirect to " + std::to_string(v.redirect_to.size()) + " addresses");
    v.what = verdict::kind::redirect;
  } else {
    return failure(conn, stage, "verdict '" + printable(k) + "' is not allowed in on_" + stage);
  }
  return v;
}

awaitable<verdict> python_policy::on_connect(const connection_state& conn) {
  if (!has_hooks(policy_stage::connect)) co_return verdict{};
  auto result = co_await run(base_job(policy_stage::connect, conn));
  auto v = decide("connect", conn, std::move(*result), nullptr);
  // pc.accept(text) makes the greeting "220 HOSTNAME TEXT": one line of at most 512 octets too.
  if (v.what == verdict::kind::accept && 4 + hostname_.size() + 1 + v.reply.text().size() + 2 > max_reply_line)
    v = failure(conn, "connect", "invalid accept text: the greeting \"220 " + hostname_ + " TEXT\" passes 512 octets");
  // RFC 5321 §3.1/§4.2: a greeting refusal is 554 (or 421 for a temporary
  // one); or 521, RFC 7504's "does not accept mail", when the policy says so.
  if (v.what == verdict::kind::reject && v.reply.code != 521) v.reply.code = 554;
  if (v.what == verdict::kind::tempfail) v.reply.code = 421;
  co_return v;
}

awaitable<verdict> python_policy::on_helo(const connection_state& conn, std::string_view hostname) {
  if (!has_hooks(policy_stage::helo)) co_return verdict{};
  auto job = base_job(policy_stage::helo, conn);
  job->hostname = std::string(hostname);
  auto result = co_await run(std::move(job));
  co_return decide("helo", conn, std::move(*result), nullptr);
}

awaitable<verdict> python_policy::on_auth(const connection_state& conn, std::string_view mechanism,
                                          std::string_view username, std::string_view password) {
  if (!has_hooks(policy_stage::auth)) co_return verdict{};
  auto job = base_job(policy_stage::auth, conn);
  job->mechanism = std::string(mechanism);
  job->username = std::string(username);
  job->password = std::string(password);
  auto result = co_await run(std::move(job));
  // A failing hook never authenticates anyone: with on_error = "accept" the users_file decides.
  if (result->error) {
    auto v = failure(conn, "auth", "hook error (see the traceback above)");
    co_return v;
  }
  const auto auth = result->auth;
  auto v = decide("auth", conn, std::move(*result), nullptr);
  if (v.what == verdict::kind::next && auth) {
    // True / False from the hook, without a verdict of its own.
    v.what = *auth ? verdict::kind::accept : verdict::kind::reject;
    if (!*auth) v.reply = smtp::reply{535, "5.7.8", "Authentication credentials invalid"};
  }
  // A success is always 235 2.7.0 (RFC 4954 §6); pc.accept(text) chooses only the words.
  if (v.what == verdict::kind::accept)
    v.reply = smtp::reply{235, "2.7.0", v.reply.text().empty() ? std::string("Authentication successful") : v.reply.text()};
  co_return v;
}

awaitable<verdict> python_policy::on_mail(const connection_state& conn, const transaction& tx) {
  if (!has_hooks(policy_stage::mail)) co_return verdict{};
  auto job = base_job(policy_stage::mail, conn);
  add_transaction(*job, tx);
  auto result = co_await run(std::move(job));
  co_return decide("mail", conn, std::move(*result), &tx);
}

awaitable<verdict> python_policy::on_rcpt(const connection_state& conn, const transaction& tx,
                                          const smtp::address& rcpt) {
  if (!has_hooks(policy_stage::rcpt)) co_return verdict{};
  auto job = base_job(policy_stage::rcpt, conn);
  add_transaction(*job, tx);
  job->rcpt = rcpt;
  auto result = co_await run(std::move(job));
  co_return decide("rcpt", conn, std::move(*result), &tx);
}

awaitable<verdict> python_policy::on_data(const connection_state& conn, const transaction& tx, message_ptr message) {
  if (!has_hooks(policy_stage::data)) co_return verdict{};
  auto job = base_job(policy_stage::data, conn);
  add_transaction(*job, tx);
  const message_ptr received = message;
  job->message = std::move(message);  // shared, not copied: the job owns it as long as it needs it
  auto result = co_await run(std::move(job));
  auto v = decide("data", conn, std::move(*result), &tx);
  // A new header section (checked whole by decide) goes over the body as
  // received: that body must start right after the received header section
  // (no line cut in two, nothing of the received header read as body).
  if (v.message_prefix && v.message_keep_from != 0 &&
      received->head_size(v.message_keep_from) != v.message_keep_from)
    co_return failure(conn, "data", "invalid message from policy: the body it keeps does not start where the received one does");
  const auto received_size = received->size();
  if (const auto size = v.message_prefix ? v.message_prefix->size() + received_size - v.message_keep_from : 0;
      size > max_message_size_) {
    auto refused = too_big(conn, size);
    refused.by = v.by;
    co_return refused;
  }
  co_return v;
}

awaitable<void> python_policy::on_delivered(const connection_state& conn, const transaction& tx, const smtp::reply& r) {
  if (!has_hooks(policy_stage::delivered)) co_return;
  auto job = base_job(policy_stage::delivered, conn);
  add_transaction(*job, tx);
  job->reply_code = r.code;
  job->reply_status = r.status;
  for (const auto& line : r.lines) job->reply_text += (job->reply_text.empty() ? "" : "\n") + line;
  auto result = co_await run(std::move(job));
  if (result->error) session_log(conn.id).warn("policy error in delivered: {}", *result->error);
}

awaitable<void> python_policy::on_reset(const connection_state& conn, const transaction& tx) {
  if (!has_hooks(policy_stage::reset)) co_return;
  auto job = base_job(policy_stage::reset, conn);
  add_transaction(*job, tx);
  auto result = co_await run(std::move(job));
  if (result->error) session_log(conn.id).warn("policy error in reset: {}", *result->error);
}

awaitable<void> python_policy::on_disconnect(const connection_state& conn) {
  if (!has_hooks(policy_stage::disconnect)) {
    // No hook to run: Python only needs to drop its record, and nobody waits for that.
    bool known;
    {
      std::lock_guard lock(known_mutex_);
      known = known_.erase(conn.id) > 0;
      abandoned_.erase(conn.id);  // (run() erases it at a disconnect job; this one has none)
    }
    if (known) engine_->forget(conn.id);
    co_return;
  }
  auto result = co_await run(base_job(policy_stage::disconnect, conn));
  if (result->error) session_log(conn.id).warn("policy error in disconnect: {}", *result->error);
}

}  // namespace portcullis
