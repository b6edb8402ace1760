// The daemon's Prometheus metrics, summed over every worker process: the
// counters, gauges and histograms live in one anonymous shared mapping made
// before the workers fork (as the client table and pc.store's memory
// backend do), so any worker can answer a scrape with the totals of all of
// them, and a restarted worker's counts are not lost.
//
// A family (a metric name with its help, type, label names and, for a
// histogram, bucket bounds) is registered once; a series is one family's
// set of label values. Both tables are open-addressing hashes whose slots,
// once taken, are never given back: a lookup reads without the lock
// (a slot is published by a release store of its `used` word, last), and
// only adding a new one takes the process-shared robust mutex. Values are
// atomics updated in place, so counting costs one hash probe and one
// atomic add, and no worker ever waits on another.
//
// A full table drops what it cannot hold (and counts that in
// portcullis_metrics_dropped_total) rather than fail the mail it measures.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace prometheus {
struct MetricFamily;
}

namespace portcullis {
class shared_mapping;
}

namespace portcullis::metrics {

enum class kind : std::uint8_t { counter, gauge, histogram };

inline constexpr std::size_t max_name = 64;        // a metric or label name, NUL included
inline constexpr std::size_t max_help = 200;
inline constexpr std::size_t max_labels = 4;       // label names per family
inline constexpr std::size_t max_label_text = 192;  // a series' label values, joined
inline constexpr std::size_t max_buckets = 16;     // a histogram's finite bounds
inline constexpr std::size_t default_families = 256;
inline constexpr std::size_t default_series = 4096;

// What a family is. Registering the same name again with another
// description is refused (std::invalid_argument).
struct family_spec {
  std::string name;
  std::string help;
  metrics::kind kind = kind::counter;
  std::vector<std::string> labels;  // label names
  std::vector<double> buckets;      // histogram: increasing finite upper bounds (+Inf is implied)
};

struct family_slot;
struct series_slot;

// One series, ready to count. Null (a dropped series) does nothing.
class series {
 public:
  series() = default;
  explicit series(series_slot* s, const family_slot* f) : slot_(s), family_(f) {}
  void inc(double by = 1) const;          // counter, gauge
  void set(double value) const;           // gauge
  void observe(double value) const;       // histogram
  double value() const;                   // counter, gauge; a histogram's sum
  explicit operator bool() const { return slot_ != nullptr; }

 private:
  series_slot* slot_ = nullptr;
  const family_slot* family_ = nullptr;
};

class metric_table {
 public:
  explicit metric_table(std::size_t families = default_families, std::size_t series = default_series);
  ~metric_table();
  metric_table(const metric_table&) = delete;
  metric_table& operator=(const metric_table&) = delete;

  // The family's number (the same in every process); throws
  // std::invalid_argument for a bad name, labels or buckets, or a name
  // registered before with another description; std::length_error when full.
  std::uint32_t family(const family_spec& spec);
  // The series of `family` with these label values (as many as it has
  // label names; a value is cut at what the table holds). Null when full.
  series get(std::uint32_t family, std::span<const std::string_view> values);
  series get(std::uint32_t family, std::initializer_list<std::string_view> values = {}) {
    return get(family, std::span<const std::string_view>(values.begin(), values.size()));
  }

  // Every family with its series, for the exposition.
  std::vector<prometheus::MetricFamily> collect() const;
  std::uint64_t dropped() const;

 private:
  struct header;
  series_slot* find_series(std::uint32_t family, std::string_view key, std::uint64_t hash, bool create);

  std::size_t family_capacity_, series_capacity_;
  std::unique_ptr<shared_mapping> map_;
  header* header_ = nullptr;
  family_slot* families_ = nullptr;
  series_slot* series_ = nullptr;
};

}  // namespace portcullis::metrics
