#include "metrics/metric_table.hpp"

#include <prometheus/check_names.h>
#include <prometheus/metric_family.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "store/shared_memory.hpp"

namespace portcullis::metrics {

// Zero-filled memory is an empty slot: the atomics below are valid at zero
// bits, so the mapping is never written to before a slot is taken (its
// pages stay untouched, and out of every worker's RSS, until used).
struct family_slot {
  std::atomic<std::uint32_t> used;  // 1 once the fields below are written
  metrics::kind kind;
  std::uint8_t label_count;
  std::uint8_t bucket_count;
  char name[max_name];
  char help[max_help];
  char labels[max_labels][max_name];
  double bounds[max_buckets];
};

struct series_slot {
  std::atomic<std::uint32_t> used;  // its family's number + 1 once `key` is written
  char key[max_label_text];         // the label values, each ended by '\x1f'
  std::atomic<double> value;        // counter, gauge; a histogram's sum
  std::atomic<std::uint64_t> count;  // a histogram's observations
  std::atomic<std::uint64_t> buckets[max_buckets];  // per bound, not cumulative
};

struct metric_table::header {
  pthread_mutex_t mutex;  // taken only to add a family or a series
  std::uint64_t seed;
  std::atomic<std::uint32_t> families;  // slots 0 .. families-1 are taken
  std::atomic<std::uint64_t> dropped;
};

namespace {

constexpr char separator = '\x1f';
constexpr std::size_t probe_limit = 64;

void copy_name(char (&to)[max_name], const std::string& from) { std::memcpy(to, from.c_str(), from.size() + 1); }

// Label values joined, each ended by the separator; control characters
// (the separator among them) become '?'. Values too long for the slot
// together are each cut to an equal share (at a character boundary), so that
// every label keeps a value of its own. Written into `out` (no allocation: a
// metric is counted several times a message); the view is of `out`.
std::string_view series_key(std::span<const std::string_view> values, char (&out)[max_label_text]) {
  std::size_t total = values.size();  // (the separators)
  for (const auto v : values) total += v.size();
  const std::size_t share = total < max_label_text ? std::string_view::npos
                                                   : (max_label_text - 1 - values.size()) / values.size();
  std::size_t size = 0;
  for (const auto v : values) {
    std::size_t keep = std::min(v.size(), share);
    if (keep < v.size())
      while (keep > 0 && (static_cast<unsigned char>(v[keep]) & 0xC0) == 0x80) --keep;  // not inside a UTF-8 sequence
    // Control characters as '?': C0, DEL and C1 (U+0080-U+009F, 0xC2 0x80-0x9F in UTF-8).
    const auto kept = v.substr(0, keep);
    for (std::size_t i = 0; i < kept.size(); ++i) {
      const auto c = static_cast<unsigned char>(kept[i]);
      const bool c1 = c == 0xC2 && i + 1 < kept.size() && (static_cast<unsigned char>(kept[i + 1]) & 0xE0) == 0x80;
      out[size++] = c < 0x20 || c == 0x7F || c1 ? '?' : kept[i];
      if (c1) ++i;
    }
    out[size++] = separator;
  }
  return {out, size};
}

// HELP text as the exposition format wants it: a backslash and a line feed
// escaped (the serializer writes it as it is; a line feed would end the line).
std::string escaped_help(std::string_view help) {
  std::string out;
  for (const char c : help) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::uint64_t hash_of(std::uint64_t seed, std::uint32_t family, std::string_view key) {
  std::uint64_t h = 0xcbf29ce484222325ULL ^ seed ^ (std::uint64_t{family} << 32);  // FNV-1a, then mixed
  for (const char c : key) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return mix64(h);
}

void check_spec(const family_spec& s) {
  const auto bad = [&](const std::string& why) { throw std::invalid_argument("metric " + s.name + ": " + why); };
  if (s.name.size() >= max_name || !prometheus::CheckMetricName(s.name)) bad("not a Prometheus metric name");
  if (s.help.size() >= max_help) bad("help text over " + std::to_string(max_help - 1) + " bytes");
  if (s.labels.size() > max_labels) bad("more than " + std::to_string(max_labels) + " labels");
  for (std::size_t i = 0; i < s.labels.size(); ++i) {
    const auto& l = s.labels[i];
    if (l.size() >= max_name || !prometheus::CheckLabelName(l) || (s.kind == kind::histogram && l == "le"))
      bad("label " + l + " is not a label name it may have");
    if (std::find(s.labels.begin(), s.labels.begin() + static_cast<long>(i), l) != s.labels.begin() + static_cast<long>(i))
      bad("label " + l + " twice");
  }
  if (s.kind != kind::histogram) {
    if (!s.buckets.empty()) bad("only a histogram has buckets");
    return;
  }
  if (s.buckets.empty() || s.buckets.size() > max_buckets) bad("a histogram needs 1 to " + std::to_string(max_buckets) + " buckets");
  for (std::size_t i = 0; i < s.buckets.size(); ++i)
    if (!std::isfinite(s.buckets[i]) || (i > 0 && s.buckets[i] <= s.buckets[i - 1]))
      bad("bucket bounds must be finite and increasing");
}

// The sample names a family puts in an exposition, as suffixes of its name
// (a counter's _total too: OpenMetrics names its sample so).
std::span<const std::string_view> sample_suffixes(kind k) {
  static constexpr std::string_view counter[] = {"", "_total"}, gauge[] = {""},
                                    histogram[] = {"", "_bucket", "_sum", "_count"};
  using suffixes = std::span<const std::string_view>;
  return k == kind::counter ? suffixes(counter) : k == kind::gauge ? suffixes(gauge) : suffixes(histogram);
}

constexpr std::string_view kind_name(kind k) {
  return k == kind::counter ? "counter" : k == kind::gauge ? "gauge" : "histogram";
}

// A sample of `name` (a `k`) that family `other` also has, or "": two families
// sharing a sample name make a broken exposition (two TYPE lines for it).
std::string shared_sample(std::string_view name, kind k, std::string_view other, kind other_kind) {
  for (const auto mine : sample_suffixes(k)) {
    std::string sample(name);
    sample += mine;
    for (const auto theirs : sample_suffixes(other_kind))
      if (sample.size() == other.size() + theirs.size() && sample.starts_with(other) && sample.ends_with(theirs))
        return sample;
  }
  return {};
}

bool same_spec(const family_slot& f, const family_spec& s) {
  if (f.kind != s.kind || f.label_count != s.labels.size() || f.bucket_count != s.buckets.size()) return false;
  for (std::size_t i = 0; i < s.labels.size(); ++i)
    if (s.labels[i] != f.labels[i]) return false;
  return std::equal(s.buckets.begin(), s.buckets.end(), f.bounds);
}

prometheus::MetricType type_of(kind k) {
  switch (k) {
    case kind::counter: return prometheus::MetricType::Counter;
    case kind::gauge: return prometheus::MetricType::Gauge;
    case kind::histogram: return prometheus::MetricType::Histogram;
  }
  return prometheus::MetricType::Untyped;
}

}  // namespace

void series::inc(double by) const {
  if (slot_) slot_->value.fetch_add(by, std::memory_order_relaxed);
}

void series::set(double value) const {
  if (slot_) slot_->value.store(value, std::memory_order_relaxed);
}

double series::value() const { return slot_ ? slot_->value.load(std::memory_order_relaxed) : 0; }

void series::observe(double value) const {
  if (!slot_ || !std::isfinite(value)) return;  // (NaN counts in the lowest bucket; either makes the sum NaN for good)
  const auto* end = family_->bounds + family_->bucket_count;
  const auto* bound = std::lower_bound(family_->bounds, end, value);  // the first bound >= value (Prometheus' "le")
  if (bound != end) slot_->buckets[bound - family_->bounds].fetch_add(1, std::memory_order_relaxed);
  slot_->value.fetch_add(value, std::memory_order_relaxed);
  slot_->count.fetch_add(1, std::memory_order_relaxed);
}

metric_table::metric_table(std::size_t families, std::size_t series)
    : family_capacity_(families), series_capacity_(series) {
  const std::size_t header_bytes = align_up(sizeof(header), alignof(family_slot));
  const std::size_t family_bytes = align_up(families * sizeof(family_slot), alignof(series_slot));
  map_ = std::make_unique<shared_mapping>(header_bytes + family_bytes + series * sizeof(series_slot), "metrics");
  header_ = new (map_->data()) header{};
  init_robust_mutex(&header_->mutex);
  header_->seed = random_seed();
  families_ = reinterpret_cast<family_slot*>(map_->data() + header_bytes);
  series_ = reinterpret_cast<series_slot*>(map_->data() + header_bytes + family_bytes);
}

metric_table::~metric_table() = default;

std::uint32_t metric_table::family(const family_spec& spec) {
  check_spec(spec);
  robust_lock lock(&header_->mutex, "metrics");
  const auto n = header_->families.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto& f = families_[i];
    if (spec.name != f.name) {
      // (Checked here, under the table's lock: two workers declaring at once see each other.)
      if (const auto sample = shared_sample(spec.name, spec.kind, f.name, f.kind); !sample.empty())
        throw std::invalid_argument("metric name '" + spec.name + "': its sample " + sample + " would be one of the " +
                                    std::string(kind_name(f.kind)) + " '" + f.name + "' too");
      continue;
    }
    if (!same_spec(f, spec))
      throw std::invalid_argument("metric " + spec.name + " was declared before with another type, labels or buckets");
    return i;
  }
  if (n == family_capacity_) throw std::length_error("metrics: no room for another family (" + spec.name + ")");
  auto& f = families_[n];
  f.kind = spec.kind;
  f.label_count = static_cast<std::uint8_t>(spec.labels.size());
  f.bucket_count = static_cast<std::uint8_t>(spec.buckets.size());
  copy_name(f.name, spec.name);
  std::memcpy(f.help, spec.help.c_str(), spec.help.size() + 1);
  for (std::size_t i = 0; i < spec.labels.size(); ++i) copy_name(f.labels[i], spec.labels[i]);
  std::copy(spec.buckets.begin(), spec.buckets.end(), f.bounds);
  f.used.store(1, std::memory_order_release);
  header_->families.store(n + 1, std::memory_order_release);
  // A family without labels has its one series from the start: a scrape shows it at zero.
  if (spec.labels.empty()) find_series(n, "", hash_of(header_->seed, n, ""), true);
  return n;
}

series_slot* metric_table::find_series(std::uint32_t family, std::string_view key, std::uint64_t hash, bool create) {
  const std::uint32_t tag = family + 1;
  const std::size_t probes = std::min(probe_limit, series_capacity_);
  for (std::size_t i = 0; i < probes; ++i) {
    auto& s = series_[(hash + i) % series_capacity_];
    const auto used = s.used.load(std::memory_order_acquire);
    if (used == 0) {
      if (!create) return nullptr;  // slots fill in probe order and are never freed: it is not further on
      std::memcpy(s.key, key.data(), key.size());
      s.key[key.size()] = '\0';
      s.used.store(tag, std::memory_order_release);
      return &s;
    }
    if (used == tag && key == s.key) return &s;
  }
  return nullptr;
}

series metric_table::get(std::uint32_t family, std::span<const std::string_view> values) {
  if (family >= header_->families.load(std::memory_order_acquire)) return {};
  const auto& f = families_[family];
  if (values.size() != f.label_count) throw std::invalid_argument(std::string("metric ") + f.name + ": wrong number of label values");
  char buffer[max_label_text];
  const std::string_view key = series_key(values, buffer);
  const auto hash = hash_of(header_->seed, family, key);
  auto* s = find_series(family, key, hash, false);
  if (!s) {
    robust_lock lock(&header_->mutex, "metrics");
    s = find_series(family, key, hash, true);  // again under the lock: another may have added it meanwhile
  }
  if (!s) {
    header_->dropped.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
  return series(s, &f);
}

std::uint64_t metric_table::dropped() const { return header_->dropped.load(std::memory_order_relaxed); }

std::vector<prometheus::MetricFamily> metric_table::collect() const {
  const auto n = header_->families.load(std::memory_order_acquire);
  std::vector<std::map<std::string, prometheus::ClientMetric>> by_family(n);  // by key: a stable order
  for (std::size_t i = 0; i < series_capacity_; ++i) {
    const auto& s = series_[i];
    const auto used = s.used.load(std::memory_order_acquire);
    if (used == 0 || used > n) continue;
    const auto& f = families_[used - 1];
    prometheus::ClientMetric m;
    std::string_view rest = s.key;
    for (std::size_t l = 0; l < f.label_count; ++l) {
      const auto end = rest.find(separator);
      m.label.push_back({f.labels[l], std::string(rest.substr(0, end))});
      rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
    }
    const double value = s.value.load(std::memory_order_relaxed);
    if (f.kind == kind::counter) m.counter.value = value;
    if (f.kind == kind::gauge) m.gauge.value = value;
    if (f.kind == kind::histogram) {
      std::uint64_t cumulative = 0;
      for (std::size_t b = 0; b < f.bucket_count; ++b) {
        cumulative += s.buckets[b].load(std::memory_order_relaxed);
        m.histogram.bucket.push_back({cumulative, f.bounds[b]});
      }
      // Read while others count: the total is never below a bucket.
      const auto count = std::max(cumulative, s.count.load(std::memory_order_relaxed));
      m.histogram.bucket.push_back({count, std::numeric_limits<double>::infinity()});
      m.histogram.sample_count = count;
      m.histogram.sample_sum = value;
    }
    by_family[used - 1].emplace(s.key, std::move(m));
  }
  std::vector<prometheus::MetricFamily> out;
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto& f = families_[i];
    prometheus::MetricFamily mf{f.name, escaped_help(f.help), type_of(f.kind), {}};
    for (auto& [key, m] : by_family[i]) mf.metric.push_back(std::move(m));
    out.push_back(std::move(mf));
  }
  return out;
}

}  // namespace portcullis::metrics
