// MAIL FROM parameters: {parameters, rules} -> options or the refusal.
#include <gtest/gtest.h>

#include "smtp/mail_options.hpp"

namespace portcullis::smtp {
namespace {

std::vector<esmtp_param> params_of(const std::string& text) {
  if (text.empty()) return {};
  auto p = parse_esmtp_params(text, false);
  EXPECT_TRUE(p.has_value()) << text;
  return p.value_or(std::vector<esmtp_param>{});
}

struct mail_params_case {
  std::string params;
  bool esmtp = true;
  bool auth_offered = false;
  int want_code = 0;  // 0: accepted
  std::string want_status;
  mail_options want{};
};

TEST(mail_options, table) {
  const std::vector<mail_params_case> cases = {
      {"", true, false, 0, "", {}},
      {"SIZE=1000", true, false, 0, "", {1000, false, false}},
      {"SIZE=1000000", true, false, 0, "", {1000000, false, false}},
      {"SIZE=1000001", true, false, 552, "5.3.4"},                     // over max_message_size (RFC 1870 §6)
      {"SIZE=99999999999999999999", true, false, 552, "5.3.4"},        // twenty digits: overflow is just too big
      {"SIZE=999999999999999999999", true, false, 501, "5.5.4"},       // 21 digits: not a size-value
      {"SIZE=12a", true, false, 501, "5.5.4"},
      {"SIZE=1 SIZE=2", true, false, 501, "5.5.4"},                    // duplicate
      {"BODY=8BITMIME", true, false, 0, "", {std::nullopt, true, false}},
      {"BODY=8bitmime", true, false, 0, "", {std::nullopt, true, false}},
      {"BODY=7BIT", true, false, 0, "", {}},
      {"BODY=BINARYMIME", true, false, 501, "5.5.4"},                  // CHUNKING not offered
      {"SMTPUTF8", true, false, 0, "", {std::nullopt, false, true}},
      {"SMTPUTF8=yes", true, false, 501, "5.5.4"},
      {"AUTH=<>", true, true, 0, "", {}},                              // RFC 4954 §5, with AUTH offered
      {"AUTH=<>", true, false, 555, "5.5.4"},
      {"AUTH", true, true, 501, "5.5.4"},
      {"RET=HDRS", true, false, 555, "5.5.4"},                         // DSN not offered
      {"SIZE=10", false, false, 555, "5.5.4"},                         // HELO, not EHLO: no parameters
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.params);
    const auto got = parse_mail_params(params_of(c.params), {1000000, c.esmtp, c.auth_offered});
    if (c.want_code == 0) {
      ASSERT_TRUE(std::holds_alternative<mail_options>(got)) << std::get<reply>(got).summary();
      EXPECT_EQ(std::get<mail_options>(got), c.want);
    } else {
      ASSERT_TRUE(std::holds_alternative<reply>(got));
      EXPECT_EQ(std::get<reply>(got).code, c.want_code);
      EXPECT_EQ(std::get<reply>(got).status, c.want_status);
    }
  }
}

// The client's keyword is named in the 555, cut so the line stays within 512 octets (RFC 5321 §4.5.3.1.5).
TEST(mail_options, an_unsupported_keyword_of_any_length_keeps_the_reply_within_512_octets) {
  const std::string keyword(2000, 'X');
  const auto got = parse_mail_params(params_of(keyword + "=1"), {1000000, true, false});
  ASSERT_TRUE(std::holds_alternative<reply>(got));
  const auto wire = std::get<reply>(got).wire();
  EXPECT_LE(wire.size(), max_reply_line_octets);
  EXPECT_EQ(wire, "555 5.5.4 Unsupported parameter " + std::string(64, 'X') + "...\r\n");
  EXPECT_EQ(unsupported_parameter("RET").wire(), "555 5.5.4 Unsupported parameter RET\r\n");
}

}  // namespace
}  // namespace portcullis::smtp
