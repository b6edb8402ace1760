// The daemon's own metrics (docs/metrics.md lists them): families
// registered first, in the order of `family`, in the process's table, which
// the daemon makes before its workers fork (make_process_metrics). Anything
// else that counts (the extension module, unit tests) gets a private table
// on first use.
#pragma once

#include <chrono>
#include <initializer_list>
#include <string_view>

#include "metrics/metric_table.hpp"

namespace portcullis::metrics {

enum class family : std::uint32_t {
  connections_total,
  connections_open,
  connections_refused_total,   // reason
  transactions_total,          // outcome
  replies_total,               // stage, class
  message_size_bytes,
  hook_duration_seconds,       // policy, hook
  verdicts_total,              // hook, verdict
  hook_timeouts_total,         // policy, hook
  upstream_duration_seconds,   // command
  upstream_failures_total,     // kind
  upstream_last_reply_seconds,
  tls_handshakes_total,        // version, outcome
  auth_total,                  // outcome
  reloads_total,               // outcome
  sender_checks_total,         // check, result
  dns_lookups_total,           // type, result
  dns_memo_answers_total,
  dropped_total,
};

void make_process_metrics();
metric_table& process_metrics();

inline series get(family f, std::initializer_list<std::string_view> labels = {}) {
  return process_metrics().get(static_cast<std::uint32_t>(f), labels);
}
inline void count(family f, std::initializer_list<std::string_view> labels = {}) { get(f, labels).inc(); }

// The time since `since`, in seconds, into a histogram.
inline void observe_since(family f, std::initializer_list<std::string_view> labels,
                          std::chrono::steady_clock::time_point since) {
  get(f, labels).observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count());
}

// A reply code's class label: "2xx", "4xx", "5xx".
std::string_view reply_class(int code);

// The exposition of every family (Prometheus text format 0.0.4).
std::string exposition();

}  // namespace portcullis::metrics
