#include "metrics/metrics.hpp"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <mutex>
#include <sstream>

namespace portcullis::metrics {

namespace {

const std::vector<double> seconds_fast{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const std::vector<double> seconds_slow{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
const std::vector<double> message_bytes{1024,     4096,      16384,      65536,     262144,
                                        1048576,  4194304,   16777216,   67108864};

// In the order of `family`: a fresh table numbers them so.
std::vector<family_spec> builtin() {
  return {
      {"portcullis_connections_total", "Client connections accepted", kind::counter, {}, {}},
      {"portcullis_connections_open", "Client connections open now", kind::gauge, {}, {}},
      {"portcullis_connections_refused_total", "Client connections refused at accept, by reason", kind::counter,
       {"reason"}, {}},
      {"portcullis_transactions_total", "Mail transactions ended, by outcome", kind::counter, {"outcome"}, {}},
      {"portcullis_replies_total", "Replies to clients, by stage and reply class", kind::counter, {"stage", "class"}, {}},
      {"portcullis_message_size_bytes", "Messages received, by size", kind::histogram, {}, message_bytes},
      {"portcullis_hook_duration_seconds", "Policy hook calls, by policy file and hook", kind::histogram,
       {"policy", "hook"}, seconds_fast},
      {"portcullis_verdicts_total", "Policy hook results, by hook and verdict", kind::counter, {"hook", "verdict"}, {}},
      {"portcullis_hook_timeouts_total", "Policy hooks that ran past policy.timeout", kind::counter, {"policy", "hook"},
       {}},
      {"portcullis_upstream_duration_seconds", "Upstream command round trips, by command", kind::histogram,
       {"command"}, seconds_slow},
      {"portcullis_upstream_failures_total", "Upstream failures, by kind", kind::counter, {"kind"}, {}},
      {"portcullis_upstream_last_reply_timestamp_seconds", "When the upstream last answered (Unix time)", kind::gauge,
       {}, {}},
      {"portcullis_tls_handshakes_total", "TLS handshakes with clients, by version and outcome", kind::counter,
       {"version", "outcome"}, {}},
      {"portcullis_auth_total", "AUTH attempts, by outcome", kind::counter, {"outcome"}, {}},
      {"portcullis_reloads_total", "Configuration reloads (SIGHUP), by outcome", kind::counter, {"outcome"}, {}},
      {"portcullis_sender_checks_total", "SPF, DKIM, DMARC and ARC results", kind::counter, {"check", "result"}, {}},
      {"portcullis_dns_lookups_total", "DNS lookups (checks, pc.dns, the upstream's name), by type and result",
       kind::counter, {"type", "result"}, {}},
      {"portcullis_dns_memo_answers_total", "DNS lookups answered on the asking thread from recent answers",
       kind::counter, {}, {}},
      {"portcullis_metrics_dropped_total", "Series not counted: the metrics table was full", kind::counter, {}, {}},
  };
}

metric_table* table = nullptr;
std::once_flag made;

}  // namespace

void make_process_metrics() {
  std::call_once(made, [] {
    table = new metric_table();  // lives as long as the process (and its forked workers)
    for (const auto& spec : builtin()) table->family(spec);
    // Every outcome shows from the start, at zero: a rate() needs no first event.
    for (const auto outcome : {"delivered", "rejected", "tempfailed", "discarded"})
      table->get(static_cast<std::uint32_t>(family::transactions_total), {outcome});
  });
}

metric_table& process_metrics() {
  make_process_metrics();
  return *table;
}

std::string_view reply_class(int code) {
  switch (code / 100) {
    case 2: return "2xx";
    case 3: return "3xx";
    case 4: return "4xx";
    case 5: return "5xx";
  }
  return "other";
}

std::string exposition() {
  auto& t = process_metrics();
  get(family::dropped_total).set(static_cast<double>(t.dropped()));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, t.collect());
  return out.str();
}

}  // namespace portcullis::metrics
