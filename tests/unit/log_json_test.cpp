// Table tests for [log] format = "json" (proxy/log_json.hpp): every record is
// one line of valid JSON whatever a client sent, with the session and the
// event's key=value words as fields.
#include "log_json.hpp"

#include "log.hpp"

#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>
#include <string>

namespace portcullis {
namespace {

using nlohmann::json;

json record(std::string_view message, long pid = 0) {
  const std::string line = json_log_record("2026-12-02T16:30:00.123Z", "info", pid, message);
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  // ASCII only: U+2028/U+2029 and C1 controls end lines for Unicode-aware readers.
  EXPECT_TRUE(std::all_of(line.begin(), line.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
      << line;
  return json::parse(line);
}

TEST(LogJson, DaemonLineWithoutSession) {
  const auto r = record("policies loaded: a.py, b.py");
  EXPECT_EQ(r["time"], "2026-12-02T16:30:00.123Z");
  EXPECT_EQ(r["level"], "info");
  EXPECT_EQ(r["msg"], "policies loaded: a.py, b.py");
  EXPECT_FALSE(r.contains("session"));
  EXPECT_FALSE(r.contains("pid"));
  EXPECT_EQ(r.size(), 3u);
}

TEST(LogJson, SessionIdAndPid) {
  const auto r = record("AD7D247676C2: connect from [127.0.0.1]:4000", 4242);
  EXPECT_EQ(r["session"], "AD7D247676C2");
  EXPECT_EQ(r["pid"], 4242);
  EXPECT_EQ(r["msg"], "connect from [127.0.0.1]:4000");
  EXPECT_EQ(record("policy: outside a session")["session"], "policy");
  // Not a session id: the line is the daemon's own.
  EXPECT_FALSE(record("AD7D247676C: x").contains("session"));
  EXPECT_FALSE(record("AD7D247676CZ: x").contains("session"));
}

TEST(LogJson, TransactionSummaryFields) {
  const auto r = record(
      "AD7D247676C2: tx=AD7D247676C2.1 client=[127.0.0.1] helo=vm from=<root@vm> "
      "to=<x@example.test>,<y@example.test> rejected_rcpts=0 size=249 "
      "upstream=\"250 2.0.0 Ok: queued as M744025P5853Q1\" queue_id=M744025P5853Q1 verdict=delivered");
  EXPECT_EQ(r["tx"], "AD7D247676C2.1");
  EXPECT_EQ(r["client"], "[127.0.0.1]");
  EXPECT_EQ(r["helo"], "vm");
  EXPECT_EQ(r["from"], "<root@vm>");
  EXPECT_EQ(r["to"], "<x@example.test>,<y@example.test>");
  EXPECT_EQ(r["rejected_rcpts"], "0");
  EXPECT_EQ(r["size"], "249");
  EXPECT_EQ(r["upstream"], "250 2.0.0 Ok: queued as M744025P5853Q1");
  EXPECT_EQ(r["queue_id"], "M744025P5853Q1");
  EXPECT_EQ(r["verdict"], "delivered");
}

TEST(LogJson, TheSessionsContextOnEveryLine) {
  const json_log_context ctx{"[192.0.2.7]", "transaction", "AD7D247676C2.1"};
  const auto r = json::parse(
      json_log_record("2026-12-02T16:30:00.123Z", "info", 0, "AD7D247676C2: RCPT TO:<x@example.test> refused", ctx));
  EXPECT_EQ(r["client"], "[192.0.2.7]");
  EXPECT_EQ(r["stage"], "transaction");
  EXPECT_EQ(r["tx"], "AD7D247676C2.1");
  // The event's own words win (the summary line says them itself); what is not known is left out.
  const auto s = json::parse(json_log_record("t", "info", 0, "AD7D247676C2: tx=AD7D247676C2.2 client=[10.0.0.1] size=1",
                                             {"[192.0.2.7]", "data", ""}));
  EXPECT_EQ(s["tx"], "AD7D247676C2.2");
  EXPECT_EQ(s["client"], "[10.0.0.1]");
  EXPECT_EQ(s["stage"], "data");
  const auto q = json::parse(json_log_record("t", "info", 0, "AD7D247676C2: connect", {"[192.0.2.7]", "connected", ""}));
  EXPECT_FALSE(q.contains("tx"));
}

TEST(LogJson, FieldsStopAtTheFirstWordThatIsNotKeyValue) {
  const auto r = record("0123456789AB: dkim=fail d=example.test s=sel (body hash did not verify) x=1");
  EXPECT_EQ(r["dkim"], "fail");
  EXPECT_EQ(r["s"], "sel");
  EXPECT_FALSE(r.contains("x"));
  EXPECT_EQ(r["msg"], "dkim=fail d=example.test s=sel (body hash did not verify) x=1");
  // A path is one word (the daemon escapes a quoted local part's space and quote).
  EXPECT_EQ(record("0123456789AB: from=<\\x22a\\x20b\\x22@x.test> size=1")["from"], "<\\x22a\\x20b\\x22@x.test>");
  // A quote inside a quoted value: no field rather than a wrong one.
  const auto q = record("0123456789AB: size=1 upstream=\"250 \"ok\" x\" verdict=delivered");
  EXPECT_EQ(q["size"], "1");
  EXPECT_FALSE(q.contains("upstream"));
  EXPECT_FALSE(q.contains("verdict"));
}

// The summary as session::log_summary writes it: a sender's quoted local
// part that looks like the rest of a summary sets no field and shadows none.
TEST(LogJson, ClientTextInASummaryStaysInItsOwnField) {
  const std::string sender = "\"a> verdict=delivered queue_id=Q1 to=<boss@local.test> x\"@example.test";
  const std::string helo = "h verdict=delivered";
  const auto word = log_word(sender);
  EXPECT_EQ(word.find_first_of(" \"<>"), std::string::npos) << word;
  const auto r = record("0123456789AB: tx=0123456789AB.1 client=[127.0.0.1] helo=" + log_word(helo) + " from=<" +
                        word + "> to=<v@foreign.test> rejected_rcpts=1 size=0 upstream=\"\" queue_id=- verdict=rejected");
  EXPECT_EQ(r["helo"], "h\\x20verdict=delivered");
  EXPECT_EQ(r["from"], "<" + word + ">");
  EXPECT_EQ(r["to"], "<v@foreign.test>");
  EXPECT_EQ(r["queue_id"], "-");
  EXPECT_EQ(r["verdict"], "rejected");
  EXPECT_EQ(r["rejected_rcpts"], "1");
}

TEST(LogJson, LogWordEscapesWhatWouldEndAField) {
  EXPECT_EQ(log_word("plain@example.test"), "plain@example.test");
  EXPECT_EQ(log_word("\"a b\"@x"), "\\x22a\\x20b\\x22@x");
  EXPECT_EQ(log_word("<>\\\n"), "\\x3c\\x3e\\x5c\\x0a");
  EXPECT_EQ(printable("say \"hi\"", 200, "\""), "say \\x22hi\\x22");
  EXPECT_EQ(printable("a\xc2\x85" "b\xe2\x80\xa8" "c\xc3\xa9"), "a\\u0085b\\u2028c\xc3\xa9");
}

TEST(LogJson, FieldsNeverReplaceTheRecordsOwn) {
  const auto r = record("0123456789AB: level=critical time=0 msg=forged session=X");
  EXPECT_EQ(r["level"], "info");
  EXPECT_EQ(r["time"], "2026-12-02T16:30:00.123Z");
  EXPECT_EQ(r["session"], "0123456789AB");
  EXPECT_EQ(r["msg"], "level=critical time=0 msg=forged session=X");
}

TEST(LogJson, ControlCharactersAndBadUtf8StayInOneValidLine) {
  const auto r = record("0123456789AB: AUTH as ann\r\n2026-12-02 info FORGED\x1b[31m \xff\xfe end");
  EXPECT_EQ(r["msg"], "AUTH as ann\r\n2026-12-02 info FORGED\x1b[31m \xef\xbf\xbd\xef\xbf\xbd end");
  EXPECT_EQ(record("0123456789AB: helo=\xc3\xa9t\xc3\xa9")["helo"], "\xc3\xa9t\xc3\xa9");  // UTF-8 kept
  EXPECT_EQ(record("0123456789AB: a\xe2\x80\xa8" "b\xc2\x85")["msg"], "a\xe2\x80\xa8" "b\xc2\x85");  // (as \\uXXXX)
}

}  // namespace
}  // namespace portcullis
