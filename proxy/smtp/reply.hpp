// SMTP replies: the value every command ends in (RFC 5321 §4.2, RFC 2034/3463).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::smtp {

// A reply as a value: C++ formats it for the wire, nobody else writes replies.
struct reply {
  int code = 0;              // 3 digits, 200..599
  std::string status;        // enhanced status "x.y.z"; empty when none (greeting-less codes)
  std::vector<std::string> lines;  // text of each line, without code or status

  reply() = default;
  reply(int c, std::string st, std::string text) : code(c), status(std::move(st)), lines{std::move(text)} {}
  reply(int c, std::string st, std::vector<std::string> ls) : code(c), status(std::move(st)), lines(std::move(ls)) {}

  bool positive() const { return code >= 200 && code < 400; }
  bool transient() const { return code >= 400 && code < 500; }
  bool permanent() const { return code >= 500; }
  const std::string& text() const;  // first line's text ("" when none)

  // "250-a\r\n250 b\r\n" with the status on every line (RFC 2034 §4).
  std::string wire() const;
  // The same on one line for logs: "250 2.0.0 a / b".
  std::string summary() const;
};

// "x.y.z" with class 2, 4 or 5 (RFC 3463 §2).
bool is_enhanced_status(std::string_view s);

// Text a policy or config may put in a reply: printable, no CR/LF/NUL.
bool is_safe_reply_text(std::string_view s);

// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, code and CRLF included.
inline constexpr std::size_t max_reply_line_octets = 512;
// "ddd-" and CRLF around every line's text.
inline constexpr std::size_t reply_line_frame = 6;
// What with_status() puts before the text of a reply that has no status: "x.y.z ".
inline constexpr std::size_t generic_status_prefix = 6;

// The longest text a line with this enhanced status (empty: none, so
// with_status may add one) can carry within 512 octets.
constexpr std::size_t max_reply_text(std::string_view status) {
  return max_reply_line_octets - reply_line_frame - (status.empty() ? generic_status_prefix : status.size() + 1);
}

// A server's reply text made fit for our client: every byte outside printable
// US-ASCII (8-bit, controls, DEL; RFC 5321 §4.2 textstring) becomes '?', HT a
// space, and the text is cut to `max_octets` (§4.5.3.1.5).
std::string sanitized_reply_text(std::string_view text, std::size_t max_octets);

// Accumulates the lines of one reply from a server (the upstream).
// Lines come without CRLF. Anything that is not "ddd[- ]text" (RFC 5321 §4.2:
// first digit 2-5, second 0-5) is a protocol error: the upstream is
// answering nonsense. Lines whose codes differ make one reply with the last
// line's code (codes_differed() says so). The text of a well-formed line is
// sanitised (sanitized_reply_text): it reaches our client, and an over-long
// line or 8-bit text is no reason to lose the transaction.
class reply_parser {
 public:
  enum class state { need_more, complete, malformed };
  state feed_line(std::string_view line);
  // Valid once feed_line returned complete; resets the parser.
  reply take();
  // Whether the lines of the reply being built (or just completed) gave different codes.
  bool codes_differed() const { return codes_differed_; }

 private:
  reply building_;
  bool started_ = false;
  bool codes_differed_ = false;
};

}  // namespace portcullis::smtp

namespace portcullis::smtp {

// Fills in an enhanced status when the reply has none (an upstream without
// ENHANCEDSTATUSCODES): we advertise the extension, so every reply needs one.
// `success` is the code for a 2xx/3xx ("2.1.0" for MAIL, "2.1.5" for RCPT...).
reply with_status(reply r, std::string_view success);

// What a server's reply answers: its greeting, or the command we sent it.
enum class reply_to { greeting, ehlo, helo, starttls, xclient, xforward, mail, rcpt, data, end_of_data, rset, quit };
// For logs: "greeting", "EHLO", ..., "end of data".
std::string_view name(reply_to what);

// How a reply fits what it answers (RFC 5321 §4.3.2).
enum class reply_fit {
  success,       // the positive reply this command may get: go on
  refusal,       // a 4xx/5xx: the command failed (421 is allowed everywhere, §3.8)
  out_of_place,  // a positive reply this command cannot get (a 354 to RCPT, a 221 to MAIL):
                 // the upstream is out of step with us; nothing it says can be trusted
};
// greeting 220; EHLO/HELO 250; MAIL 250; RCPT 250 251; DATA 354; end of data
// 250; RSET 250; QUIT 221 (§4.3.2); STARTTLS 220 (RFC 3207 §4); XCLIENT 220,
// XFORWARD 250 (Postfix XCLIENT_README, XFORWARD_README). Any 4xx/5xx is a
// refusal; codes outside 200-599 never fit.
reply_fit fit(reply_to what, int code);

}  // namespace portcullis::smtp
