// Logging to stderr through spdlog. Every line of a session carries its id,
// and every line is one line: control characters in it, whatever wrote them,
// are escaped by the formatter (log_text.hpp).
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace portcullis {

void init_logging();
// [log] format = "json": one JSON object a line from now on (log_json.hpp).
void log_as_json();
// In a worker process (server.workers > 1): every line carries the process id.
void log_as_worker();

// The daemon's logger, for threads that may outlive main() (a policy thread
// left behind in a hook stuck in C code): it is never destroyed, whereas
// spdlog's registry goes with the other statics at exit.
spdlog::logger& lasting_logger();

// Logs `text` a line at a time, each after `prefix` ("reload: "): a Python
// traceback in an error reads as in a terminal (one line would escape its newlines).
void log_lines(spdlog::level::level_enum level, std::string_view prefix, std::string_view text);

// Where a session stands, for its JSON lines ([log] format = "json" adds
// these fields to each; text lines keep "SESSION: event").
struct log_context {
  std::string client;      // "[192.0.2.1]"
  std::string_view stage;  // "greeted", "transaction", ...
  std::string tx;          // the transaction's id while one is open
};

// The context of the session line being written on this thread (null: none).
extern thread_local const log_context* current_log_context;

// A session's (or its upstream's) logger: the id in front of every line.
class session_log {
 public:
  explicit session_log(std::string id) : id_(std::move(id)) {}
  const std::string& id() const { return id_; }
  // Changed by the session only (its lines are written while it waits for them, never at once).
  log_context& context() { return context_; }

  template <class... A>
  void info(fmt::format_string<A...> f, A&&... a) const { log(spdlog::level::info, f, std::forward<A>(a)...); }
  template <class... A>
  void warn(fmt::format_string<A...> f, A&&... a) const { log(spdlog::level::warn, f, std::forward<A>(a)...); }
  template <class... A>
  void error(fmt::format_string<A...> f, A&&... a) const { log(spdlog::level::err, f, std::forward<A>(a)...); }
  template <class... A>
  void debug(fmt::format_string<A...> f, A&&... a) const { log(spdlog::level::debug, f, std::forward<A>(a)...); }
  // Whether debug (info) lines are written: test it before working out a
  // line's arguments where they cost more than the test (copies, escaping).
  static bool debugging() { return spdlog::should_log(spdlog::level::debug); }
  static bool informing() { return spdlog::should_log(spdlog::level::info); }

 private:
  template <class... A>
  void log(spdlog::level::level_enum lvl, fmt::format_string<A...> f, A&&... a) const {
    if (!spdlog::should_log(lvl)) return;
    const auto* outer = std::exchange(current_log_context, &context_);  // spdlog formats on this thread
    spdlog::log(lvl, "{}: {}", id_, fmt::format(f, std::forward<A>(a)...));
    current_log_context = outer;
  }
  std::string id_;
  log_context context_;
};

// Shows untrusted text (a client's command, an upstream reply) safely in a log line.
// `also`: characters escaped (\xNN) besides the controls and '\\'.
std::string printable(std::string_view s, std::size_t max = 200, std::string_view also = {});

// Characters that end or start a field of a key=value line (log_json.hpp):
// a value that holds client text (an address, a HELO name) has them escaped,
// so it stays one field and can never set or shadow another.
inline constexpr std::string_view log_field_delimiters = " \"<>";

// A word of a key=value line (the transaction summary, a check's result):
// printable(), with no space, quote or angle bracket left (\x20 \x22 \x3c \x3e).
inline std::string log_word(std::string_view s, std::size_t max = 200) {
  return printable(s, max, log_field_delimiters);
}

}  // namespace portcullis
