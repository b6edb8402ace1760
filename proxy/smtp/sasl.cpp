#include "smtp/sasl.hpp"

#include <array>

#include "smtp/text.hpp"

namespace portcullis::smtp {

namespace {

constexpr std::string_view base64_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr int not_base64 = -1;

constexpr std::array<int, 256> base64_values = [] {
  std::array<int, 256> values{};
  values.fill(not_base64);
  for (std::size_t i = 0; i < base64_alphabet.size(); ++i)
    values[static_cast<unsigned char>(base64_alphabet[i])] = static_cast<int>(i);
  return values;
}();

// The parts of the AUTH line around its argument: "AUTH " and CRLF.
constexpr std::size_t auth_line_overhead = 5 + 2;
constexpr std::size_t crlf_length = 2;

// RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT
// / HYPHEN / UNDERSCORE. SMTP keywords are case-insensitive, so lower case too.
bool is_mechanism_name(std::string_view s) {
  if (s.empty() || s.size() > sasl_max_mechanism_length) return false;
  for (const char c : s)
    if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_') return false;
  return true;
}

}  // namespace

reply reply_for(sasl_error error) {
  switch (error) {
    case sasl_error::none: return {};
    case sasl_error::syntax: return {501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"};
    case sasl_error::unknown_mechanism: return {504, "5.5.4", "Unrecognized authentication type"};
    case sasl_error::line_too_long: return {500, "5.5.6", "Authentication Exchange line is too long"};
    case sasl_error::bad_line_ending:
      return {500, "5.5.2", "Authentication Exchange lines must end with CRLF and hold no bare CR or NUL"};
    case sasl_error::bad_base64: return {501, "5.5.2", "Cannot Base64-decode client response"};
    case sasl_error::cancelled: return {501, "5.0.0", "Authentication cancelled"};
    case sasl_error::malformed: return {501, "5.5.2", "Malformed authentication response"};
    case sasl_error::authzid_mismatch: return {535, "5.7.8", "Authentication credentials invalid"};
  }
  return {};
}

std::string_view to_string(sasl_error error) {
  switch (error) {
    case sasl_error::none: return "none";
    case sasl_error::syntax: return "syntax";
    case sasl_error::unknown_mechanism: return "unknown_mechanism";
    case sasl_error::line_too_long: return "line_too_long";
    case sasl_error::bad_line_ending: return "bad_line_ending";
    case sasl_error::bad_base64: return "bad_base64";
    case sasl_error::cancelled: return "cancelled";
    case sasl_error::malformed: return "malformed";
    case sasl_error::authzid_mismatch: return "authzid_mismatch";
  }
  return "?";
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned n = unsigned(static_cast<unsigned char>(bytes[i])) << 16 |
                       unsigned(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                       unsigned(static_cast<unsigned char>(bytes[i + 2]));
    out += base64_alphabet[n >> 18 & 63];
    out += base64_alphabet[n >> 12 & 63];
    out += base64_alphabet[n >> 6 & 63];
    out += base64_alphabet[n & 63];
  }
  const std::size_t left = bytes.size() - i;
  if (left > 0) {
    unsigned n = unsigned(static_cast<unsigned char>(bytes[i])) << 16;
    if (left == 2) n |= unsigned(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += base64_alphabet[n >> 18 & 63];
    out += base64_alphabet[n >> 12 & 63];
    out += left == 2 ? base64_alphabet[n >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;  // RFC 4648 §4: padding is not optional here
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    // "=" only in the last quantum, as its last one or two characters (§4).
    const std::size_t pad = !last ? 0 : text[i + 3] != '=' ? 0 : text[i + 2] != '=' ? 1 : 2;
    int v[4] = {0, 0, 0, 0};
    for (std::size_t k = 0; k < 4 - pad; ++k) {
      v[k] = base64_values[static_cast<unsigned char>(text[i + k])];
      if (v[k] == not_base64) return std::nullopt;
    }
    const unsigned n = unsigned(v[0]) << 18 | unsigned(v[1]) << 12 | unsigned(v[2]) << 6 | unsigned(v[3]);
    // §3.5: the bits a padded quantum does not use must be zero; else two
    // encodings would decode alike and the decoding is not canonical.
    if ((pad == 1 && (n & 0xff) != 0) || (pad == 2 && (n & 0xffff) != 0)) return std::nullopt;
    out += static_cast<char>(n >> 16 & 0xff);
    if (pad < 2) out += static_cast<char>(n >> 8 & 0xff);
    if (pad < 1) out += static_cast<char>(n & 0xff);
  }
  return out;
}

auth_command parse_auth_command(std::string_view arg) {
  auth_command cmd;
  if (arg.size() + auth_line_overhead > sasl_max_line_length) {
    cmd.error = sasl_error::line_too_long;
    return cmd;
  }
  // RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]; single spaces.
  const std::size_t space = arg.find(' ');
  const std::string_view name = arg.substr(0, space);
  if (!is_mechanism_name(name)) {
    cmd.error = sasl_error::syntax;
    return cmd;
  }
  if (equals_nocase(name, "PLAIN")) {
    cmd.mechanism = sasl_mechanism::plain;
  } else if (equals_nocase(name, "LOGIN")) {
    cmd.mechanism = sasl_mechanism::login;
  } else {
    cmd.error = sasl_error::unknown_mechanism;
    return cmd;
  }
  if (space == std::string_view::npos) return cmd;

  const std::string_view response = arg.substr(space + 1);
  if (response.empty() || response.find(' ') != std::string_view::npos) {
    cmd.error = sasl_error::syntax;  // trailing space, or more than one argument
    return cmd;
  }
  cmd.has_initial_response = true;
  // RFC 4954 §4: "If the initial response is zero-length, the client MUST
  // send a single "=" character".
  if (response == "=") return cmd;
  auto decoded = base64_decode(response);
  if (!decoded) {
    cmd.has_initial_response = false;
    cmd.error = sasl_error::bad_base64;
    return cmd;
  }
  cmd.initial_response = std::move(*decoded);
  return cmd;
}

sasl_response decode_client_response(std::string_view line) {
  sasl_response r;
  if (line.size() + crlf_length > sasl_max_line_length) {
    r.error = sasl_error::line_too_long;
  } else if (line == "*") {  // RFC 4954 §4: the client cancels
    r.error = sasl_error::cancelled;
  } else if (auto decoded = base64_decode(line)) {
    r.data = std::move(*decoded);
  } else {
    r.error = sasl_error::bad_base64;
  }
  return r;
}

namespace {

// RFC 4616 §2: a field is UTF-8 without NUL, at most 255 octets.
bool is_sasl_field(std::string_view s) {
  return s.size() <= sasl_max_field_length && s.find('\0') == std::string_view::npos && is_valid_utf8(s);
}

}  // namespace

sasl_error parse_plain_message(std::string_view message, sasl_credentials& creds) {
  // message = [authzid] UTF8NUL authcid UTF8NUL passwd (RFC 4616 §2)
  const std::size_t first = message.find('\0');
  if (first == std::string_view::npos) return sasl_error::malformed;
  const std::size_t second = message.find('\0', first + 1);
  if (second == std::string_view::npos) return sasl_error::malformed;
  const std::string_view authzid = message.substr(0, first);
  const std::string_view authcid = message.substr(first + 1, second - first - 1);
  const std::string_view password = message.substr(second + 1);
  // authcid = 1*SAFE, passwd = 1*SAFE; a third NUL lands in passwd and fails there.
  if (authcid.empty() || password.empty()) return sasl_error::malformed;
  if (!is_sasl_field(authzid) || !is_sasl_field(authcid) || !is_sasl_field(password)) return sasl_error::malformed;
  if (!authzid.empty() && authzid != authcid) return sasl_error::authzid_mismatch;
  creds.mechanism = sasl_mechanism::plain;
  creds.authzid = authzid;
  creds.authcid = authcid;
  creds.password = password;
  return sasl_error::none;
}

sasl_error check_login_field(std::string_view field) {
  return !field.empty() && is_sasl_field(field) ? sasl_error::none : sasl_error::malformed;
}

sasl_exchange::step sasl_exchange::fail(sasl_error error) {
  stage_ = stage::over;
  creds_ = {};
  return {status::failed, {}, error};
}

sasl_exchange::step sasl_exchange::ask(stage next, std::string challenge) {
  stage_ = next;
  return {status::challenge, std::move(challenge), sasl_error::none};
}

sasl_exchange::step sasl_exchange::finish() {
  stage_ = stage::over;
  return {status::done, {}, sasl_error::none};
}

sasl_exchange::step sasl_exchange::take_plain(std::string_view message) {
  const sasl_error error = parse_plain_message(message, creds_);
  return error == sasl_error::none ? finish() : fail(error);
}

sasl_exchange::step sasl_exchange::take_login_user(std::string_view user) {
  if (const sasl_error error = check_login_field(user); error != sasl_error::none) return fail(error);
  creds_.authcid = user;
  return ask(stage::login_password, std::string(login_password_challenge));
}

sasl_exchange::step sasl_exchange::start(std::string_view arg) {
  if (stage_ != stage::idle) return fail(sasl_error::syntax);
  auth_command cmd = parse_auth_command(arg);
  if (cmd.error != sasl_error::none) return fail(cmd.error);
  creds_ = {};
  creds_.mechanism = cmd.mechanism;
  if (cmd.mechanism == sasl_mechanism::plain) {
    // RFC 4954 §4: without an initial response the server sends an empty
    // challenge ("334 ") and the message comes as the response.
    if (!cmd.has_initial_response) return ask(stage::plain_message, {});
    return take_plain(cmd.initial_response);
  }
  // LOGIN: an initial response is the user name ([MS-XLOGIN] §2.2.2:
  // "AUTH LOGIN" [SP username], as Outlook sends it).
  if (!cmd.has_initial_response) return ask(stage::login_user, std::string(login_user_challenge));
  return take_login_user(cmd.initial_response);
}

sasl_exchange::step sasl_exchange::respond(std::string_view line) {
  if (stage_ == stage::idle || stage_ == stage::over) return fail(sasl_error::syntax);
  sasl_response r = decode_client_response(line);
  if (r.error != sasl_error::none) return fail(r.error);
  switch (stage_) {
    case stage::plain_message: return take_plain(r.data);
    case stage::login_user: return take_login_user(r.data);
    case stage::login_password:
      if (const sasl_error error = check_login_field(r.data); error != sasl_error::none) return fail(error);
      creds_.password = std::move(r.data);
      return finish();
    case stage::idle:
    case stage::over: break;
  }
  return fail(sasl_error::syntax);
}

}  // namespace portcullis::smtp
