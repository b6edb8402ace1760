#include "log.hpp"

#include <fmt/chrono.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>

#include "log_json.hpp"
#include "log_text.hpp"

namespace portcullis {

thread_local const log_context* current_log_context = nullptr;

namespace {

constexpr const char* line_pattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v";
// A worker's lines (server.workers > 1) name its process.
constexpr const char* worker_line_pattern = "%Y-%m-%dT%H:%M:%S.%e [%P] %^%l%$ %v";

// The pattern formatter, fed the message with its control characters escaped:
// no source (a client's text in a C++ line, a policy's pc.log line) can start
// a new line or send escape sequences to a terminal.
class escaping_formatter final : public spdlog::formatter {
 public:
  explicit escaping_formatter(std::string pattern = line_pattern)
      : pattern_(std::move(pattern)), inner_(std::make_unique<spdlog::pattern_formatter>(pattern_)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    if (is_log_safe(payload)) {
      inner_->format(msg, dest);
      return;
    }
    const std::string escaped = escape_log_text(payload);
    spdlog::details::log_msg copy = msg;
    copy.payload = spdlog::string_view_t(escaped.data(), escaped.size());
    inner_->format(copy, dest);
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<escaping_formatter>(pattern_); }

 private:
  std::string pattern_;
  std::unique_ptr<spdlog::formatter> inner_;
};

// [log] format = "json": one object a line (log_json.hpp), the time in UTC.
// The object's strings are JSON-escaped, so a control character a client
// sent cannot end the record either.
class json_formatter final : public spdlog::formatter {
 public:
  explicit json_formatter(bool with_pid) : with_pid_(with_pid) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto since_epoch = msg.time.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
    const std::string time = fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", fmt::gmtime(static_cast<std::time_t>(seconds.count())), millis);
    const auto level = spdlog::level::to_string_view(msg.level);
    json_log_context context;
    if (const auto* c = current_log_context) context = {c->client, c->stage, c->tx};
    const std::string line = json_log_record(time, std::string_view(level.data(), level.size()),
                                             with_pid_ ? static_cast<long>(::getpid()) : 0,
                                             std::string_view(msg.payload.data(), msg.payload.size()), context);
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<json_formatter>(with_pid_); }

 private:
  bool with_pid_;
};

bool json_lines = false;  // [log] format = "json" (set before any worker is forked)

// Never freed (see lasting_logger): reachable from here, so not a leak to LeakSanitizer.
std::shared_ptr<spdlog::logger>* lasting = nullptr;

}  // namespace

void init_logging() {
  auto logger = spdlog::stderr_logger_mt("portcullis");
  logger->set_formatter(std::make_unique<escaping_formatter>());
  spdlog::set_default_logger(logger);
  spdlog::flush_on(spdlog::level::info);
  if (const char* lvl = std::getenv("PORTCULLIS_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(lvl));
  if (!lasting) lasting = new std::shared_ptr<spdlog::logger>(logger);
}

void log_as_json() {
  json_lines = true;
  spdlog::default_logger()->set_formatter(std::make_unique<json_formatter>(false));
}

void log_as_worker() {
  if (json_lines) {
    spdlog::default_logger()->set_formatter(std::make_unique<json_formatter>(true));
  } else {
    spdlog::default_logger()->set_formatter(std::make_unique<escaping_formatter>(worker_line_pattern));
  }
}

spdlog::logger& lasting_logger() {
  if (!lasting) lasting = new std::shared_ptr<spdlog::logger>(spdlog::default_logger());
  return **lasting;
}

void log_lines(spdlog::level::level_enum level, std::string_view prefix, std::string_view text) {
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  for (;;) {
    const auto end = text.find('\n');
    spdlog::log(level, "{}{}", prefix, text.substr(0, end));
    if (end == std::string_view::npos) return;
    text.remove_prefix(end + 1);
  }
}

std::string printable(std::string_view s, std::size_t max, std::string_view also) {
  const auto plain = [also](unsigned char c) {
    return c >= 0x20 && c != 0x7f && c != '\\' && also.find(static_cast<char>(c)) == std::string_view::npos;
  };
  const std::string_view shown = s.substr(0, max);
  // Most text needs no escape: copied in one go (up to a byte that may
  // start a C1 control or U+2028/U+2029 too: looked at one by one).
  const auto first_escape = std::find_if_not(shown.begin(), shown.end(), [&plain](unsigned char c) {
    return plain(c) && c != 0xc2 && c != 0xe2;
  });
  std::string out(shown.begin(), first_escape);
  for (auto i = static_cast<std::size_t>(first_escape - shown.begin()); i < shown.size(); ++i) {
    const auto c = static_cast<unsigned char>(shown[i]);
    if (const auto n = c >= 0x80 ? unicode_break_at(shown, i) : 0) {  // (log_text.hpp)
      append_unicode_escape(out, shown, i, n);
      i += n - 1;
    } else if (plain(c)) {
      out += static_cast<char>(c);
    } else {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace portcullis
