#include "smtp/message_header.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace portcullis::smtp;

namespace {

struct split {
  std::vector<std::string> fields;
  std::string body;
};

// The message fed in pieces of `piece` bytes.
split read(std::string_view message, std::size_t piece) {
  split out;
  header_reader r;
  const auto on_field = [&](std::string_view f) { out.fields.emplace_back(f); };
  for (std::size_t i = 0; i < message.size(); i += piece) {
    const auto chunk = message.substr(i, piece);
    const auto used = r.feed(chunk, on_field);
    out.body += chunk.substr(used);
  }
  r.finish(on_field);
  return out;
}

}  // namespace

TEST(HeaderReader, FieldsAsReceivedWithFoldingThenTheBody) {
  const std::string m =
      "From: Alice <alice@example.test>\r\n"
      "Subject: a long\r\n\tfolded subject\r\n"
      "To: bob@example.net\r\n"
      "\r\n"
      "Body line\r\nSubject: not a field\r\n";
  for (std::size_t piece : {1u, 2u, 3u, 7u, 64u, 4096u}) {
    const auto s = read(m, piece);
    ASSERT_EQ(s.fields.size(), 3u) << piece;
    EXPECT_EQ(s.fields[0], "From: Alice <alice@example.test>\r\n");
    EXPECT_EQ(s.fields[1], "Subject: a long\r\n\tfolded subject\r\n");
    EXPECT_EQ(s.fields[2], "To: bob@example.net\r\n");
    EXPECT_EQ(s.body, "Body line\r\nSubject: not a field\r\n") << piece;
  }
}

TEST(HeaderReader, AMessageOfHeaderFieldsOnly) {
  for (std::size_t piece : {1u, 5u, 100u}) {
    auto s = read("Subject: x\r\nTo: y\r\n", piece);
    ASSERT_EQ(s.fields.size(), 2u);
    EXPECT_EQ(s.fields[1], "To: y\r\n");
    s = read("Subject: x\r\n folded\r\n", piece);
    ASSERT_EQ(s.fields.size(), 1u);
    EXPECT_EQ(s.fields[0], "Subject: x\r\n folded\r\n");
    s = read("Subject: no line end", piece);
    ASSERT_EQ(s.fields.size(), 1u);
    EXPECT_EQ(s.fields[0], "Subject: no line end\r\n");
    EXPECT_TRUE(s.body.empty());
  }
}

TEST(HeaderReader, AnEmptyHeaderSection) {
  const auto s = read("\r\nbody\r\n", 3);
  EXPECT_TRUE(s.fields.empty());
  EXPECT_EQ(s.body, "body\r\n");
}

TEST(HeaderField, NameAndUnfoldedValue) {
  EXPECT_EQ(header_field_name("From: a@b\r\n"), "From");
  EXPECT_EQ(header_field_name("From \t: a@b\r\n"), "From");  // obsolete WSP before the colon
  EXPECT_EQ(header_field_name("no colon here\r\n"), "");
  EXPECT_EQ(header_field_value("Subject: a\r\n b\r\n"), " a b");
  EXPECT_EQ(header_field_value("Subject:\r\n"), "");
}

TEST(MailboxDomains, TheFormsOfRfc5322) {
  struct row {
    const char* value;
    std::vector<std::string> domains;
  };
  const std::vector<row> rows = {
      {"alice@example.test", {"example.test"}},
      {" Alice <alice@Example.TEST>", {"example.test"}},
      {"\"Smith, Alice\" <alice@example.test>", {"example.test"}},
      {"\"a@evil.test\" <alice@example.test>", {"example.test"}},  // an @ in the display name is not the address
      {"Alice (a@evil.test) <alice@example.test> (comment)", {"example.test"}},
      {"alice@example.test (Alice <x@evil.test>)", {"example.test"}},
      {"\"quoted local\"@example.test", {"example.test"}},
      {"a@one.test, B <b@two.test>", {"one.test", "two.test"}},
      {"a@one.test,, b@one.test", {"one.test", "one.test"}},  // obs-mbox-list's empty element
      {"Team: a@one.test, b@two.test;", {"one.test", "two.test"}},
      {"Team: a@one.test;, c@three.test", {"one.test", "three.test"}},
      {"<@relay.test,@other.test:alice@example.test>", {"example.test"}},  // obs-route
      {"John Q. Public <jqp@example.test>", {"example.test"}},
      {"a@[192.0.2.1]", {"[192.0.2.1]"}},
      {"=?utf-8?q?Al=C3=AFce?= <alice@example.test>", {"example.test"}},
      {"Al\xc3\xafse <alice@b\xc3\xbc\x63her.test>", {"b\xc3\xbc\x63her.test"}},  // RFC 6532
      {"alice@example.test\r\n (folded comment)", {"example.test"}},
  };
  for (const auto& r : rows) {
    const auto got = mailbox_domains(r.value);
    ASSERT_TRUE(got.has_value()) << r.value;
    EXPECT_EQ(*got, r.domains) << r.value;
  }
}

TEST(MailboxDomains, WhatIsNoMailboxList) {
  for (const char* value : {
           "",
           "   ",
           "alice",                         // no domain
           "alice@",                        //
           "@example.test",                 // no local part
           "Alice <alice>",                 //
           "Alice <alice@example.test",     // unclosed
           "alice@example.test>",           //
           "\"unclosed@example.test",       //
           "alice@example.test (unclosed",  //
           "alice@[192.0.2.1",              //
           "alice@example..test",           //
           "alice@example.test.",           //
           "alice@.example.test",           //
           "a@b@example.test",              //
           "undisclosed-recipients:;",      // a group, but no mailbox
           "Team: a@one.test",              // unclosed group
           ": a@one.test;",                 // a group without a name
           "alice@example.test; bob@example.test",
           "Alice <> ",
           "Al)ice <alice@example.test>",
           "alice@exa\x01mple.test",
       }) {
    EXPECT_FALSE(mailbox_domains(value).has_value()) << value;
  }
}
