// SMTP command lines (RFC 5321 §4.1.1): verb and argument, nothing else.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace portcullis::smtp {

enum class verb {
  helo, ehlo, mail, rcpt, data, rset, noop, quit, help, vrfy, expn,
  starttls, auth, bdat, xclient, xforward,
  http,     // GET/POST/CONNECT/...: a web client or a cross-protocol attack
  unknown,
};

struct command {
  verb kind = verb::unknown;
  std::string_view name;  // the verb as sent (for "502 5.5.1 FOO not implemented")
  std::string_view arg;   // after the verb's single space; for MAIL/RCPT the text after "FROM:"/"TO:"
  bool bad_syntax = false;  // MAIL without "FROM:", RCPT without "TO:", verb glued to argument
};

// `line` is one command line without its CRLF.
command parse_command(std::string_view line);

// The chunk size of a BDAT argument (RFC 3030 §3: chunk-size [SP "LAST"],
// chunk-size 1*DIGIT), or nullopt when it is not that: then where the
// chunk behind the command ends is unknown.
std::optional<std::uint64_t> bdat_chunk_size(std::string_view arg);

}  // namespace portcullis::smtp
