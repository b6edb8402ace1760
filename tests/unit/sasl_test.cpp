// Table tests for SMTP AUTH (RFC 4954), PLAIN (RFC 4616), LOGIN and strict
// base64 (RFC 4648): one row per input.
#include "smtp/sasl.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::smtp {

// Outside the anonymous namespace, so that gtest finds it by ADL.
std::ostream& operator<<(std::ostream& os, sasl_error e) { return os << to_string(e); }

namespace {

using namespace std::literals;

// ---- base64 -------------------------------------------------------------------

struct base64_case {
  std::string text;
  std::optional<std::string> want;  // nullopt: refused
};

TEST(Base64, Decode) {
  const std::vector<base64_case> cases = {
      // RFC 4648 §10 test vectors
      {"", ""},
      {"Zg==", "f"},
      {"Zm8=", "fo"},
      {"Zm9v", "foo"},
      {"Zm9vYg==", "foob"},
      {"Zm9vYmE=", "fooba"},
      {"Zm9vYmFy", "foobar"},
      // Binary, the whole alphabet
      {"AA==", "\0"s},
      {"AAA=", "\0\0"s},
      {"AAAA", "\0\0\0"s},
      {"AP8=", "\0\xff"s},
      {"+/+/", "\xfb\xff\xbf"s},
      {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
       "\x00\x10\x83\x10\x51\x87\x20\x92\x8b\x30\xd3\x8f\x41\x14\x93\x51\x55\x97\x61\x96\x9b\x71\xd7\x9f\x82\x18\xa3\x92"
       "\x59\xa7\xa2\x9a\xab\xb2\xdb\xaf\xc3\x1c\xb3\xd3\x5d\xb7\xe3\x9e\xbb\xf3\xdf\xbf"s},
      {"AGFsaWNlAHNlY3JldA==", "\0alice\0secret"s},
      // Padding is required (RFC 4648 §4) and only at the end
      {"Zg", std::nullopt},
      {"Zg=", std::nullopt},
      {"Zm8", std::nullopt},
      {"Zg===", std::nullopt},
      {"Z===", std::nullopt},
      {"====", std::nullopt},
      {"=", std::nullopt},
      {"==", std::nullopt},
      {"Zg==Zg==", std::nullopt},
      {"Zm=v", std::nullopt},
      {"Z=9v", std::nullopt},
      {"=m9v", std::nullopt},
      // Pad bits must be zero (§3.5): one encoding per byte string
      {"Zh==", std::nullopt},
      {"Zm9=", std::nullopt},
      {"AB==", std::nullopt},
      {"AAB=", std::nullopt},
      // Nothing outside the alphabet: no whitespace, no URL alphabet, no NUL
      {"Zm9v\r\n", std::nullopt},
      {"Zm9v\n", std::nullopt},
      {"Zm9 v", std::nullopt},
      {" Zm9v", std::nullopt},
      {"Zm9v ", std::nullopt},
      {"Zm\t9v", std::nullopt},
      {"-_-_", std::nullopt},
      {"Zm9v\0AAA"s, std::nullopt},
      {"Zm9\xc3\xa9", std::nullopt},
      {"*", std::nullopt},
      {"Zm.v", std::nullopt},
  };
  for (const auto& c : cases) {
    const auto got = base64_decode(c.text);
    EXPECT_EQ(got, c.want) << "'" << c.text << "'";
  }
}

TEST(Base64, Encode) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", ""},          {"f", "Zg=="},         {"fo", "Zm8="},         {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}, {"\0\xff"s, "AP8="},
      {"\0alice\0secret"s, "AGFsaWNlAHNlY3JldA=="},
  };
  for (const auto& [bytes, text] : cases) EXPECT_EQ(base64_encode(bytes), text);
}

TEST(Base64, LoginPrompts) {
  EXPECT_EQ(base64_encode("Username:"), login_user_challenge);
  EXPECT_EQ(base64_encode("Password:"), login_password_challenge);
}

TEST(Base64, RoundTripEveryByteAndLength) {
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (std::size_t start = 0; start < all.size(); start += 7) {
    for (std::size_t len = 0; len <= 10 && start + len <= all.size(); ++len) {
      const std::string bytes = all.substr(start, len);
      const std::string text = base64_encode(bytes);
      EXPECT_EQ(text.size() % 4, 0u);
      EXPECT_EQ(base64_decode(text), bytes);
    }
  }
  EXPECT_EQ(base64_decode(base64_encode(all)), all);
}

// ---- the AUTH command ------------------------------------------------------------

