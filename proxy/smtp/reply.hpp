// SMTP replies: the value every command ends in (RFC 5321 §4.2, RFC 2034/3463).
#pragma once

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

// Accumulates the lines of one reply from a server (the upstream).
// Lines come without CRLF. Anything that is not "ddd[- ]text" or changes code
// between lines is a protocol error: the upstream is answering nonsense.
class reply_parser {
 public:
  enum class state { need_more, complete, malformed };
  state feed_line(std::string_view line);
  // Valid once feed_line returned complete; resets the parser.
  reply take();

 private:
  reply building_;
  bool started_ = false;
};

}  // namespace portcullis::smtp

namespace portcullis::smtp {

// Fills in an enhanced status when the reply has none (an upstream without
// ENHANCEDSTATUSCODES): we advertise the extension, so every reply needs one.
// `success` is the code for a 2xx/3xx ("2.1.0" for MAIL, "2.1.5" for RCPT...).
reply with_status(reply r, std::string_view success);

}  // namespace portcullis::smtp
