// Table tests for parse_command (RFC 5321 §4.1.1): one row per command line.
#include "smtp/command.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portcullis::smtp {
namespace {

using namespace std::literals;

std::string_view verb_name(verb v) {
  switch (v) {
    case verb::helo: return "helo";
    case verb::ehlo: return "ehlo";
    case verb::mail: return "mail";
    case verb::rcpt: return "rcpt";
    case verb::data: return "data";
    case verb::rset: return "rset";
    case verb::noop: return "noop";
    case verb::quit: return "quit";
    case verb::help: return "help";
    case verb::vrfy: return "vrfy";
    case verb::expn: return "expn";
    case verb::starttls: return "starttls";
    case verb::auth: return "auth";
    case verb::bdat: return "bdat";
    case verb::xclient: return "xclient";
    case verb::xforward: return "xforward";
    case verb::http: return "http";
    case verb::unknown: return "unknown";
  }
  return "?";
}

struct command_case {
  std::string_view line;
  verb kind;
  std::string_view name;
  std::string_view arg;
  bool bad_syntax = false;
};

const std::vector<command_case> command_cases = {
    // Every verb, bare and with an argument.
    {"HELO client.example", verb::helo, "HELO", "client.example"},
    {"EHLO client.example", verb::ehlo, "EHLO", "client.example"},
    {"EHLO [192.0.2.1]", verb::ehlo, "EHLO", "[192.0.2.1]"},
    {"MAIL FROM:<a@b>", verb::mail, "MAIL", "<a@b>"},
    {"RCPT TO:<a@b>", verb::rcpt, "RCPT", "<a@b>"},
    {"DATA", verb::data, "DATA", ""},
    {"RSET", verb::rset, "RSET", ""},
    {"NOOP", verb::noop, "NOOP", ""},
    {"NOOP anything at all", verb::noop, "NOOP", "anything at all"},  // §4.1.1.9: a parameter is allowed
    {"QUIT", verb::quit, "QUIT", ""},
    {"HELP", verb::help, "HELP", ""},
    {"HELP MAIL", verb::help, "HELP", "MAIL"},
    {"VRFY postmaster", verb::vrfy, "VRFY", "postmaster"},
    {"EXPN staff", verb::expn, "EXPN", "staff"},
    {"STARTTLS", verb::starttls, "STARTTLS", ""},
    {"AUTH PLAIN AGFsaWNlAHNlY3JldA==", verb::auth, "AUTH", "PLAIN AGFsaWNlAHNlY3JldA=="},
    {"AUTH LOGIN", verb::auth, "AUTH", "LOGIN"},
    {"BDAT 1000 LAST", verb::bdat, "BDAT", "1000 LAST"},
    {"XCLIENT ADDR=192.0.2.1", verb::xclient, "XCLIENT", "ADDR=192.0.2.1"},
    {"XFORWARD NAME=spike.porcupine.org", verb::xforward, "XFORWARD", "NAME=spike.porcupine.org"},

    // Verbs are case-insensitive (§2.4); the name is kept as sent.
    {"helo x", verb::helo, "helo", "x"},
    {"eHlO x", verb::ehlo, "eHlO", "x"},
    {"mail from:<a@b>", verb::mail, "mail", "<a@b>"},
    {"Mail From:<a@b>", verb::mail, "Mail", "<a@b>"},
    {"rcpt to:<a@b>", verb::rcpt, "rcpt", "<a@b>"},
    {"rCpT tO:<a@b>", verb::rcpt, "rCpT", "<a@b>"},
    {"data", verb::data, "data", ""},
    {"rset", verb::rset, "rset", ""},
    {"noop", verb::noop, "noop", ""},
    {"quit", verb::quit, "quit", ""},
    {"help", verb::help, "help", ""},
    {"vrfy x", verb::vrfy, "vrfy", "x"},
    {"expn x", verb::expn, "expn", "x"},
    {"starttls", verb::starttls, "starttls", ""},
    {"StartTLS", verb::starttls, "StartTLS", ""},
    {"auth plain", verb::auth, "auth", "plain"},
    {"bdat 0 last", verb::bdat, "bdat", "0 last"},
    {"xclient NAME=x", verb::xclient, "xclient", "NAME=x"},
    {"xforward NAME=x", verb::xforward, "xforward", "NAME=x"},

    // MAIL/RCPT: the argument is what follows "FROM:"/"TO:", with or without
    // the one space many clients put there.
    {"MAIL FROM:<a@b>", verb::mail, "MAIL", "<a@b>"},
    {"MAIL FROM: <a@b>", verb::mail, "MAIL", "<a@b>"},
    {"MAIL FROM:<> SIZE=100", verb::mail, "MAIL", "<> SIZE=100"},
    {"MAIL FROM:<a@b> BODY=8BITMIME SMTPUTF8", verb::mail, "MAIL", "<a@b> BODY=8BITMIME SMTPUTF8"},
    {"RCPT TO: <a@b>", verb::rcpt, "RCPT", "<a@b>"},
    {"RCPT TO:<a@b> NOTIFY=NEVER", verb::rcpt, "RCPT", "<a@b> NOTIFY=NEVER"},
    // Only one space is skipped: the rest is the path parser's business.
    {"MAIL FROM:  <a@b>", verb::mail, "MAIL", " <a@b>"},
    {"MAIL FROM:", verb::mail, "MAIL", ""},
    {"RCPT TO:", verb::rcpt, "RCPT", ""},

    // Missing or mangled FROM:/TO: is bad syntax (501), not an unknown verb.
    {"MAIL", verb::mail, "MAIL", "", true},
    {"MAIL ", verb::mail, "MAIL", "", true},
    {"MAIL <a@b>", verb::mail, "MAIL", "<a@b>", true},
    {"MAIL FROM <a@b>", verb::mail, "MAIL", "FROM <a@b>", true},
    {"MAIL FROM", verb::mail, "MAIL", "FROM", true},
    {"MAIL TO:<a@b>", verb::mail, "MAIL", "TO:<a@b>", true},
    {"MAIL  FROM:<a@b>", verb::mail, "MAIL", " FROM:<a@b>", true},
    {"MAIL FROM=<a@b>", verb::mail, "MAIL", "FROM=<a@b>", true},
    // Trailing white space is tolerated (RFC 5321 §4.1.1: SHOULD).
    {"EHLO client.test ", verb::ehlo, "EHLO", "client.test"},
    {"RSET\t", verb::rset, "RSET", ""},
    {"DATA  ", verb::data, "DATA", ""},
    {"MAIL FROM:<a@b> SIZE=10\t ", verb::mail, "MAIL", "<a@b> SIZE=10"},
    {"AUTH PLAIN AGEAYg== ", verb::auth, "AUTH", "PLAIN AGEAYg=="},
    {"RCPT", verb::rcpt, "RCPT", "", true},
    {"RCPT <a@b>", verb::rcpt, "RCPT", "<a@b>", true},
    {"RCPT TO <a@b>", verb::rcpt, "RCPT", "TO <a@b>", true},
    {"RCPT FROM:<a@b>", verb::rcpt, "RCPT", "FROM:<a@b>", true},
    {"RCPT T:<a@b>", verb::rcpt, "RCPT", "T:<a@b>", true},

    // HTTP verbs: a browser or a cross-protocol attack.
    {"GET / HTTP/1.1", verb::http, "GET", "/ HTTP/1.1"},
    {"POST /submit HTTP/1.1", verb::http, "POST", "/submit HTTP/1.1"},
    {"CONNECT mail.example:25 HTTP/1.1", verb::http, "CONNECT", "mail.example:25 HTTP/1.1"},
    {"HEAD / HTTP/1.0", verb::http, "HEAD", "/ HTTP/1.0"},
    {"PUT /x HTTP/1.1", verb::http, "PUT", "/x HTTP/1.1"},
    {"OPTIONS * HTTP/1.1", verb::http, "OPTIONS", "* HTTP/1.1"},
    {"get / HTTP/1.1", verb::http, "get", "/ HTTP/1.1"},
    {"Post / HTTP/1.1", verb::http, "Post", "/ HTTP/1.1"},

    // Unknown verbs: the name is kept for "502 5.5.1 FOO not implemented".
    {"FOO", verb::unknown, "FOO", ""},
    {"FOO bar baz", verb::unknown, "FOO", "bar baz"},
    {"", verb::unknown, "", ""},
    {" HELO x", verb::unknown, "", "HELO x"},
    {"HEL x", verb::unknown, "HEL", "x"},
    {"HELOO x", verb::unknown, "HELOO", "x"},
    {"EHLO\tx", verb::unknown, "EHLO\tx", ""},
    {"MAILFROM:<a@b>", verb::unknown, "MAILFROM:<a@b>", ""},
    {"MAIL:<a@b>", verb::unknown, "MAIL:<a@b>", ""},
    {"RCPTTO:<a@b>", verb::unknown, "RCPTTO:<a@b>", ""},
    {"DATA\r", verb::unknown, "DATA\r", ""},
    {"QUIT\0"sv, verb::unknown, "QUIT\0"sv, ""},
    {"TURN", verb::unknown, "TURN", ""},
    {"ETRN example.com", verb::unknown, "ETRN", "example.com"},
    {"USER root", verb::unknown, "USER", "root"},
    {"DELETE / HTTP/1.1", verb::unknown, "DELETE", "/ HTTP/1.1"},
};

TEST(ParseCommand, Table) {
  for (const auto& c : command_cases) {
    SCOPED_TRACE(testing::Message() << "line: \"" << c.line << "\"");
    const command got = parse_command(c.line);
    EXPECT_EQ(verb_name(got.kind), verb_name(c.kind));
    EXPECT_EQ(got.name, c.name);
    EXPECT_EQ(got.arg, c.arg);
    EXPECT_EQ(got.bad_syntax, c.bad_syntax);
  }
}

// name and arg are views into the line: nothing is copied, nothing invented.
TEST(ParseCommand, ViewsPointIntoTheLine) {
  for (const auto& c : command_cases) {
    SCOPED_TRACE(testing::Message() << "line: \"" << c.line << "\"");
    const command got = parse_command(c.line);
    const auto inside = [&](std::string_view v) {
      return v.empty() || (v.data() >= c.line.data() && v.data() + v.size() <= c.line.data() + c.line.size());
    };
    EXPECT_TRUE(inside(got.name));
    EXPECT_TRUE(inside(got.arg));
  }
}

// RFC 3030 §3: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]; chunk-size = 1*DIGIT.
TEST(BdatChunkSize, Table) {
  const std::vector<std::pair<std::string_view, std::optional<std::uint64_t>>> cases = {
      {"0", 0},
      {"10", 10},
      {"10 LAST", 10},
      {"10 last", 10},
      {"0 LAST", 0},
      {"007", 7},
      {"999999999999999999", 999999999999999999ULL},  // 18 digits
      {"", std::nullopt},
      {"LAST", std::nullopt},
      {"12x", std::nullopt},
      {"-1", std::nullopt},
      {"+1", std::nullopt},
      {"10 MORE", std::nullopt},
      {"10 LAST x", std::nullopt},
      {"10  LAST", std::nullopt},
      {"10 ", std::nullopt},
      {" 10", std::nullopt},
      {"1000000000000000000", std::nullopt},  // 19 digits: refused, never wrapped
      {"99999999999999999999999", std::nullopt},
  };
  for (const auto& [arg, want] : cases) EXPECT_EQ(bdat_chunk_size(arg), want) << "\"" << arg << "\"";
}

}  // namespace
}  // namespace portcullis::smtp
