// SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN
// (draft-murchison-sasl-login) mechanisms, and the strict base64 (RFC 4648)
// they travel in.
//
// Pure: bytes in, values out. The session feeds the AUTH argument and each
// client line to a sasl_exchange, sends "334 <challenge>" while it asks for
// more, and maps a failure to reply_for(error). Checking the credentials
// (users_file, the on_auth hook) is not done here.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "smtp/reply.hpp"

namespace portcullis::smtp {

// RFC 4954 §4: "a server implementation MUST be able to receive a 12288-octet
// line" in the exchange, the AUTH command line included, CRLF included.
inline constexpr std::size_t sasl_max_line_length = 12288;
// RFC 4616 §2: authzid, authcid and passwd are each "up to 255 octets"; LOGIN
// gets the same bound.
inline constexpr std::size_t sasl_max_field_length = 255;
// RFC 4422 §3.1: a mechanism name is 1 to 20 characters of [A-Z0-9-_].
inline constexpr std::size_t sasl_max_mechanism_length = 20;

enum class sasl_mechanism { plain, login };

// What went wrong, and the reply the session sends for it (reply_for).
enum class sasl_error {
  none,
  // AUTH without a mechanism, a mechanism name with characters outside
  // [A-Za-z0-9-_] or longer than 20, or extra/doubled spaces.
  // -> 501 5.5.4 (RFC 4954 §4 "AUTH mechanism [initial-response]"; RFC 3463
  //    X.5.4: invalid command arguments).
  syntax,
  // A well-formed mechanism we do not offer.
  // -> 504 5.5.4 "Unrecognized authentication type" (RFC 4954 §4: "If the
  //    requested authentication mechanism is invalid ... the server rejects
  //    the AUTH command with a 504 reply"; §6).
  unknown_mechanism,
  // The AUTH line or a response longer than sasl_max_line_length.
  // -> 500 5.5.6 "Authentication Exchange line is too long" (RFC 4954 §4, §6).
  line_too_long,
  // A response line ending in a bare LF, or holding a bare CR or a NUL (RFC
  // 5321 §2.3.8: CRLF is the only line ending; the session's own check for
  // commands). -> 500 5.5.2, as such a command line gets.
  bad_line_ending,
  // Not strict base64: bad alphabet, missing or misplaced padding, non-zero
  // pad bits, whitespace; or "=" where only a response may stand.
  // -> 501 5.5.2 (RFC 4954 §4: "If the server cannot BASE64 decode any client
  //    response, it MUST reject the AUTH command with a 501 reply (and an
  //    enhanced status code of 5.5.2)").
  bad_base64,
  // The client answered a challenge with "*".
  // -> 501 5.0.0 "Authentication cancelled" (RFC 4954 §4: "it MUST reject the
  //    AUTH command by sending a 501 reply"; the RFC names no enhanced code,
  //    5.0.0 as sendmail does).
  cancelled,
  // Decoded, but not a valid PLAIN message or LOGIN field: not exactly two
  // NULs, empty authcid or password, a field over 255 octets, not UTF-8, a
  // NUL in a LOGIN field (RFC 4616 §2 grammar).
  // -> 501 5.5.2 (a syntax error in the response, RFC 3463 X.5.2). Nothing
  //    about any user is known at this point, so it gives nothing away.
  malformed,
  // PLAIN with an authzid that is not empty and not the authcid: we never
  // let one user act as another.
  // -> 535 5.7.8 "Authentication credentials invalid" (RFC 4954 §6; RFC 4616
  //    §2: the server MUST fail when the client may not act as authzid).
  authzid_mismatch,
};

// The reply for a failed exchange (none has no reply: an empty one).
reply reply_for(sasl_error error);
std::string_view to_string(sasl_error error);  // "bad_base64", ... for logs

// RFC 4648 §4 base64 with padding.
std::string base64_encode(std::string_view bytes);
// Strict RFC 4648 §4: length a multiple of 4, padding required and only at
// the end, nothing outside the alphabet (no whitespace, no line breaks, no
// URL alphabet), pad bits zero (§3.5), so every input has exactly one
// accepted encoding. "" decodes to "".
std::optional<std::string> base64_decode(std::string_view text);

// The AUTH argument "mechanism [SP initial-response]" (RFC 4954 §4).
struct auth_command {
  sasl_error error = sasl_error::none;
  sasl_mechanism mechanism = sasl_mechanism::plain;
  bool has_initial_response = false;
  std::string initial_response;  // decoded; "=" is a present, empty one (RFC 4954 §4)
};
// `arg`: what follows "AUTH " on the command line, CRLF removed. The line
// limit counts "AUTH " and the CRLF too.
auth_command parse_auth_command(std::string_view arg);

// A client line sent after a 334 challenge, CRLF removed: "*" cancels
// (RFC 4954 §4), else strict base64 ("" is an empty response; "=" is not
// base64 and only means "empty" as an initial response).
struct sasl_response {
  sasl_error error = sasl_error::none;
  std::string data;  // decoded
};
sasl_response decode_client_response(std::string_view line);

struct sasl_credentials {
  sasl_mechanism mechanism = sasl_mechanism::plain;
  std::string authzid;   // empty, or equal to authcid
  std::string authcid;   // the user name: 1-255 octets of UTF-8, no NUL
  std::string password;  // 1-255 octets of UTF-8, no NUL
  bool operator==(const sasl_credentials&) const = default;
};

// RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd, each field
// UTF-8 without NUL, up to 255 octets, authcid and passwd not empty. Exactly
// two NULs. `creds` is filled only when the result is none.
sasl_error parse_plain_message(std::string_view message, sasl_credentials& creds);

// A LOGIN user name or password: 1-255 octets of UTF-8 without NUL.
sasl_error check_login_field(std::string_view field);

// One AUTH exchange, from the AUTH argument to credentials or an error.
// Single use: after done or failed, make a new one.
class sasl_exchange {
 public:
  enum class status {
    challenge,  // send "334 " + challenge, then feed the client's next line to respond()
    done,       // credentials() are ready to be checked
    failed,     // send reply_for(error); the AUTH command is over
  };
  struct step {
    status state = status::failed;
    std::string challenge;  // status::challenge: base64, possibly empty ("334 ")
    sasl_error error = sasl_error::none;
  };

  // `arg`: what follows "AUTH " (see parse_auth_command).
  step start(std::string_view arg);
  // A client line after a 334, CRLF removed.
  step respond(std::string_view line);

  const sasl_credentials& credentials() const { return creds_; }

 private:
  enum class stage { idle, plain_message, login_user, login_password, over };
  step fail(sasl_error error);
  step ask(stage next, std::string challenge);
  step finish();
  step take_plain(std::string_view message);
  step take_login_user(std::string_view user);

  stage stage_ = stage::idle;
  sasl_credentials creds_;
};

// The LOGIN challenges, base64 of "Username:" and "Password:".
inline constexpr std::string_view login_user_challenge = "VXNlcm5hbWU6";
inline constexpr std::string_view login_password_challenge = "UGFzc3dvcmQ6";

}  // namespace portcullis::smtp
