// Table tests for the escaping every log line goes through (proxy/log_text.hpp):
// nothing a client sends (an AUTH name may hold LF, RFC 4616 §2) may start a
// log line of its own or reach the terminal as a control sequence.
#include "log_text.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace portcullis {
namespace {

using namespace std::literals;

TEST(EscapeLogText, Table) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", ""},
      {"plain text", "plain text"},
      {"AUTH PLAIN as alice\n2026-12-01T00:00:00.000 info forged", "AUTH PLAIN as alice\\n2026-12-01T00:00:00.000 info forged"},
      {"a\r\nb", "a\\r\\nb"},
      {"cr\ronly", "cr\\ronly"},
      {"tab\there", "tab\\there"},
      {"\0"s, "\\x00"},
      {"\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"},  // ESC: no terminal escape sequences
      {"\x01\x1f", "\\x01\\x1f"},
      {"del\x7f", "del\\x7f"},
      {"back\\slash", "back\\slash"},                    // left alone: only control characters change
      {"Gr\xc3\xbc\xc3\x9f" "e", "Gr\xc3\xbc\xc3\x9f" "e"},  // UTF-8 passes
      {"\x80\xff", "\x80\xff"},                          // so do other 8-bit octets (no C1 here)
      {" ~", " ~"},                                      // the printable range's ends
      // C1 controls and U+2028/U+2029 in UTF-8: line breaks to Unicode-aware readers, CSI to terminals.
      {"a\xc2\x85" "b", "a\\u0085b"},
      {"\xc2\x9b" "31m", "\\u009b31m"},
      {"x\xe2\x80\xa8" "2026-01-01T00:00:00.000 info forged", "x\\u20282026-01-01T00:00:00.000 info forged"},
      {"\xe2\x80\xa9", "\\u2029"},
      {"nbsp\xc2\xa0 dash\xe2\x80\x94", "nbsp\xc2\xa0 dash\xe2\x80\x94"},  // other characters pass
      {"cut\xc2", "cut\xc2"},
      {"cut\xe2\x80", "cut\xe2\x80"},
  };
  for (const auto& [in, want] : cases) {
    EXPECT_EQ(escape_log_text(in), want) << "input: " << in;
    EXPECT_EQ(is_log_safe(in), in == want) << "input: " << in;
    EXPECT_EQ(escape_log_text(in).find_first_of("\r\n"), std::string::npos);
  }
}

TEST(EscapeLogText, EveryControlCharacter) {
  for (int c = 0; c < 0x100; ++c) {
    const std::string in(1, static_cast<char>(c));
    const std::string out = escape_log_text(in);
    if (c < 0x20 || c == 0x7f) {
      EXPECT_EQ(out[0], '\\') << c;
      EXPECT_GE(out.size(), 2u) << c;
    } else {
      EXPECT_EQ(out, in) << c;
    }
  }
}

}  // namespace
}  // namespace portcullis
