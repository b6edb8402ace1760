// Table tests for the DATA decoder and the dot-stuffing encoder
// (RFC 5321 §4.1.1.4, §4.5.2; SMTP smuggling).
#include "smtp/dot_decoder.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace portcullis::smtp {
namespace {

using namespace std::literals;
using fault = dot_decoder::fault;

constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();
constexpr std::size_t all = std::numeric_limits<std::size_t>::max();  // "every byte consumed"

std::string fault_name(fault f) {
  switch (f) {
    case fault::none: return "none";
    case fault::bare_line_ending: return "bare_line_ending";
    case fault::nul: return "nul";
    case fault::too_big: return "too_big";
  }
  return "?";
}

std::string escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c >= 0x20 && c < 0x7f) out += char(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

struct decoded {
  bool done = false;
  fault failure = fault::none;
  std::size_t consumed = 0;
  std::string out;
  std::size_t size = 0;
  bool operator==(const decoded&) const = default;
};

std::ostream& operator<<(std::ostream& os, const decoded& d) {
  return os << "{done=" << d.done << " failure=" << fault_name(d.failure) << " consumed=" << d.consumed
            << " size=" << d.size << " out=\"" << escape(d.out) << "\"}";
}

// Feeds `in` cut at `cuts` (ascending offsets), as reads off a socket would.
decoded decode(std::string_view in, const std::vector<std::size_t>& cuts, std::size_t max = unlimited) {
  dot_decoder d(max);
  decoded r;
  std::size_t from = 0;
  for (std::size_t k = 0; k <= cuts.size(); ++k) {
    const std::size_t to = k < cuts.size() ? cuts[k] : in.size();
    const std::string_view piece = in.substr(from, to - from);
    const std::size_t n = d.feed(piece, r.out);
    r.consumed += n;
    if (d.done()) break;
    EXPECT_EQ(n, piece.size()) << "a decoder not done takes every byte";
    from = to;
  }
  r.done = d.done();
  r.failure = d.failure();
  r.size = d.size();
  return r;
}

decoded decode(std::string_view in, std::size_t max = unlimited) { return decode(in, {}, max); }

// What a faulted decoder left in `out` is to be thrown away (and depends on
// where the reads were cut): only the rest of the result counts.
decoded outcome(decoded d) {
  if (d.failure != fault::none) d.out.clear();
  return d;
}

// The same result whatever the reads: in one piece, one byte at a time, and
// split in two at every offset.
void expect_split_invariant(std::string_view in, std::size_t max = unlimited) {
  const decoded whole = outcome(decode(in, max));
  std::vector<std::size_t> bytewise;
  for (std::size_t i = 1; i < in.size(); ++i) bytewise.push_back(i);
  EXPECT_EQ(outcome(decode(in, bytewise, max)), whole) << "one byte at a time";
  for (std::size_t i = 0; i <= in.size(); ++i) EXPECT_EQ(outcome(decode(in, {i}, max)), whole) << "split at " << i;
}

struct decode_case {
  std::string in;
  bool done;
  std::size_t consumed;  // `all`: every byte of `in`
  fault failure;
  std::optional<std::string> out;  // what a faulted decoder left in `out` is no one's business
  std::size_t max = unlimited;
};

std::vector<decode_case> decode_cases() {
  const auto none = fault::none, bare = fault::bare_line_ending, nul = fault::nul, too_big = fault::too_big;
  const std::optional<std::string> any;
  return {
      // Normal messages.
      {"Subject: hi\r\n\r\nbody\r\n.\r\n", true, all, none, "Subject: hi\r\n\r\nbody\r\n"},
      {"a\r\nb\r\nc\r\n.\r\n", true, all, none, "a\r\nb\r\nc\r\n"},
      {".\r\n", true, all, none, ""},  // the empty message: DATA's CRLF is the first CRLF
      {"\r\n.\r\n", true, all, none, "\r\n"},
      {"\r\n\r\n.\r\n", true, all, none, "\r\n\r\n"},
      {"8bit \xc3\xbc \xff\r\n.\r\n", true, all, none, "8bit \xc3\xbc \xff\r\n"},
      {std::string(10000, 'x') + "\r\n.\r\n", true, all, none, std::string(10000, 'x') + "\r\n"},
      // Dot-unstuffing (§4.5.2): a leading dot goes, only at a line's start.
      {"..x\r\n.\r\n", true, all, none, ".x\r\n"},
      {"a\r\n..\r\n.\r\n", true, all, none, "a\r\n.\r\n"},
      {"...\r\n.\r\n", true, all, none, "..\r\n"},
      {"a\r\n..\r\nb\r\n.\r\n", true, all, none, "a\r\n.\r\nb\r\n"},
      {".x\r\n.\r\n", true, all, none, "x\r\n"},  // an unstuffed dot line loses its dot, as §4.5.2 says
      {"a\r\n. \r\n.\r\n", true, all, none, "a\r\n \r\n"},
      {"a.\r\n.\r\n", true, all, none, "a.\r\n"},
      {"a\r\nb.\r\n.c\r\n.\r\n", true, all, none, "a\r\nb.\r\nc\r\n"},
      // Pipelining: what follows the end belongs to the next command.
      {"a\r\n.\r\nQUIT\r\n", true, 6, none, "a\r\n"},
      {".\r\nQUIT\r\n", true, 3, none, ""},
      {"a\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\n", true, 6, none, "a\r\n"},
      {"a\r\n.\r\n.\r\n", true, 6, none, "a\r\n"},
      {"a\r\n.\r\n\r\n.\r\n", true, 6, none, "a\r\n"},
      // Not the end yet.
      {"", false, all, none, ""},
      {"a", false, all, none, "a"},
      {"a\r\n", false, all, none, "a\r\n"},
      {"a\r\n.", false, all, none, "a\r\n"},
      {"a\r\n.\r", false, all, none, "a\r\n"},
      {".", false, all, none, ""},
      {"a\r\n.\n", false, all, bare, any},
      {"a\r\n..\r\n", false, all, none, "a\r\n.\r\n"},
      // Bare line endings and NUL anywhere: a fault, decoding goes on to the real end.
      {"a\nb\r\n.\r\n", true, all, bare, any},
      {"a\rb\r\n.\r\n", true, all, bare, any},
      {"a\r\rb\r\n.\r\n", true, all, bare, any},
      {"a\n\r\n.\r\n", true, all, bare, any},
      {"\n.\r\n.\r\n", true, all, bare, any},
      {".\n.\r\n", false, all, bare, any},  // after a bare LF the dot is text: no line start
      {".\n.\r\n.\r\n", true, all, bare, any},
      {".\r.\r\n.\r\n", true, all, bare, any},
      {"a\0b\r\n.\r\n"s, true, all, nul, any},
      {"\0\r\n.\r\n"s, true, all, nul, any},
      {".\0\r\n.\r\n"s, true, all, nul, any},
      {"a\r\n.\r\r\n.\r\n", true, all, bare, any},
      {"a\nb\r\n.\r\nQUIT\r\n", true, 8, bare, any},
      // The first fault is the one reported.
      {"a\0b\nc\r\n.\r\n"s, true, all, nul, any},
      {"a\nb\0c\r\n.\r\n"s, true, all, bare, any},
      // too_big: octets after unstuffing, counted to the real end.
      {"abc\r\n.\r\n", true, all, none, "abc\r\n", 5},
      {"abcd\r\n.\r\n", true, all, too_big, any, 5},
      {"..\r\n.\r\n", true, all, none, ".\r\n", 3},
      {"...\r\n.\r\n", true, all, too_big, any, 3},
      {".\r\n", true, all, none, "", 0},
      {"\r\n.\r\n", true, all, too_big, any, 0},
      {"abcd\r\n.\r\nQUIT\r\n", true, 9, too_big, any, 5},
      {"abcd\nx\r\n.\r\n", true, all, too_big, any, 3},
  };
}

TEST(DotDecoder, Table) {
  for (const auto& c : decode_cases()) {
    SCOPED_TRACE(testing::Message() << "in: \"" << escape(c.in) << "\" max=" << c.max);
    const decoded got = decode(c.in, c.max);
    EXPECT_EQ(got.done, c.done);
    EXPECT_EQ(got.consumed, c.consumed == all ? c.in.size() : c.consumed);
    EXPECT_EQ(fault_name(got.failure), fault_name(c.failure));
    if (c.out) {
      EXPECT_EQ(escape(got.out), escape(*c.out));
      EXPECT_EQ(got.size, c.out->size());
    }
    EXPECT_LE(got.out.size(), c.max);
  }
}

TEST(DotDecoder, EverySplitGivesTheSameResult) {
  for (const auto& c : decode_cases()) {
    if (c.in.size() > 200) continue;
    SCOPED_TRACE(testing::Message() << "in: \"" << escape(c.in) << "\" max=" << c.max);
    expect_split_invariant(c.in, c.max);
  }
}

TEST(DotDecoder, TooBigCountsEverythingButKeepsNoMore) {
  const std::string body(100, 'x');
  const decoded got = decode(body + "\r\n" + body + "\r\n.\r\nQUIT\r\n", 10);
  EXPECT_TRUE(got.done);
  EXPECT_EQ(fault_name(got.failure), "too_big");
  EXPECT_EQ(got.size, 2 * (body.size() + 2));
  EXPECT_LE(got.out.size(), 10u);
  EXPECT_EQ(got.consumed, 2 * (body.size() + 2) + 3);
}

TEST(DotDecoder, NothingAfterDone) {
  dot_decoder d(unlimited);
  std::string out;
  EXPECT_EQ(d.feed("a\r\n.\r\nQUIT\r\n", out), 6u);
  ASSERT_TRUE(d.done());
  EXPECT_EQ(d.feed("more\r\n.\r\n", out), 0u);
  EXPECT_EQ(out, "a\r\n");
  EXPECT_EQ(d.size(), 3u);
}

// SMTP smuggling: an ending that some server takes for CRLF.CRLF, followed by
// a smuggled transaction, then the real end. The decoder must see through
// every one of them, end at the real CRLF.CRLF only, and refuse the message.
struct smuggling_case {
  std::string ending;
  fault failure;
};

const std::vector<smuggling_case> smuggling_endings = {
    {"\n.\n", fault::bare_line_ending},      {"\n.\r\n", fault::bare_line_ending},
    {"\r\n.\n", fault::bare_line_ending},    {"\r.\r", fault::bare_line_ending},
    {"\r\n.\r", fault::bare_line_ending},    {"\r\n\0.\r\n"s, fault::nul},
    {"\r\n.\r\r\n", fault::bare_line_ending}, {"\r.\r\n", fault::bare_line_ending},
    {"\n.\r", fault::bare_line_ending},      {"\r\n.\0\r\n"s, fault::nul},
};

TEST(DotDecoder, SmugglingEndings) {
  const std::string head = "From: a@example.test\r\nSubject: x\r\n\r\nhello";
  const std::string smuggled = "MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nevil";
  const std::string real_end = "\r\n.\r\n";
  const std::string next = "QUIT\r\n";
  for (const auto& c : smuggling_endings) {
    const std::string in = head + c.ending + smuggled + real_end + next;
    SCOPED_TRACE(testing::Message() << "ending: \"" << escape(c.ending) << "\"");
    // Not over at the fake ending...
    const decoded upto_fake = decode(std::string_view(in).substr(0, head.size() + c.ending.size()));
    EXPECT_FALSE(upto_fake.done);
    EXPECT_EQ(upto_fake.consumed, head.size() + c.ending.size());
    // ...over at the real one, refused, and the next command left alone.
    const decoded got = decode(in);
    EXPECT_TRUE(got.done);
    EXPECT_EQ(got.consumed, in.size() - next.size());
    EXPECT_EQ(fault_name(got.failure), fault_name(c.failure));
    expect_split_invariant(in);
  }
}

// Each fake ending right at the start of the data and at the very end of
// what the client sent: never an end.
TEST(DotDecoder, SmugglingEndingsAloneNeverEnd) {
  for (const auto& c : smuggling_endings) {
    SCOPED_TRACE(testing::Message() << "ending: \"" << escape(c.ending) << "\"");
    for (const std::string& in : {"x" + c.ending, c.ending, c.ending + "x", "x" + c.ending + "x"}) {
      const decoded got = decode(in);
      EXPECT_FALSE(got.done) << escape(in);
      EXPECT_EQ(got.consumed, in.size());
    }
  }
}

// ---------------------------------------------------------------------------
// dot_stuffed_pieces: the encoder for the upstream.

std::string concat(const std::vector<std::string_view>& pieces) {
  std::string s;
  for (auto p : pieces) s += p;
  return s;
}

struct encode_case {
  std::string message;
  std::string wire;
};

std::vector<encode_case> encode_cases() {
  return {
      {"", ".\r\n"},
      {"\r\n", "\r\n.\r\n"},
      {"a\r\n", "a\r\n.\r\n"},
      {"a", "a\r\n.\r\n"},  // a final line without CRLF gets one
      {"a\r\nb", "a\r\nb\r\n.\r\n"},
      {".", "..\r\n.\r\n"},
      {".\r\n", "..\r\n.\r\n"},
      {"..\r\n", "...\r\n.\r\n"},
      {".a\r\n.b\r\n", "..a\r\n..b\r\n.\r\n"},
      {"a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
      {"a\r\n.", "a\r\n..\r\n.\r\n"},
      {"x\r\n..", "x\r\n...\r\n.\r\n"},
      {"a.b\r\n.\r\n", "a.b\r\n..\r\n.\r\n"},
      {"\r\n.\r\n\r\n", "\r\n..\r\n\r\n.\r\n"},
      {"Subject: x\r\n\r\n.signature\r\n-- \r\n.\r\n", "Subject: x\r\n\r\n..signature\r\n-- \r\n..\r\n.\r\n"},
  };
}

TEST(DotStuffedPieces, Table) {
  for (const auto& c : encode_cases()) {
    SCOPED_TRACE(testing::Message() << "message: \"" << escape(c.message) << "\"");
    const auto pieces = dot_stuffed_pieces(c.message);
    EXPECT_EQ(escape(concat(pieces)), escape(c.wire));
    // No copy of the body: a piece lies in the message or is one of the
    // encoder's own constants.
    for (auto p : pieces) {
      const bool in_message =
          p.data() >= c.message.data() && p.data() + p.size() <= c.message.data() + c.message.size();
      EXPECT_TRUE(in_message || p == "." || p == "\r\n" || p == ".\r\n") << escape(p);
    }
  }
}

// dot_stuffer: the message in chunks cut anywhere (a CRLF or a line's
// leading dot on a boundary) is stuffed exactly as whole.
TEST(DotStuffer, ChunksCutAnywhere) {
  for (const auto& c : encode_cases()) {
    for (std::size_t size = 1; size <= std::max<std::size_t>(c.message.size(), 1); ++size) {
      SCOPED_TRACE(testing::Message() << "message: \"" << escape(c.message) << "\" chunks of " << size);
      dot_stuffer stuffer;
      std::vector<std::string_view> pieces;
      for (std::size_t at = 0; at < c.message.size(); at += size)
        stuffer.stuff(std::string_view(c.message).substr(at, size), pieces);
      stuffer.finish(pieces);
      EXPECT_EQ(escape(concat(pieces)), escape(c.wire));
    }
  }
}

// decode(encode(m)) == m, with a CRLF added when m lacks a final one.
TEST(DotStuffedPieces, RoundTrip) {
  std::vector<std::string> messages = {
      "",
      "\r\n",
      "a\r\n",
      ".\r\n",
      "..\r\n",
      ".a\r\n.b\r\n",
      "a\r\n.\r\n\r\n",
      "From: x\r\n\r\n.\r\n..\r\n...\r\n",
      "\xc3\xbc\xff\x80\r\n",
      "no final crlf",
      "line\r\n.",
      std::string(5000, '.') + "\r\n",
  };
  std::string many;
  for (int i = 0; i < 1000; ++i) {
    if (i % 3 == 0) many += '.';
    many += std::to_string(i);
    many += "\r\n";
  }
  messages.push_back(many);
  for (const auto& m : messages) {
    SCOPED_TRACE(testing::Message() << "message: \"" << escape(m.substr(0, 80)) << "\"");
    const std::string wire = concat(dot_stuffed_pieces(m));
    const decoded got = decode(wire);
    const std::string want = m.empty() || m.ends_with("\r\n") ? m : m + "\r\n";
    EXPECT_TRUE(got.done);
    EXPECT_EQ(got.consumed, wire.size());
    EXPECT_EQ(fault_name(got.failure), "none");
    EXPECT_EQ(got.out, want);
    EXPECT_EQ(got.size, want.size());
  }
}

}  // namespace
}  // namespace portcullis::smtp
