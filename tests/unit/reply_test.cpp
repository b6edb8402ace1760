// Table tests for replies (RFC 5321 §4.2, enhanced status codes RFC 2034/3463).
#include "smtp/reply.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace portcullis::smtp {
namespace {

using namespace std::literals;
using lines = std::vector<std::string>;

// ---------------------------------------------------------------------------
// wire(): what goes to the client.

struct wire_case {
  reply r;
  std::string want;
};

reply code_only(int code, std::string status = {}) {
  reply r;
  r.code = code;
  r.status = std::move(status);
  return r;
}

TEST(ReplyWire, Table) {
  const std::vector<wire_case> cases = {
      {reply(250, "2.0.0", "Ok"), "250 2.0.0 Ok\r\n"},
      {reply(250, "", "Ok"), "250 Ok\r\n"},
      {reply(220, "", "mx.example.test ESMTP"), "220 mx.example.test ESMTP\r\n"},
      {reply(354, "", "End data with <CR><LF>.<CR><LF>"), "354 End data with <CR><LF>.<CR><LF>\r\n"},
      {reply(550, "5.1.1", "<a@b>: Recipient address rejected"), "550 5.1.1 <a@b>: Recipient address rejected\r\n"},
      {reply(250, "2.0.0", ""), "250 2.0.0\r\n"},
      {reply(250, "", ""), "250 \r\n"},  // §4.2: code, SP, optional text
      {code_only(250), "250 \r\n"},
      {code_only(250, "2.0.0"), "250 2.0.0\r\n"},
      // Multi-line: "-" on all but the last, the status on every line (RFC 2034 §4).
      {reply(250, "", lines{"mx.example.test", "PIPELINING", "SIZE 10240000", "8BITMIME"}),
       "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"},
      {reply(250, "2.0.0", lines{"a", "b", "c"}), "250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n"},
      {reply(451, "4.3.0", lines{"try", "later"}), "451-4.3.0 try\r\n451 4.3.0 later\r\n"},
      {reply(250, "2.0.0", lines{"a", ""}), "250-2.0.0 a\r\n250 2.0.0\r\n"},
      {reply(250, "", lines{"", "b"}), "250-\r\n250 b\r\n"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "summary: " << c.r.summary());
    EXPECT_EQ(c.r.wire(), c.want);
  }
}

TEST(ReplySummary, Table) {
  const std::vector<wire_case> cases = {
      {reply(250, "2.0.0", "Ok"), "250 2.0.0 Ok"},
      {reply(250, "", "Ok"), "250 Ok"},
      {reply(250, "", lines{"a", "b"}), "250 a / b"},
      {reply(250, "2.0.0", lines{"a", "b", "c"}), "250 2.0.0 a / b / c"},
      {code_only(250, "2.0.0"), "250 2.0.0"},
      {code_only(421), "421"},
  };
  for (const auto& c : cases) EXPECT_EQ(c.r.summary(), c.want);
}

TEST(Reply, ClassesAndText) {
  struct row {
    int code;
    bool positive, transient, permanent;
  };
  for (const auto& c : std::vector<row>{{220, true, false, false},
                                        {250, true, false, false},
                                        {354, true, false, false},
                                        {421, false, true, false},
                                        {451, false, true, false},
                                        {499, false, true, false},
                                        {500, false, false, true},
                                        {554, false, false, true}}) {
    const reply r(c.code, "", "x");
    EXPECT_EQ(r.positive(), c.positive) << c.code;
    EXPECT_EQ(r.transient(), c.transient) << c.code;
    EXPECT_EQ(r.permanent(), c.permanent) << c.code;
  }
  EXPECT_EQ(reply(250, "", lines{"first", "second"}).text(), "first");
  EXPECT_EQ(code_only(250).text(), "");
}

// ---------------------------------------------------------------------------
// reply_parser: replies from the upstream, one line (without CRLF) at a time.

using st = reply_parser::state;

struct parse_case {
  std::vector<std::string> in;
  std::vector<st> states;  // one per line fed
  int code = 0;            // the reply, when the last state is complete
  std::string status = {};
  std::vector<std::string> text = {};
};

std::vector<parse_case> parse_cases() {
  const st more = st::need_more, done = st::complete, bad = st::malformed;
  return {
      {{"250 Ok"}, {done}, 250, "", {"Ok"}},
      {{"220 mx.example.test ESMTP Postfix"}, {done}, 220, "", {"mx.example.test ESMTP Postfix"}},
      {{"250-mx.example.test", "250-PIPELINING", "250-SIZE 10240000", "250 8BITMIME"},
       {more, more, more, done},
       250,
       "",
       {"mx.example.test", "PIPELINING", "SIZE 10240000", "8BITMIME"}},
      // Enhanced status codes are kept apart (RFC 2034 §4).
      {{"250 2.1.0 Ok"}, {done}, 250, "2.1.0", {"Ok"}},
      {{"550 5.1.1 <x@y>: Recipient address rejected: User unknown"},
       {done},
       550,
       "5.1.1",
       {"<x@y>: Recipient address rejected: User unknown"}},
      {{"250-2.0.0 a", "250 2.0.0 b"}, {more, done}, 250, "2.0.0", {"a", "b"}},
      {{"451 4.7.1 Try again later"}, {done}, 451, "4.7.1", {"Try again later"}},
      {{"250 2.0.0"}, {done}, 250, "2.0.0", {""}},
      {{"250 2.123.456 x"}, {done}, 250, "2.123.456", {"x"}},
      // Not an enhanced status: text stays verbatim.
      {{"250 5.0.0 x"}, {done}, 250, "", {"5.0.0 x"}},  // class differs from the code's
      {{"250 2.0.0Ok"}, {done}, 250, "", {"2.0.0Ok"}},
      {{"250 2.0 Ok"}, {done}, 250, "", {"2.0 Ok"}},
      {{"250 3.0.0 x"}, {done}, 250, "", {"3.0.0 x"}},
      // Statuses that differ between lines: every line keeps its text verbatim.
      {{"250-2.0.0 a", "250 b"}, {more, done}, 250, "", {"2.0.0 a", "b"}},
      {{"250-a", "250 2.0.0 b"}, {more, done}, 250, "", {"a", "2.0.0 b"}},
      {{"250-2.0.0 a", "250-2.1.0 b", "250 2.0.0 c"}, {more, more, done}, 250, "", {"2.0.0 a", "2.1.0 b", "2.0.0 c"}},
      {{"250-2.0.0 a", "250-2.0.0 b", "250 c"}, {more, more, done}, 250, "", {"2.0.0 a", "2.0.0 b", "c"}},
      {{"250-2.0.0", "250 2.1.0 b"}, {more, done}, 250, "", {"2.0.0", "2.1.0 b"}},
      // Text is optional (§4.2).
      {{"250"}, {done}, 250, "", {""}},
      {{"250 "}, {done}, 250, "", {""}},
      {{"250-", "250 x"}, {more, done}, 250, "", {"", "x"}},
      {{"250-a", "250"}, {more, done}, 250, "", {"a", ""}},
      // Codes that differ between lines (RFC 5321 §4.2.1 forbids it): the
      // last line's decides, as in Postfix's SMTP client.
      {{"250-a", "251 b"}, {more, done}, 251, "", {"a", "b"}},
      {{"250-a", "550 b"}, {more, done}, 550, "", {"a", "b"}},
      {{"550-a", "250-b", "250 c"}, {more, more, done}, 250, "", {"a", "b", "c"}},
      {{"250-2.0.0 a", "550 5.1.1 b"}, {more, done}, 550, "", {"2.0.0 a", "5.1.1 b"}},
      // Protocol errors: the upstream is answering nonsense.
      {{""}, {bad}},
      {{"25"}, {bad}},
      {{"abc"}, {bad}},
      {{"2x0 ok"}, {bad}},
      {{"250x"}, {bad}},
      {{"250_ok"}, {bad}},
      {{"2500 ok"}, {bad}},
      {{" 250 ok"}, {bad}},
      {{"199 x"}, {bad}},
      {{"099 x"}, {bad}},
      {{"600 x"}, {bad}},
      {{"100 x"}, {bad}},
      {{"150 go ahead"}, {bad}},  // RFC 5321 §4.2.1: no 1yz reply in SMTP
      {{"260 x"}, {bad}},         // Reply-code = %x32-35 %x30-35 %x30-39
      {{"290 x"}, {bad}},
      {{"2:0 x"}, {bad}},
      {{"25: x"}, {bad}},
      {{"250-a", "xyz"}, {more, bad}},  // garbage continuation
      {{"250-a", "250-b", "25"}, {more, more, bad}},
      {{"250-a", " 250 b"}, {more, bad}},
  };
}

TEST(ReplyParser, Table) {
  for (const auto& c : parse_cases()) {
    SCOPED_TRACE(testing::Message() << "first line: \"" << c.in.front() << "\"");
    ASSERT_EQ(c.in.size(), c.states.size());
    reply_parser p;
    for (std::size_t i = 0; i < c.in.size(); ++i) EXPECT_EQ(p.feed_line(c.in[i]), c.states[i]) << "line " << i;
    if (c.states.back() != st::complete) continue;
    const reply r = p.take();
    EXPECT_EQ(r.code, c.code);
    EXPECT_EQ(r.status, c.status);
    EXPECT_EQ(r.lines, c.text);
  }
}

// A parsed reply goes back on the wire as the upstream sent it (but for the
// optional SP after a bare code).
TEST(ReplyParser, WireRoundTrip) {
  for (const auto& c : parse_cases()) {
    if (c.states.back() != st::complete) continue;
    std::string sent;
    for (const auto& l : c.in) sent += l + "\r\n";
    if (c.in.back() == "250") sent.replace(sent.size() - 5, 5, "250 \r\n");
    SCOPED_TRACE(testing::Message() << "first line: \"" << c.in.front() << "\"");
    reply_parser p;
    for (const auto& l : c.in) p.feed_line(l);
    const bool codes_differed = p.codes_differed();
    EXPECT_EQ(codes_differed, c.in.front().substr(0, 3) != c.in.back().substr(0, 3));
    if (codes_differed) continue;  // (every line goes back with the last one's code)
    EXPECT_EQ(p.take().wire(), sent);
  }
}

TEST(ReplyParser, TakeResets) {
  reply_parser p;
  EXPECT_EQ(p.feed_line("250-2.0.0 mx"), st::need_more);
  EXPECT_EQ(p.feed_line("250 2.0.0 ok"), st::complete);
  const reply first = p.take();
  EXPECT_EQ(first.lines, (lines{"mx", "ok"}));
  EXPECT_FALSE(p.codes_differed());
  // The next reply may have another code and no status at all.
  EXPECT_EQ(p.feed_line("354 go ahead"), st::complete);
  const reply second = p.take();
  EXPECT_EQ(second.code, 354);
  EXPECT_EQ(second.status, "");
  EXPECT_EQ(second.lines, (lines{"go ahead"}));
}

// Text that must not reach the client as it came: 8-bit and control bytes
// (RFC 5321 §4.2 textstring is printable US-ASCII and HT) and lines over 512
// octets (§4.5.3.1.5). The reply is kept, its text made fit.
TEST(ReplyParser, SanitisesText) {
  struct row {
    std::vector<std::string> in;
    int code;
    std::string status;
    std::vector<std::string> text;
  };
  const std::string long_text(600, 'x');
  const std::string cut(max_reply_text({}), 'x');        // 500: room for with_status's "x.y.z "
  const std::string cut_st(max_reply_text("2.0.0"), 'x');  // 500: "250 2.0.0 " + 500 + CRLF
  const std::string cut_long(max_reply_text("5.123.456"), 'x');  // 496
  const std::string fits(512 - 12, 'y');  // a line of exactly 512 octets with "2.1.5 "
  const std::vector<row> cases = {
      {{"250 a\tb"}, 250, "", {"a b"}},  // HT is allowed upstream; we send a space
      {{"250 a\rb"}, 250, "", {"a?b"}},
      {{"250 a\0b"s}, 250, "", {"a?b"}},
      {{"250 a\x7f"}, 250, "", {"a?"}},
      {{"250-a", "250 b\x1b[2J"}, 250, "", {"a", "b?[2J"}},
      {{"250-a", "250-b\r", "250 c"}, 250, "", {"a", "b?", "c"}},
      {{"250 2.0.0 Gr\xc3\xbc\xc3\x9f" "e"}, 250, "2.0.0", {"Gr????e"}},
      {{"554 5.7.1 \xff\xfe spam"}, 554, "5.7.1", {"?? spam"}},
      {{"250 " + long_text}, 250, "", {cut}},
      {{"250 2.0.0 " + long_text}, 250, "2.0.0", {cut_st}},
      {{"550 5.123.456 " + long_text}, 550, "5.123.456", {cut_long}},
      {{"250-" + long_text, "250 ok"}, 250, "", {cut, "ok"}},
      {{"250 2.1.5 " + fits}, 250, "2.1.5", {fits}},  // within 512: unchanged
      {{"250 2.1.5 " + fits + "z"}, 250, "2.1.5", {fits}},
      // Mixed statuses: the earlier line's status becomes text and the line is cut again.
      {{"250-2.0.0 " + long_text, "250 b"}, 250, "", {"2.0.0 " + cut.substr(6), "b"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "first line: \"" << c.in.front().substr(0, 40) << "\"");
    reply_parser p;
    for (std::size_t i = 0; i < c.in.size(); ++i)
      ASSERT_EQ(p.feed_line(c.in[i]), i + 1 < c.in.size() ? st::need_more : st::complete) << "line " << i;
    reply r = p.take();
    EXPECT_EQ(r.code, c.code);
    EXPECT_EQ(r.status, c.status);
    EXPECT_EQ(r.lines, c.text);
    // Whatever status the client is given, every line fits in 512 octets and is printable ASCII.
    for (const reply& sent : {r, with_status(r, "2.0.0")}) {
      const std::string wire = sent.wire();
      std::size_t start = 0;
      for (auto end = wire.find("\r\n"); end != std::string::npos; start = end + 2, end = wire.find("\r\n", start)) {
        EXPECT_LE(end + 2 - start, max_reply_line_octets);
        EXPECT_TRUE(is_safe_reply_text(std::string_view(wire).substr(start, end - start)));
      }
    }
  }
}

TEST(SanitizedReplyText, Table) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", ""},
      {"Ok", "Ok"},
      {"<a@b>: rejected (see https://x/y?z=1)", "<a@b>: rejected (see https://x/y?z=1)"},
      {"a\tb", "a b"},
      {"a\r\n250 b", "a??250 b"},
      {"\0"s, "?"},
      {"\x01\x1f\x7f\x80\xff", "?????"},
      {"caf\xc3\xa9", "caf??"},
      {std::string(500, 'a'), std::string(500, 'a')},
      {std::string(501, 'a'), std::string(500, 'a')},
      {std::string(5000, '\xe9'), std::string(500, '?')},
  };
  for (const auto& [in, want] : cases)
    EXPECT_EQ(sanitized_reply_text(in, 500), want) << '"' << in.substr(0, 40) << '"';
  EXPECT_EQ(sanitized_reply_text("abc", 0), "");
  // 512 octets = "ddd-" + status and its space + text + CRLF.
  static_assert(max_reply_text("") == 500);
  static_assert(max_reply_text("2.0.0") == 500);
  static_assert(max_reply_text("5.10.0") == 499);
  static_assert(max_reply_text("5.123.456") == 496);
}