struct auth_case {
  std::string arg;
  sasl_error error;
  sasl_mechanism mechanism = sasl_mechanism::plain;
  bool has_initial_response = false;
  std::string initial_response = "";
};

TEST(AuthCommand, Parse) {
  const std::string longest_ok = "PLAIN " + std::string(12272, 'A');     // "AUTH " + 12278 + CRLF = 12285
  const std::string too_long = "PLAIN " + std::string(12276, 'A');       // 12289 octets with "AUTH " and CRLF
  const std::string exactly = "LOGIN " + std::string(12275, 'A');  // 12288 octets: the limit itself
  const std::vector<auth_case> cases = {
      {"PLAIN", sasl_error::none, sasl_mechanism::plain},
      {"plain", sasl_error::none, sasl_mechanism::plain},  // RFC 4954 §4: mechanism names are case-insensitive
      {"PlAiN", sasl_error::none, sasl_mechanism::plain},
      {"LOGIN", sasl_error::none, sasl_mechanism::login},
      {"login", sasl_error::none, sasl_mechanism::login},
      {"PLAIN AGFsaWNlAHNlY3JldA==", sasl_error::none, sasl_mechanism::plain, true, "\0alice\0secret"s},
      {"PLAIN =", sasl_error::none, sasl_mechanism::plain, true, ""},  // §4: "=" is an empty initial response
      {"LOGIN YWxpY2U=", sasl_error::none, sasl_mechanism::login, true, "alice"},
      {"LOGIN =", sasl_error::none, sasl_mechanism::login, true, ""},
      // Mechanisms we do not offer (§4: 504)
      {"CRAM-MD5", sasl_error::unknown_mechanism},
      {"SCRAM-SHA-256", sasl_error::unknown_mechanism},
      {"XOAUTH2 dXNlcj1h", sasl_error::unknown_mechanism},
      {"GSSAPI", sasl_error::unknown_mechanism},
      {"ANONYMOUS", sasl_error::unknown_mechanism},
      {"PLAINX", sasl_error::unknown_mechanism},
      {"ABCDEFGHIJKLMNOPQRST", sasl_error::unknown_mechanism},  // 20 characters: a name
      {"CRAM-MD5 not-base64!", sasl_error::unknown_mechanism},  // the mechanism is looked at first
      // Syntax
      {"", sasl_error::syntax},
      {" PLAIN", sasl_error::syntax},
      {"PLAIN ", sasl_error::syntax},
      {"PLAIN  AGFsaWNlAHNlY3JldA==", sasl_error::syntax},
      {"PLAIN AGFsaWNlAHNlY3JldA== ", sasl_error::syntax},
      {"PLAIN AGE= AGE=", sasl_error::syntax},
      {"PLAIN\tAGE=", sasl_error::syntax},
      {"PL@IN", sasl_error::syntax},
      {"PLAIN\x01", sasl_error::syntax},
      {"ABCDEFGHIJKLMNOPQRSTU", sasl_error::syntax},  // 21 characters
      {"PL\xc3\x84IN", sasl_error::syntax},
      // Initial responses that are not base64 (§4: 501 5.5.2)
      {"PLAIN *", sasl_error::bad_base64},
      {"PLAIN AGFsaWNlAHNlY3JldA", sasl_error::bad_base64},
      {"PLAIN ==", sasl_error::bad_base64},
      {"PLAIN AGFsaWNl\r", sasl_error::bad_base64},
      {"LOGIN YWxpY2U", sasl_error::bad_base64},
      // Line length (§4: 12288 octets with "AUTH " and CRLF)
      {longest_ok, sasl_error::none, sasl_mechanism::plain, true, std::string(12272 / 4 * 3, '\0')},
      {too_long, sasl_error::line_too_long},
      {"CRAM-MD5 " + std::string(12280, 'A'), sasl_error::line_too_long},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "'" << c.arg.substr(0, 40) << "'");
    const auth_command cmd = parse_auth_command(c.arg);
    EXPECT_EQ(cmd.error, c.error);
    if (c.error != sasl_error::none) continue;
    EXPECT_EQ(cmd.mechanism, c.mechanism);
    EXPECT_EQ(cmd.has_initial_response, c.has_initial_response);
    EXPECT_EQ(cmd.initial_response, c.initial_response);
  }
  ASSERT_EQ(exactly.size() + 7, sasl_max_line_length);
  EXPECT_NE(parse_auth_command(exactly).error, sasl_error::line_too_long);
  EXPECT_EQ(parse_auth_command(exactly + "A").error, sasl_error::line_too_long);
}

// ---- client responses --------------------------------------------------------------

struct response_case {
  std::string line;
  sasl_error error;
  std::string data = "";
};

