// libFuzzer target: SMTP AUTH decoding (RFC 4954), PLAIN (RFC 4616), LOGIN
// and strict base64 (RFC 4648). The input is used as raw bytes, as base64
// text, as a PLAIN message and as a script of AUTH lines.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "smtp/sasl.hpp"
#include "smtp/text.hpp"

using namespace portcullis::smtp;

namespace {

void check_field(std::string_view s, bool may_be_empty) {
  FUZZ_CHECK(may_be_empty || !s.empty());
  FUZZ_CHECK(s.size() <= sasl_max_field_length);
  FUZZ_CHECK(s.find('\0') == std::string_view::npos);
  FUZZ_CHECK(is_valid_utf8(s));
}

void check_credentials(const sasl_credentials& c) {
  check_field(c.authzid, true);
  check_field(c.authcid, false);
  check_field(c.password, false);
  FUZZ_CHECK(c.authzid.empty() || c.authzid == c.authcid);
}

void check_step(const sasl_exchange& x, const sasl_exchange::step& s) {
  switch (s.state) {
    case sasl_exchange::status::challenge:
      FUZZ_CHECK(s.error == sasl_error::none);
      FUZZ_CHECK(base64_decode(s.challenge).has_value());
      break;
    case sasl_exchange::status::done:
      FUZZ_CHECK(s.error == sasl_error::none);
      check_credentials(x.credentials());
      break;
    case sasl_exchange::status::failed:
      FUZZ_CHECK(s.error != sasl_error::none);
      FUZZ_CHECK(x.credentials() == sasl_credentials{});
      FUZZ_CHECK(reply_for(s.error).permanent());
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  // base64: decode(encode(x)) == x, and only the canonical text decodes.
  const std::string encoded = base64_encode(in);
  FUZZ_CHECK(encoded.size() == (in.size() + 2) / 3 * 4);
  const auto round_trip = base64_decode(encoded);
  FUZZ_CHECK(round_trip.has_value() && *round_trip == in);
  if (const auto decoded = base64_decode(in)) FUZZ_CHECK(base64_encode(*decoded) == in);

  // The input as a decoded PLAIN message.
  sasl_credentials creds;
  const sasl_error plain = parse_plain_message(in, creds);
  if (plain == sasl_error::none) {
    check_credentials(creds);
    FUZZ_CHECK(creds.authzid + '\0' + creds.authcid + '\0' + creds.password == in);
  } else {
    FUZZ_CHECK(creds == sasl_credentials{});
  }

  // The same message sent as an initial response, and as the answer to "334 ".
  const bool fits = encoded.size() + 6 + 7 <= sasl_max_line_length;
  {
    sasl_exchange x;
    const auto s = x.start("PLAIN " + (in.empty() ? std::string("=") : encoded));
    check_step(x, s);
    if (!fits) {
      FUZZ_CHECK(s.error == sasl_error::line_too_long);
    } else if (plain == sasl_error::none) {
      FUZZ_CHECK(s.state == sasl_exchange::status::done && x.credentials() == creds);
    } else {
      FUZZ_CHECK(s.state == sasl_exchange::status::failed && s.error == plain);
    }
  }
  {
    sasl_exchange x;
    const auto first = x.start("plain");
    FUZZ_CHECK(first.state == sasl_exchange::status::challenge && first.challenge.empty());
    const auto s = x.respond(encoded);
    check_step(x, s);
    if (encoded.size() + 2 <= sasl_max_line_length)
      FUZZ_CHECK(s.error == plain && (plain != sasl_error::none || x.credentials() == creds));
  }
  // LOGIN with the input as the user name and as the password.
  {
    sasl_exchange x;
    check_step(x, x.start("LOGIN"));
    const auto user = x.respond(encoded);
    check_step(x, user);
    if (user.state == sasl_exchange::status::challenge) {
      FUZZ_CHECK(check_login_field(in) == sasl_error::none);
      const auto pass = x.respond(encoded);
      check_step(x, pass);
      FUZZ_CHECK(pass.state == sasl_exchange::status::done);
      FUZZ_CHECK(x.credentials().authcid == in && x.credentials().password == in);
    }
  }

  // The input as a script: the first line is the AUTH argument, the rest
  // the client's answers.
  std::vector<std::string_view> lines;
  for (std::string_view rest = in;;) {
    const std::size_t nl = rest.find('\n');
    lines.push_back(rest.substr(0, nl));
    if (nl == std::string_view::npos) break;
    rest.remove_prefix(nl + 1);
  }
  sasl_exchange x;
  auto s = x.start(lines[0]);
  check_step(x, s);
  for (std::size_t i = 1; i < lines.size() && s.state == sasl_exchange::status::challenge; ++i) {
    s = x.respond(lines[i]);
    check_step(x, s);
  }
  if (s.state != sasl_exchange::status::challenge) {
    const auto after = x.respond("");
    FUZZ_CHECK(after.state == sasl_exchange::status::failed);
  }
  return 0;
}
