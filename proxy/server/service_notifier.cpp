#include "server/service_notifier.hpp"

#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "log.hpp"

namespace portcullis {

namespace {

void notify(const std::string& state) {
  if (!std::getenv("NOTIFY_SOCKET")) return;
  const int rc = sd_notify(0, state.c_str());
  if (rc < 0) spdlog::warn("sd_notify: {}", std::strerror(-rc));
}

std::string status_line(std::string_view status) {
  std::string s(status);
  for (char& c : s)
    if (c == '\n') c = ' ';  // one STATUS= line: a newline would start another assignment
  return "STATUS=" + s;
}

}  // namespace

void notify_ready(std::string_view status) { notify("READY=1\n" + status_line(status)); }

void notify_reloading(std::string_view status) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const auto usec = static_cast<unsigned long long>(now.tv_sec) * 1000000ULL + static_cast<unsigned long long>(now.tv_nsec) / 1000;
  notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\n" + status_line(status));
}

void notify_stopping(std::string_view status) { notify("STOPPING=1\n" + status_line(status)); }

void notify_status(std::string_view status) { notify(status_line(status)); }

void forget_notify_socket() { unsetenv("NOTIFY_SOCKET"); }

}  // namespace portcullis