// ---------------------------------------------------------------------------
// fit: which replies each command may get (RFC 5321 §4.3.2). A positive reply
// out of place means the upstream is out of step (an extra 354 after a RCPT
// reply would otherwise pass for DATA's go-ahead).

TEST(ReplyFit, Table) {
  using enum reply_fit;
  struct row {
    reply_to what;
    int code;
    reply_fit want;
  };
  const std::vector<row> cases = {
      {reply_to::greeting, 220, success},   {reply_to::greeting, 421, refusal},
      {reply_to::greeting, 554, refusal},   {reply_to::greeting, 250, out_of_place},
      {reply_to::greeting, 354, out_of_place},
      {reply_to::ehlo, 250, success},       {reply_to::ehlo, 502, refusal},
      {reply_to::ehlo, 220, out_of_place},  {reply_to::ehlo, 251, out_of_place},
      {reply_to::helo, 250, success},       {reply_to::helo, 504, refusal},
      {reply_to::helo, 354, out_of_place},
      {reply_to::starttls, 220, success},   {reply_to::starttls, 454, refusal},
      {reply_to::starttls, 250, out_of_place},
      {reply_to::xclient, 220, success},    {reply_to::xclient, 550, refusal},
      {reply_to::xclient, 503, refusal},    {reply_to::xclient, 250, out_of_place},
      {reply_to::xforward, 250, success},   {reply_to::xforward, 550, refusal},
      {reply_to::xforward, 220, out_of_place},
      {reply_to::mail, 250, success},       {reply_to::mail, 451, refusal},
      {reply_to::mail, 452, refusal},       {reply_to::mail, 550, refusal},
      {reply_to::mail, 555, refusal},       {reply_to::mail, 251, out_of_place},
      {reply_to::mail, 354, out_of_place},  {reply_to::mail, 221, out_of_place},
      {reply_to::mail, 220, out_of_place},  {reply_to::mail, 252, out_of_place},
      {reply_to::rcpt, 250, success},       {reply_to::rcpt, 251, success},
      {reply_to::rcpt, 450, refusal},       {reply_to::rcpt, 550, refusal},
      {reply_to::rcpt, 421, refusal},       {reply_to::rcpt, 354, out_of_place},
      {reply_to::rcpt, 221, out_of_place},  {reply_to::rcpt, 252, out_of_place},
      {reply_to::rcpt, 220, out_of_place},
      {reply_to::data, 354, success},       {reply_to::data, 451, refusal},
      {reply_to::data, 554, refusal},       {reply_to::data, 250, out_of_place},
      {reply_to::data, 221, out_of_place},
      {reply_to::end_of_data, 250, success}, {reply_to::end_of_data, 452, refusal},
      {reply_to::end_of_data, 554, refusal}, {reply_to::end_of_data, 354, out_of_place},
      {reply_to::end_of_data, 251, out_of_place}, {reply_to::end_of_data, 221, out_of_place},
      {reply_to::rset, 250, success},       {reply_to::rset, 354, out_of_place},
      {reply_to::rset, 500, refusal},
      {reply_to::quit, 221, success},       {reply_to::quit, 250, out_of_place},
      {reply_to::quit, 421, refusal},
      // Never a reply in SMTP at all.
      {reply_to::data, 154, out_of_place},  {reply_to::mail, 0, out_of_place},
      {reply_to::mail, 600, out_of_place},  {reply_to::mail, 399, out_of_place},
  };
  for (const auto& c : cases)
    EXPECT_EQ(fit(c.what, c.code), c.want) << name(c.what) << " " << c.code;
}