TEST(ClientResponse, Decode) {
  const std::vector<response_case> cases = {
      {"YWxpY2U=", sasl_error::none, "alice"},
      {"", sasl_error::none, ""},          // an empty response is an empty line
      {"*", sasl_error::cancelled},        // RFC 4954 §4
      {"=", sasl_error::bad_base64},       // "=" only stands for empty in the AUTH line
      {"**", sasl_error::bad_base64},
      {"* ", sasl_error::bad_base64},
      {" *", sasl_error::bad_base64},
      {"YWxpY2U", sasl_error::bad_base64},
      {"YWxp Y2U=", sasl_error::bad_base64},
      {std::string(12284, 'A'), sasl_error::none, std::string(9213, '\0')},  // 12286 octets with CRLF
      {std::string(12288, 'A'), sasl_error::line_too_long},
  };
  for (const auto& c : cases) {
    const sasl_response r = decode_client_response(c.line);
    EXPECT_EQ(r.error, c.error) << "'" << c.line.substr(0, 40) << "'";
    EXPECT_EQ(r.data, c.data) << "'" << c.line.substr(0, 40) << "'";
  }
  EXPECT_EQ(decode_client_response(std::string(sasl_max_line_length - 2, 'A')).error, sasl_error::bad_base64);  // 12286 % 4 != 0
  EXPECT_EQ(decode_client_response(std::string(sasl_max_line_length - 1, 'A')).error, sasl_error::line_too_long);
}

// ---- PLAIN (RFC 4616 §2) --------------------------------------------------------------

struct plain_case {
  std::string name;
  std::string message;
  sasl_error error;
  std::string authzid = "", authcid = "", password = "";
};

TEST(PlainMessage, Parse) {
  const std::string u255(255, 'u'), u256(256, 'u');
  const std::vector<plain_case> cases = {
      {"no authzid", "\0alice\0secret"s, sasl_error::none, "", "alice", "secret"},
      {"authzid = authcid", "alice\0alice\0secret"s, sasl_error::none, "alice", "alice", "secret"},
      {"password with spaces and tabs", "\0alice\0s e\tc r e t"s, sasl_error::none, "", "alice", "s e\tc r e t"},
      {"UTF-8", "\0j\xc3\xb6rg\0p\xc3\xa4ss \xf0\x9f\x94\x91"s, sasl_error::none, "", "j\xc3\xb6rg",
       "p\xc3\xa4ss \xf0\x9f\x94\x91"},
      {"user@domain", "\0alice@example.org\0secret"s, sasl_error::none, "", "alice@example.org", "secret"},
      {"255-octet fields", u255 + '\0' + u255 + '\0' + u255, sasl_error::none, u255, u255, u255},
      // NUL count: exactly two
      {"empty", "", sasl_error::malformed},
      {"no NUL", "alicesecret", sasl_error::malformed},
      {"one NUL", "alice\0secret"s, sasl_error::malformed},
      {"one NUL leading", "\0alicesecret"s, sasl_error::malformed},
      {"three NULs", "\0alice\0sec\0ret"s, sasl_error::malformed},
      {"three NULs, trailing", "\0alice\0secret\0"s, sasl_error::malformed},
      {"three NULs, authzid", "a\0b\0alice\0secret"s, sasl_error::malformed},
      {"only NULs", "\0\0"s, sasl_error::malformed},
      {"only three NULs", "\0\0\0"s, sasl_error::malformed},
      // Empty fields
      {"empty authcid", "\0\0secret"s, sasl_error::malformed},
      {"empty password", "\0alice\0"s, sasl_error::malformed},
      {"authzid only", "alice\0\0"s, sasl_error::malformed},
      // Lengths (up to 255 octets each)
      {"authcid 256", "\0"s + u256 + '\0' + "secret", sasl_error::malformed},
      {"password 256", "\0alice\0"s + u256, sasl_error::malformed},
      {"authzid 256", u256 + '\0' + u256 + '\0' + "secret", sasl_error::malformed},
      // UTF-8 (RFC 4616 §2: UTF8-SAFE)
      {"authcid bad UTF-8", "\0al\xffice\0secret"s, sasl_error::malformed},
      {"password bad UTF-8", "\0alice\0\xc3\x28"s, sasl_error::malformed},
      {"password overlong", "\0alice\0\xc0\xaf"s, sasl_error::malformed},
      {"password surrogate", "\0alice\0\xed\xa0\x80"s, sasl_error::malformed},
      {"authzid bad UTF-8", "\xff\0alice\0secret"s, sasl_error::malformed},
      // authzid: only the authcid itself
      {"authzid other user", "bob\0alice\0secret"s, sasl_error::authzid_mismatch},
      {"authzid case differs", "ALICE\0alice\0secret"s, sasl_error::authzid_mismatch},
      {"authzid prefix", "alic\0alice\0secret"s, sasl_error::authzid_mismatch},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    sasl_credentials creds;
    EXPECT_EQ(parse_plain_message(c.message, creds), c.error);
    if (c.error == sasl_error::none) {
      EXPECT_EQ(creds.mechanism, sasl_mechanism::plain);
      EXPECT_EQ(creds.authzid, c.authzid);
      EXPECT_EQ(creds.authcid, c.authcid);
      EXPECT_EQ(creds.password, c.password);
    } else {
      EXPECT_EQ(creds, sasl_credentials{});
    }
  }
}

