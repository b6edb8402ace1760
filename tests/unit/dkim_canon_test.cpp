#include "checks/dkim_canon.hpp"

#include <gtest/gtest.h>

#include <random>

#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

using namespace portcullis::checks;

namespace {

std::string body(std::string_view in, std::size_t piece = 4096) {
  canonical_body b(dkim_canonicalization::relaxed);
  std::string out;
  for (std::size_t i = 0; i < in.size(); i += piece) b.feed(in.substr(i, piece), out);
  b.finish(out);
  return out;
}

}  // namespace

TEST(DkimCanon, TheExampleOfRfc6376) {  // §3.4.5
  EXPECT_EQ(relaxed_header("A: X\r\n"), "a:X\r\n");
  EXPECT_EQ(relaxed_header("B : Y\t\r\n\tZ  \r\n"), "b:Y Z\r\n");
  for (std::size_t piece : {1u, 2u, 3u, 4096u}) EXPECT_EQ(body(" C \r\nD \t E\r\n\r\n\r\n", piece), " C\r\nD E\r\n");
}

TEST(DkimCanon, RelaxedHeaderFields) {
  EXPECT_EQ(relaxed_header("Subject:\r\n"), "subject:\r\n");
  EXPECT_EQ(relaxed_header("SUBJECT:   \t \r\n"), "subject:\r\n");
  EXPECT_EQ(relaxed_header("To: a@b.test,\r\n  c@d.test\r\n"), "to:a@b.test, c@d.test\r\n");
  EXPECT_EQ(relaxed_header("X-Tab:\ta\t\tb\r\n"), "x-tab:a b\r\n");
  EXPECT_EQ(relaxed_header("From: \xc3\xa9t\xc3\xa9 <a@b.test>\r\n"), "from:\xc3\xa9t\xc3\xa9 <a@b.test>\r\n");
  // Only the whitespace before the value goes: a colon inside it is text like any other.
  EXPECT_EQ(relaxed_header("Subject: Re: hi\r\n"), "subject:Re: hi\r\n");
  EXPECT_EQ(relaxed_header("X: a :  b\r\n"), "x:a : b\r\n");
}

TEST(DkimCanon, SimpleHeaderFieldsAreAsTheyCame) {
  EXPECT_EQ(canonical_header("SUBJECT :  a \r\n\tb\r\n", dkim_canonicalization::simple), "SUBJECT :  a \r\n\tb\r\n");
  EXPECT_EQ(canonical_header("X: y", dkim_canonicalization::simple), "X: y\r\n");  // a header-only message's last
}

TEST(DkimCanon, TheSignatureFieldWithoutItsSignature) {  // §3.7
  const std::string field = "DKIM-Signature: v=1; bh=AAAA;\r\n b=abc\r\n def ; d=x.test\r\n";
  EXPECT_EQ(unsigned_signature_field(field, dkim_canonicalization::simple),
            "DKIM-Signature: v=1; bh=AAAA;\r\n b=; d=x.test");
  EXPECT_EQ(unsigned_signature_field(field, dkim_canonicalization::relaxed), "dkim-signature:v=1; bh=AAAA; b=; d=x.test");
  EXPECT_EQ(unsigned_signature_field("DKIM-Signature: b = x; bh=y\r\n", dkim_canonicalization::simple),
            "DKIM-Signature: b =; bh=y");
}

TEST(DkimCanon, SimpleBodies) {  // §3.4.3
  const auto simple = [](std::string_view in) {
    canonical_body b(dkim_canonicalization::simple);
    std::string out;
    for (char c : in) b.feed(std::string_view(&c, 1), out);  // byte by byte: pieces cannot matter
    b.finish(out);
    return out;
  };
  EXPECT_EQ(simple(""), "\r\n");  // an empty body is one CRLF
  EXPECT_EQ(simple("\r\n\r\n"), "\r\n");
  EXPECT_EQ(simple("a  \r\n\r\n b\r\n\r\n\r\n"), "a  \r\n\r\n b\r\n");  // whitespace kept, trailing empty lines not
  EXPECT_EQ(simple(" \r\n"), " \r\n");  // a line of spaces is no empty line
  EXPECT_EQ(simple("a"), "a\r\n");
}

TEST(DkimCanon, RelaxedBodies) {
  EXPECT_EQ(body(""), "");               // an empty body stays empty (§3.4.4)
  EXPECT_EQ(body("\r\n\r\n"), "");       // only empty lines: none kept
  EXPECT_EQ(body(" \t \r\n"), "");       // only whitespace: an empty line
  EXPECT_EQ(body("a"), "a\r\n");         // a last line without CRLF gets one
  EXPECT_EQ(body("a  \r\n\r\n b\r\n"), "a\r\n\r\n b\r\n");  // empty lines inside are kept
  EXPECT_EQ(body("\r\n\r\na\r\n"), "\r\n\r\na\r\n");        // ... and at the start
  EXPECT_EQ(body("a\r\n \r\n\t\r\n"), "a\r\n");
  EXPECT_EQ(body(".\r\n"), ".\r\n");
}