TEST(ReplyTo, Names) {
  EXPECT_EQ(name(reply_to::greeting), "greeting");
  EXPECT_EQ(name(reply_to::end_of_data), "end of data");
  EXPECT_EQ(name(reply_to::mail), "MAIL");
  EXPECT_EQ(name(reply_to::xclient), "XCLIENT");
}

// with_status: an upstream without ENHANCEDSTATUSCODES still gives the client
// a status on every reply, since we advertise the extension (RFC 2034 §3).
TEST(WithStatus, Table) {
  struct row {
    reply in;
    std::string success;
    std::string want;
  };
  const std::vector<row> cases = {
      {reply(250, "", "Ok"), "2.1.0", "2.1.0"},
      {reply(250, "", "Ok"), "2.1.5", "2.1.5"},
      {reply(250, "2.0.0", "Ok"), "2.1.0", "2.0.0"},  // the upstream's own is kept
      {reply(550, "5.7.1", "no"), "2.1.0", "5.7.1"},
      {reply(451, "", "later"), "2.1.0", "4.0.0"},
      {reply(421, "", "bye"), "2.1.0", "4.0.0"},
      {reply(550, "", "no"), "2.1.0", "5.0.0"},
      {reply(554, "", "no"), "2.0.0", "5.0.0"},
      {reply(354, "", "go ahead"), "2.0.0", ""},  // RFC 3463 §2 has no class 3
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.in.summary());
    const reply r = with_status(c.in, c.success);
    EXPECT_EQ(r.status, c.want);
    EXPECT_EQ(r.code, c.in.code);
    EXPECT_EQ(r.lines, c.in.lines);
  }
}

