// Table tests for the ASCII and UTF-8 helpers the parsers share: SMTP
// keywords are case-insensitive ASCII, never locale-dependent (RFC 5321 §2.4),
// and UTF-8 must be well-formed (RFC 3629 §4; RFC 6531 §3.3).
#include "smtp/text.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace portcullis::smtp {
namespace {

using namespace std::literals;

TEST(IsValidUtf8, Table) {
  const std::vector<std::pair<std::string, bool>> cases = {
      {"", true},
      {"plain ascii", true},
      {"\0"s, true},                  // NUL is ASCII: the parsers refuse it themselves
      {"\x7f", true},
      {"\xc3\xbc", true},             // ü
      {"\xc2\x80", true},             // U+0080, the first 2-byte
      {"\xdf\xbf", true},             // U+07FF
      {"\xe0\xa0\x80", true},         // U+0800, the first 3-byte
      {"\xe4\xbe\x8b", true},         // 例
      {"\xed\x9f\xbf", true},         // U+D7FF, just below the surrogates
      {"\xee\x80\x80", true},         // U+E000, just above them
      {"\xef\xbf\xbf", true},         // U+FFFF
      {"\xf0\x90\x80\x80", true},     // U+10000, the first 4-byte
      {"\xf0\x9f\x93\xa7", true},     // 📧
      {"\xf4\x8f\xbf\xbf", true},     // U+10FFFF, the last
      {"\x80", false},                // a lone continuation byte
      {"\xbf", false},
      {"\xc0\x80", false},            // overlong NUL
      {"\xc1\xbf", false},            // overlong
      {"\xe0\x80\x80", false},        // overlong
      {"\xe0\x9f\xbf", false},        // overlong U+07FF
      {"\xf0\x80\x80\x80", false},    // overlong
      {"\xf0\x8f\xbf\xbf", false},    // overlong U+FFFF
      {"\xed\xa0\x80", false},        // U+D800, a surrogate
      {"\xed\xbf\xbf", false},        // U+DFFF
      {"\xf4\x90\x80\x80", false},    // U+110000
      {"\xf5\x80\x80\x80", false},
      {"\xff", false},
      {"\xfe", false},
      {"\xc3", false},                // truncated
      {"\xe4\xbe", false},
      {"\xf0\x9f\x93", false},
      {"a\xc3", false},
      {"\xc3\x28", false},            // bad continuation
      {"\xe4\x28\x8b", false},
      {"\xe4\xbe\x28", false},
      {"\xf0\x9f\x28\xa7", false},
      {"\xc3\xbc\xc3", false},
  };
  for (const auto& [s, want] : cases) {
    SCOPED_TRACE(testing::PrintToString(s));
    EXPECT_EQ(is_valid_utf8(s), want);
  }
}

// Postfix's valid_hostname: what a PTR name must be to go upstream as XCLIENT NAME.
TEST(IsValidHostname, Table) {
  const std::string label63(63, 'a'), label64(64, 'a');
  std::string long_name;
  while (long_name.size() < 255) long_name.append("abcd.");
  const std::vector<std::pair<std::string, bool>> cases = {
      {"mail.example.test", true},
      {"MAIL-1.Example.test", true},
      {"a", true},
      {"_dmarc.example.test", true},
      {"1a.example.test", true},
      {"123.example", true},  // a digit-only label, not an address
      {label63 + ".test", true},
      {long_name + "test", false},  // over 255
      {"", false},
      {"-mail.example.test", false},
      {"mail-.example.test", false},
      {"mail.-example.test", false},
      {"mail..example.test", false},
      {".example.test", false},
      {"example.test.", false},
      {"192.0.2.78", false},  // all digits and dots
      {"2001:db8::1", false},
      {"mail example.test", false},
      {"mail\x80.example.test", false},
      {"mail/x.example.test", false},
      {label64 + ".test", false},
  };
  for (const auto& [name, want] : cases) EXPECT_EQ(is_valid_hostname(name), want) << name;
}

TEST(IsAscii, Table) {
  EXPECT_TRUE(is_ascii(""));
  EXPECT_TRUE(is_ascii("MAIL FROM:<a@b>\r\n\t\0\x7f"s));
  EXPECT_FALSE(is_ascii("\x80"));
  EXPECT_FALSE(is_ascii("a\xc3\xbc"));
  EXPECT_FALSE(is_ascii("\xff"));
  // Long text is read in blocks: an 8-bit byte anywhere in it, or in the tail after the last block.
  const std::string text(100, 'a');
  EXPECT_TRUE(is_ascii(text));
  for (std::size_t at : {0, 7, 31, 32, 63, 95, 96, 99}) {
    auto t = text;
    t[at] = '\x80';
    EXPECT_FALSE(is_ascii(t)) << "8-bit byte at " << at;
  }
}

TEST(CaseInsensitive, Table) {
  struct row {
    std::string a, b;
    bool equal;
  };
  const std::vector<row> cases = {
      {"MAIL", "mail", true},
      {"StartTLS", "STARTTLS", true},
      {"", "", true},
      {"MAIL", "MAI", false},
      {"MAIL", "MAIM", false},
      {"@", "`", false},            // 0x40 and 0x60 differ by the case bit but are no letters
      {"[", "{", false},
      {"\xc3\xbc", "\xc3\x9c", false},  // ü / Ü: no Unicode case folding
      {"I", "\xc4\xb1", false},         // no Turkish dotless i, whatever the locale
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.a + " / " + c.b);
    EXPECT_EQ(equals_nocase(c.a, c.b), c.equal);
    EXPECT_EQ(equals_nocase(c.b, c.a), c.equal);
  }
  EXPECT_TRUE(starts_with_nocase("from:<a@b>", "FROM:"));
  EXPECT_TRUE(starts_with_nocase("FROM:", "from:"));
  EXPECT_FALSE(starts_with_nocase("FROM", "FROM:"));
  EXPECT_FALSE(starts_with_nocase("", "F"));
  EXPECT_TRUE(starts_with_nocase("x", ""));
  EXPECT_EQ(to_upper("smtputf8 \xc3\xbc @`[{"), "SMTPUTF8 \xc3\xbc @`[{");
  EXPECT_EQ(to_lower("EXAMPLE.Test \xc3\x9c"), "example.test \xc3\x9c");
}

}  // namespace
}  // namespace portcullis::smtp
