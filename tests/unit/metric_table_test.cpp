// The metrics table: families, labelled series, histogram buckets, what a
// full table drops, the exposition prometheus-cpp writes from it, and one
// table shared by processes forked after it was made (the daemon's workers).
#include "metrics/metric_table.hpp"

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <sys/wait.h>
#include <unistd.h>

#include <limits>
#include <sstream>
#include <string>

namespace portcullis::metrics {
namespace {

std::string text_of(const metric_table& t) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, t.collect());
  return out.str();
}

TEST(MetricTable, CountersByLabelAndTheExposition) {
  metric_table t(8, 64);
  const auto tx = t.family({"mail_tx_total", "Transactions", kind::counter, {"outcome"}, {}});
  const auto conns = t.family({"mail_connections_total", "Connections", kind::counter, {}, {}});
  EXPECT_NE(tx, conns);
  t.get(tx, {"delivered"}).inc();
  t.get(tx, {"delivered"}).inc(2);
  t.get(tx, {"rejected"}).inc();
  EXPECT_EQ(t.get(tx, {"delivered"}).value(), 3);
  const auto text = text_of(t);
  EXPECT_NE(text.find("# TYPE mail_tx_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("mail_tx_total{outcome=\"delivered\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("mail_tx_total{outcome=\"rejected\"} 1"), std::string::npos) << text;
  // A family without labels shows at zero before anything happened.
  EXPECT_NE(text.find("mail_connections_total 0"), std::string::npos) << text;
}

TEST(MetricTable, LabelValuesAreEscapedAndCut) {
  metric_table t(8, 64);
  const auto f = t.family({"odd_total", "", kind::counter, {"v"}, {}});
  t.get(f, {"a\"b\\c\nd"}).inc();  // the newline is a control character: '?'
  t.get(f, {"del\x7f" "c1\xc2\x85" "e\xc2\xa0"}).inc();  // DEL and C1 too; U+00A0 is no control
  const auto text = text_of(t);
  EXPECT_NE(text.find("odd_total{v=\"a\\\"b\\\\c?d\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("odd_total{v=\"del?c1?e\xc2\xa0\"} 1"), std::string::npos) << text;
  const std::string long_value(1000, 'x');
  t.get(f, {long_value}).inc();
  t.get(f, {long_value + "y"}).inc();  // the same series once cut
  EXPECT_EQ(t.get(f, {long_value}).value(), 2);
  // Cut where a UTF-8 sequence would be split: before the sequence, never inside it.
  for (std::size_t pad = 185; pad < 195; ++pad) {
    const std::string utf8 = std::string(pad, 'z') + "\xc3\xa9\xe2\x82\xac" + std::string(20, 'z');
    t.get(f, {utf8}).inc();
    const auto shown = text_of(t);
    const auto at = shown.find("odd_total{v=\"" + std::string(std::min(pad, max_label_text - 2), 'z'));
    ASSERT_NE(at, std::string::npos) << pad;
    const auto value = shown.substr(at + 13, shown.find('"', at + 13) - at - 13);
    EXPECT_LE(value.size(), max_label_text - 2) << pad;
    EXPECT_EQ(utf8.compare(0, value.size(), value), 0) << pad;  // a prefix of what was given
    const auto next = static_cast<unsigned char>(utf8[value.size()]);
    EXPECT_NE(next & 0xC0, 0x80) << pad;  // and it ends at a character boundary
  }
  EXPECT_THROW(t.get(f, {"a", "b"}), std::invalid_argument);  // one label, two values
}

TEST(MetricTable, LongValuesAreCutEachToItsShareAndEveryLabelKeepsItsValue) {
  metric_table t(8, 64);
  const auto f = t.family({"hook_total", "", kind::counter, {"policy", "hook"}, {}});
  const std::string path = "/" + std::string(400, 'p') + "/policy.py";
  t.get(f, {path, "on_rcpt"}).inc();
  t.get(f, {path, "on_data"}).inc(2);
  EXPECT_EQ(t.get(f, {path, "on_rcpt"}).value(), 1);  // two series, not one with hook=""
  EXPECT_EQ(t.get(f, {path, "on_data"}).value(), 2);
  const auto text = text_of(t);
  EXPECT_NE(text.find("\",hook=\"on_rcpt\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("\",hook=\"on_data\"} 2"), std::string::npos) << text;
  // Both long: each gets half the room.
  const std::string a(300, 'a'), b(300, 'b');
  t.get(f, {a, b}).inc();
  const auto both = text_of(t);
  const auto at = both.find("hook_total{policy=\"a");
  ASSERT_NE(at, std::string::npos) << both;
  const auto line = both.substr(at, both.find('\n', at) - at);
  EXPECT_EQ(line, "hook_total{policy=\"" + std::string(94, 'a') + "\",hook=\"" + std::string(94, 'b') + "\"} 1");
}

TEST(MetricTable, HelpTextIsEscapedAsTheExpositionFormatWants) {
  metric_table t(8, 64);
  t.family({"seen_total", "Messages seen.\nCounted in on_rcpt \\ per recipient\nbogus_metric 1e9", kind::counter,
            {}, {}});
  const auto text = text_of(t);
  EXPECT_NE(text.find("# HELP seen_total Messages seen.\\nCounted in on_rcpt \\\\ per recipient\\nbogus_metric 1e9\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("\nbogus_metric"), std::string::npos) << text;  // no sample of its own
}

TEST(MetricTable, HistogramBuckets) {
  metric_table t(8, 64);
  const auto h = t.family({"lat_seconds", "Latency", kind::histogram, {}, {0.1, 1}});
  for (const double v : {0.05, 0.1, 0.5, 2.0}) t.get(h).observe(v);
  const auto families = t.collect();
  ASSERT_EQ(families.size(), 1u);
  const auto& m = families[0].metric.at(0).histogram;
  EXPECT_EQ(m.sample_count, 4u);
  EXPECT_DOUBLE_EQ(m.sample_sum, 2.65);
  ASSERT_EQ(m.bucket.size(), 3u);
  EXPECT_EQ(m.bucket[0].cumulative_count, 2u);  // le=0.1 holds 0.1 itself
  EXPECT_EQ(m.bucket[1].cumulative_count, 3u);
  EXPECT_EQ(m.bucket[2].cumulative_count, 4u);
  EXPECT_EQ(m.bucket[2].upper_bound, std::numeric_limits<double>::infinity());
  EXPECT_NE(text_of(t).find("lat_seconds_bucket{le=\"+Inf\"} 4"), std::string::npos);
  // NaN and infinities are no observations: neither in a bucket nor in the sum.
  t.get(h).observe(std::numeric_limits<double>::quiet_NaN());
  t.get(h).observe(std::numeric_limits<double>::infinity());
  t.get(h).observe(-std::numeric_limits<double>::infinity());
  const auto after = t.collect()[0].metric.at(0).histogram;
  EXPECT_EQ(after.sample_count, 4u);
  EXPECT_DOUBLE_EQ(after.sample_sum, 2.65);
  EXPECT_EQ(after.bucket[0].cumulative_count, 2u);
}

TEST(MetricTable, FamiliesAreCheckedAndFoundAgain) {
  metric_table t(4, 64);
  const family_spec spec{"hits_total", "Hits", kind::counter, {"list"}, {}};
  EXPECT_EQ(t.family(spec), t.family(spec));  // a reload, another worker: the same family
  auto other = spec;
  other.labels = {"zone"};
  EXPECT_THROW(t.family(other), std::invalid_argument);
  EXPECT_THROW(t.family({"1bad", "", kind::counter, {}, {}}), std::invalid_argument);
  EXPECT_THROW(t.family({"ok_total", "", kind::counter, {"__reserved"}, {}}), std::invalid_argument);
  EXPECT_THROW(t.family({"h", "", kind::histogram, {"le"}, {1}}), std::invalid_argument);
  EXPECT_THROW(t.family({"h", "", kind::histogram, {}, {2, 1}}), std::invalid_argument);
  EXPECT_THROW(t.family({"h", "", kind::histogram, {}, {}}), std::invalid_argument);
  EXPECT_THROW(t.family({"c", "", kind::counter, {}, {1}}), std::invalid_argument);
  t.family({"a", "", kind::gauge, {}, {}});
  t.family({"b", "", kind::gauge, {}, {}});
  t.family({"c", "", kind::gauge, {}, {}});
  EXPECT_THROW(t.family({"d", "", kind::gauge, {}, {}}), std::length_error);
}

TEST(MetricTable, NoTwoFamiliesShareASampleName) {
  // Checked by the table, under its lock: a worker declaring a clashing family sees
  // the other's even if both declare at once (the exposition would hold the sample twice).
  metric_table t(8, 64);
  t.family({"req_seconds", "", kind::histogram, {}, {1}});
  EXPECT_THROW(t.family({"req_seconds_count", "", kind::gauge, {}, {}}), std::invalid_argument);
  EXPECT_THROW(t.family({"req_seconds_bucket", "", kind::counter, {}, {}}), std::invalid_argument);
  t.family({"mails_total", "", kind::gauge, {}, {}});
  EXPECT_THROW(t.family({"mails", "", kind::counter, {}, {}}), std::invalid_argument);  // its _total
  EXPECT_THROW(t.family({"req_seconds_sum", "", kind::counter, {}, {}}), std::invalid_argument);
  t.family({"req", "", kind::histogram, {}, {1}});  // req_sum, req_count...: none is another's
  t.family({"req_seconds_total", "", kind::gauge, {}, {}});
}

TEST(MetricTable, AFullTableDropsAndCountsWhatItCannotHold) {
  metric_table t(2, 8);
  const auto f = t.family({"per_client_total", "", kind::counter, {"client"}, {}});
  for (int i = 0; i < 20; ++i) t.get(f, {std::to_string(i)}).inc();
  EXPECT_EQ(t.dropped(), 12u);
  EXPECT_FALSE(t.get(f, {"new"}));
  t.get(f, {"new"}).inc();  // a null series does nothing
  EXPECT_EQ(t.collect()[0].metric.size(), 8u);
}

TEST(MetricTable, ForkedProcessesCountIntoOneTable) {
  metric_table t(8, 256);
  const auto f = t.family({"msgs_total", "", kind::counter, {"worker"}, {}});
  const auto all = t.family({"all_total", "", kind::counter, {}, {}});
  constexpr int children = 4, each = 10000;
  for (int c = 0; c < children; ++c) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (int i = 0; i < each; ++i) {
        t.get(all).inc();
        t.get(f, {std::to_string(i % 3)}).inc();
      }
      _exit(0);
    }
  }
  for (int c = 0; c < children; ++c) {
    int status = 0;
    wait(&status);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(t.get(all).value(), children * each);
  double sum = 0;
  for (const auto* w : {"0", "1", "2"}) sum += t.get(f, {w}).value();
  EXPECT_EQ(sum, children * each);
  EXPECT_EQ(t.collect()[0].metric.size(), 3u);  // each series made once, however many raced to make it
}

}  // namespace
}  // namespace portcullis::metrics
