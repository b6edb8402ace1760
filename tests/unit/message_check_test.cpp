#include "smtp/message_check.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace portcullis::smtp;

// head_is_whole: the header section is fields (and their continuations) up to
// an empty line or the end; anything else in it (a malformed line, a bare CR
// or LF, a last line without CRLF) and it is not.
TEST(HeadIsWhole, FieldsUpToAnEmptyLineOrTheEnd) {
  EXPECT_TRUE(head_is_whole(""));
  EXPECT_TRUE(head_is_whole("\r\n"));
  EXPECT_TRUE(head_is_whole("\r\nbody without fields\r\n"));
  EXPECT_TRUE(head_is_whole("Subject: hi\r\n"));
  EXPECT_TRUE(head_is_whole("Subject: hi\r\n\r\nbody\r\n"));
  EXPECT_TRUE(head_is_whole("Subject:\r\nTo:x\r\n\r\n"));
  EXPECT_TRUE(head_is_whole("Subject: a\r\n folded\r\n\tagain\r\nTo: b\r\n\r\nbody"));
  EXPECT_TRUE(head_is_whole("X-!#$%&'*+-.^_`|~: odd but valid\r\n\r\n"));
  // Obsolete syntax a reader must take (RFC 5322 §4.5): white space between the name and the colon.
  EXPECT_TRUE(head_is_whole("Subject : hi\r\nTo\t:x\r\nFrom \t : a@b\r\n\r\nbody"));
  // What follows the empty line is the body's business.
  EXPECT_TRUE(head_is_whole("A: b\r\n\r\nbare\nLF and \r CR and no field\r\n"));
}

TEST(HeadIsWhole, AnythingElseInTheHeaderSection) {
  EXPECT_FALSE(head_is_whole("Subject: hi"));                 // no CRLF at the end
  EXPECT_FALSE(head_is_whole("Subject: hi\r\nTo: x"));
  EXPECT_FALSE(head_is_whole(" continued\r\n\r\n"));          // a continuation of nothing
  EXPECT_FALSE(head_is_whole("no colon here\r\n\r\n"));
  EXPECT_FALSE(head_is_whole(": empty name\r\n\r\n"));
  EXPECT_FALSE(head_is_whole("  : blanks for a name\r\n\r\n"));
  EXPECT_FALSE(head_is_whole("Sub ject : space inside\r\n\r\n"));
  EXPECT_FALSE(head_is_whole("Bad Name: space\r\n\r\n"));
  EXPECT_FALSE(head_is_whole("Subject: a\nb\r\n\r\n"));       // bare LF
  EXPECT_FALSE(head_is_whole("Subject: a\rb\r\n\r\n"));       // bare CR
  EXPECT_FALSE(head_is_whole("Subject: a\r\r\n\r\n"));        // CR before the CRLF
  EXPECT_FALSE(head_is_whole("Subject: a\r\n\n\r\n"));        // LF alone where the empty line would be
  EXPECT_FALSE(head_is_whole(std::string("N\xc3\xa9: 8-bit name\r\n\r\n")));
  EXPECT_FALSE(head_is_whole("A: b\r\nbody starts without an empty line\r\n"));
}

// What a policy's rewritten message must be: fields up to the empty line, then a body of CRLF lines.
TEST(MessageProblem, AFieldInObsoleteSyntaxIsAField) {
  EXPECT_EQ(message_problem("Subject : hi\r\nTo\t: x\r\n\r\nbody\r\n"), std::nullopt);
  EXPECT_EQ(message_problem("Subject: a\r\nSub ject : b\r\n\r\n"), "malformed header on line 2");
  EXPECT_EQ(message_problem("Subject: a\r\n : b\r\n\r\n"), std::nullopt);  // (a continuation)
  EXPECT_EQ(message_problem("Subject: a\r\n\r\nbare\nLF\r\n"), "bare CR or LF on line 3");
}