TEST(LoginField, Check) {
  EXPECT_EQ(check_login_field("alice"), sasl_error::none);
  EXPECT_EQ(check_login_field("p\xc3\xa4ss word"), sasl_error::none);
  EXPECT_EQ(check_login_field(std::string(255, 'x')), sasl_error::none);
  EXPECT_EQ(check_login_field(""), sasl_error::malformed);
  EXPECT_EQ(check_login_field("a\0b"sv), sasl_error::malformed);
  EXPECT_EQ(check_login_field("\0"sv), sasl_error::malformed);
  EXPECT_EQ(check_login_field(std::string(256, 'x')), sasl_error::malformed);
  EXPECT_EQ(check_login_field("\xff"), sasl_error::malformed);
}

// ---- whole exchanges -------------------------------------------------------------------

using status = sasl_exchange::status;

struct expected_step {
  status state;
  std::string challenge = "";
  sasl_error error = sasl_error::none;
};

struct exchange_case {
  std::string name;
  std::string arg;                    // after "AUTH "
  std::vector<std::string> lines;     // client lines after each 334
  std::vector<expected_step> steps;   // one for start() and one per line
  sasl_credentials creds = {};        // when the last step is done
};

TEST(SaslExchange, Scripts) {
  const std::string user = "alice", pass = "secret";
  const std::string b64_user = base64_encode(user), b64_pass = base64_encode(pass);
  const std::string plain = base64_encode("\0alice\0secret"s);
  const sasl_credentials plain_creds{sasl_mechanism::plain, "", "alice", "secret"};
  const sasl_credentials login_creds{sasl_mechanism::login, "", "alice", "secret"};
  const std::string uc(login_user_challenge), pc(login_password_challenge);
  const std::vector<exchange_case> cases = {
      {"PLAIN initial response", "PLAIN " + plain, {}, {{status::done}}, plain_creds},
      {"plain lower case", "plain " + plain, {}, {{status::done}}, plain_creds},
      {"PLAIN authzid", "PLAIN " + base64_encode("alice\0alice\0secret"s), {}, {{status::done}},
       {sasl_mechanism::plain, "alice", "alice", "secret"}},
      {"PLAIN after empty challenge", "PLAIN", {plain}, {{status::challenge, ""}, {status::done}}, plain_creds},
      {"PLAIN cancelled", "PLAIN", {"*"}, {{status::challenge, ""}, {status::failed, "", sasl_error::cancelled}}},
      {"PLAIN bad base64", "PLAIN", {"AGFsaWNl AHNlY3JldA=="},
       {{status::challenge, ""}, {status::failed, "", sasl_error::bad_base64}}},
      {"PLAIN empty response", "PLAIN", {""}, {{status::challenge, ""}, {status::failed, "", sasl_error::malformed}}},
      {"PLAIN '=' as a response", "PLAIN", {"="}, {{status::challenge, ""}, {status::failed, "", sasl_error::bad_base64}}},
      {"PLAIN empty initial response", "PLAIN =", {}, {{status::failed, "", sasl_error::malformed}}},
      {"PLAIN one NUL", "PLAIN " + base64_encode("alice\0secret"s), {}, {{status::failed, "", sasl_error::malformed}}},
      {"PLAIN three NULs", "PLAIN " + base64_encode("\0alice\0secret\0"s), {}, {{status::failed, "", sasl_error::malformed}}},
      {"PLAIN empty password", "PLAIN " + base64_encode("\0alice\0"s), {}, {{status::failed, "", sasl_error::malformed}}},
      {"PLAIN authzid mismatch", "PLAIN " + base64_encode("root\0alice\0secret"s), {},
       {{status::failed, "", sasl_error::authzid_mismatch}}},
      {"PLAIN response too long", "PLAIN", {std::string(sasl_max_line_length, 'A')},
       {{status::challenge, ""}, {status::failed, "", sasl_error::line_too_long}}},
      {"LOGIN", "LOGIN", {b64_user, b64_pass}, {{status::challenge, uc}, {status::challenge, pc}, {status::done}}, login_creds},
      {"LOGIN initial response", "LOGIN " + b64_user, {b64_pass}, {{status::challenge, pc}, {status::done}}, login_creds},
      {"LOGIN cancelled at user", "LOGIN", {"*"}, {{status::challenge, uc}, {status::failed, "", sasl_error::cancelled}}},
      {"LOGIN cancelled at password", "LOGIN", {b64_user, "*"},
       {{status::challenge, uc}, {status::challenge, pc}, {status::failed, "", sasl_error::cancelled}}},
      {"LOGIN empty user", "LOGIN", {""}, {{status::challenge, uc}, {status::failed, "", sasl_error::malformed}}},
      {"LOGIN empty password", "LOGIN", {b64_user, ""},
       {{status::challenge, uc}, {status::challenge, pc}, {status::failed, "", sasl_error::malformed}}},
      {"LOGIN NUL in password", "LOGIN", {b64_user, base64_encode("sec\0ret"s)},
       {{status::challenge, uc}, {status::challenge, pc}, {status::failed, "", sasl_error::malformed}}},
      {"LOGIN password too long", "LOGIN", {b64_user, base64_encode(std::string(256, 'p'))},
       {{status::challenge, uc}, {status::challenge, pc}, {status::failed, "", sasl_error::malformed}}},
      {"LOGIN empty initial response", "LOGIN =", {}, {{status::failed, "", sasl_error::malformed}}},
      {"LOGIN bad base64 password", "LOGIN", {b64_user, "c2VjcmV0="},
       {{status::challenge, uc}, {status::challenge, pc}, {status::failed, "", sasl_error::bad_base64}}},
      {"unknown mechanism", "CRAM-MD5", {}, {{status::failed, "", sasl_error::unknown_mechanism}}},
      {"no mechanism", "", {}, {{status::failed, "", sasl_error::syntax}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(c.steps.size(), c.lines.size() + 1);
    sasl_exchange x;
    for (std::size_t i = 0; i < c.steps.size(); ++i) {
      const sasl_exchange::step s = i == 0 ? x.start(c.arg) : x.respond(c.lines[i - 1]);
      EXPECT_EQ(s.state, c.steps[i].state) << "step " << i;
      EXPECT_EQ(s.challenge, c.steps[i].challenge) << "step " << i;
      EXPECT_EQ(s.error, c.steps[i].error) << "step " << i;
    }
    if (c.steps.back().state == status::done) {
      EXPECT_EQ(x.credentials(), c.creds);
    } else {
      EXPECT_EQ(x.credentials(), sasl_credentials{});  // nothing half-filled survives a failure
    }
    // Over is over: nothing more is accepted.
    EXPECT_EQ(x.respond(plain).state, status::failed);
    EXPECT_EQ(x.start("PLAIN " + plain).state, status::failed);
  }
}

TEST(SaslExchange, RespondBeforeStartFails) {
  sasl_exchange x;
  const auto s = x.respond(base64_encode("\0alice\0secret"s));
  EXPECT_EQ(s.state, status::failed);
  EXPECT_EQ(s.error, sasl_error::syntax);
}

// ---- replies (RFC 4954 §4, §6) ------------------------------------------------------------

TEST(SaslReplies, EveryErrorHasItsReply) {
  struct row {
    sasl_error error;
    int code;
    std::string status;
  };
  const std::vector<row> rows = {
      {sasl_error::syntax, 501, "5.5.4"},        {sasl_error::unknown_mechanism, 504, "5.5.4"},
      {sasl_error::line_too_long, 500, "5.5.6"}, {sasl_error::bad_base64, 501, "5.5.2"},
      {sasl_error::cancelled, 501, "5.0.0"},     {sasl_error::malformed, 501, "5.5.2"},
      {sasl_error::authzid_mismatch, 535, "5.7.8"},
  };
  for (const auto& r : rows) {
    const reply rep = reply_for(r.error);
    EXPECT_EQ(rep.code, r.code) << r.error;
    EXPECT_EQ(rep.status, r.status) << r.error;
    EXPECT_TRUE(is_safe_reply_text(rep.text())) << r.error;
    EXPECT_FALSE(rep.text().empty()) << r.error;
  }
  EXPECT_EQ(reply_for(sasl_error::none).code, 0);
  EXPECT_EQ(reply_for(sasl_error::bad_base64).wire(), "501 5.5.2 Cannot Base64-decode client response\r\n");
}

}  // namespace
}  // namespace portcullis::smtp
