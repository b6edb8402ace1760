#include "log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

namespace portcullis {

void init_logging() {
  auto logger = spdlog::stderr_logger_mt("portcullis");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::flush_on(spdlog::level::info);
  if (const char* lvl = std::getenv("PORTCULLIS_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(lvl));
}

std::string printable(std::string_view s, std::size_t max) {
  std::string out;
  for (unsigned char c : s.substr(0, max)) {
    if (c >= 0x20 && c != 0x7f && c != '\\') {
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
