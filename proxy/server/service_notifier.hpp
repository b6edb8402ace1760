// systemd's readiness protocol (sd_notify(3)) for a Type=notify unit: the
// main process (the supervisor with workers, else the one process) says when
// it serves, reloads and stops, and a STATUS= line for `systemctl status`.
// Without NOTIFY_SOCKET in the environment each call does nothing.
#pragma once

#include <string_view>

namespace portcullis {

// READY=1: every listener serves (again, after a reload, accepted or refused).
void notify_ready(std::string_view status);
// RELOADING=1 with MONOTONIC_USEC (systemd 253 and later match the two).
void notify_reloading(std::string_view status);
// STOPPING=1: draining.
void notify_stopping(std::string_view status);
void notify_status(std::string_view status);
// In a worker: only the main process may notify (NotifyAccess=main); the
// socket is no business of a worker or of its policies.
void forget_notify_socket();

}  // namespace portcullis