TEST(DkimCanon, RelaxedSpacesBetweenWordsInAnyPieces) {
  // A single SP between words is copied with them; other runs of WSP become one SP.
  const std::string in = "one two  three\t four \t\r\n five six \r\n \tseven\r\n";
  const std::string want = "one two three four\r\n five six\r\n seven\r\n";
  for (std::size_t piece : {1, 2, 3, 4, 5, 7, 4096}) EXPECT_EQ(body(in, piece), want) << "pieces of " << piece;
  EXPECT_EQ(body("a b"), "a b\r\n");
  EXPECT_EQ(body("a b", 2), "a b\r\n");  // the SP ends a piece: held back, then written before b
  EXPECT_EQ(body("a \r\n", 2), "a\r\n");
  // Long runs (looked at eight bytes at a time), with 8-bit text and a control character inside.
  EXPECT_EQ(body("abcdefghijklmnop\tqrstuvwx\xc3\xa9yz0123456789 \x01" "abcdefgh  ijklmnopq\r\n"),
            "abcdefghijklmnop qrstuvwx\xc3\xa9yz0123456789 \x01" "abcdefgh ijklmnopq\r\n");
}

TEST(DkimCanon, RelaxedWhitespaceAtEveryPlaceInAnEightByteWord) {
  // Words are looked at eight bytes at a time: each kind of whitespace, at each offset.
  const std::vector<std::pair<std::string, std::string>> seps = {
      {" ", " "}, {"  ", " "}, {" \t", " "}, {"\t", " "}, {"\t ", " "}, {"   ", " "}, {" \r\n", "\r\n"}, {"\r\n", "\r\n"}};
  for (const auto& [sep, becomes] : seps) {
    for (std::size_t k = 0; k < 18; ++k) {
      const std::string x(k, 'x'), y(21, 'y');
      const std::string want = (k == 0 && becomes == "\r\n" ? "\r\n" : x + becomes) + y + " z\r\n";
      for (std::size_t piece : {4096u, 9u, 8u})
        EXPECT_EQ(body(x + sep + y + " z\r\n", piece), want) << "'" << sep << "' after " << k << " bytes, pieces of " << piece;
    }
  }
}

TEST(DkimCanon, TheFieldsASignatureCovers) {
  const std::vector<std::string> fields = {"Received: x\r\n", "From: a@b.test\r\n", "To: c@d.test\r\n",
                                           "Subject: one\r\n", "Subject: two\r\n"};
  const auto h = signed_field_names(fields, {"from", "subject", "date", "to"}, {"from"});
  EXPECT_EQ(h, (std::vector<std::string>{"from", "from", "subject", "subject", "to"}));
  // Bottom up for repeated names (§5.4.2); the oversigned From contributes nothing.
  EXPECT_EQ(signed_fields(fields, h, dkim_canonicalization::relaxed), "from:a@b.test\r\nsubject:two\r\nsubject:one\r\nto:c@d.test\r\n");
}

// What §5.4.2 says, step by step: for each name of h=, the last field of that
// name not taken yet, scanning the header from the bottom (a field counts
// once; none left: nothing).
std::string signed_fields_as_written(const std::vector<std::string>& fields, const std::vector<std::string>& h) {
  std::vector<bool> taken(fields.size(), false);
  std::string out;
  for (const auto& name : h) {
    for (std::size_t i = fields.size(); i-- > 0;) {
      if (taken[i] || !portcullis::smtp::equals_nocase(portcullis::smtp::header_field_name(fields[i]), name)) continue;
      taken[i] = true;
      out += canonical_header(fields[i], dkim_canonicalization::simple);
      break;
    }
  }
  return out;
}

TEST(DkimCanon, TheFieldsASignatureCoversAsSection542TakesThem) {
  // Names in any case, repeated, absent, mentioned more often than present; headers of every size.
  const std::vector<std::string> names = {"From", "to", "SUBJECT", "x-a", "X-A", "date", "Received", "x"};
  std::mt19937 random(6376);
  for (int round = 0; round < 500; ++round) {
    std::vector<std::string> fields, h;
    const auto n_fields = random() % 40, n_h = random() % 40;
    for (std::size_t i = 0; i < n_fields; ++i)
      fields.push_back(names[random() % names.size()] + ": v" + std::to_string(i) + "\r\n");
    for (std::size_t i = 0; i < n_h; ++i) h.push_back(portcullis::smtp::to_lower(names[random() % names.size()]));
    ASSERT_EQ(signed_fields(fields, h, dkim_canonicalization::simple), signed_fields_as_written(fields, h))
        << "round " << round;
  }
}