// ---------------------------------------------------------------------------

TEST(IsEnhancedStatus, Table) {
  const std::vector<std::pair<std::string, bool>> cases = {
      {"2.0.0", true},     {"4.7.1", true},     {"5.1.1", true},      {"2.123.456", true}, {"5.10.0", true},
      {"4.0.999", true},   {"", false},         {"2", false},         {"2.0", false},      {"2.0.", false},
      {"2..0", false},     {".0.0", false},     {"2.0.0.", false},    {"2.0.0.0", false},  {"1.0.0", false},
      {"3.0.0", false},    {"6.0.0", false},    {"0.0.0", false},     {"22.0.0", false},   {"2.1234.0", false},
      {"2.0.1234", false}, {"2-0-0", false},    {"2.a.0", false},     {"2.0.a", false},    {"x.y.z", false},
      {"2.0.0 ", false},   {" 2.0.0", false},   {"2.0.0\r", false},   {"2. 0.0", false},   {"2.0.0\0"s, false},
  };
  for (const auto& [s, want] : cases) EXPECT_EQ(is_enhanced_status(s), want) << '"' << s << '"';
}

TEST(IsSafeReplyText, Table) {
  const std::vector<std::pair<std::string, bool>> cases = {
      {"", true},          {"Ok", true},           {"a b", true},  {"<a@b>: rejected (see https://x/y?z=1)", true},
      {"\r", false},       {"\n", false},          {"a\r\nb", false}, {"a\r\n250 b", false},
      {"\0"s, false},      {"a\0b"s, false},       {"\t", false},  {"\x7f", false},
      {"\x1b[31m", false}, {"\x01", false},
  };
  for (const auto& [s, want] : cases) EXPECT_EQ(is_safe_reply_text(s), want) << '"' << s << '"';
}

}  // namespace
}  // namespace portcullis::smtp
