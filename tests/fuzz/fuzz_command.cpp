// libFuzzer target: one command line (without CRLF) into parse_command, and
// MAIL/RCPT arguments on into the path parser.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "address_invariants.hpp"
#include "fuzz_check.hpp"
#include "smtp/command.hpp"
#include "smtp/text.hpp"

using namespace portcullis::smtp;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const command cmd = parse_command(line);

  // The name is the line up to the first space; the argument a tail of it,
  // both without the white space that ended the line (RFC 5321 §4.1.1).
  std::string_view kept = line;
  while (!kept.empty() && (kept.back() == ' ' || kept.back() == '\t')) kept.remove_suffix(1);
  FUZZ_CHECK(kept.substr(0, cmd.name.size()) == cmd.name);
  FUZZ_CHECK(cmd.name.find(' ') == std::string_view::npos);
  FUZZ_CHECK(cmd.name.size() == kept.size() || kept[cmd.name.size()] == ' ');
  FUZZ_CHECK(cmd.arg.size() <= kept.size());
  FUZZ_CHECK(kept.substr(kept.size() - cmd.arg.size()) == cmd.arg);

  // The verb depends on the name alone, whatever its case.
  // (An argument after it: a name alone loses the white space that would end the line, "RSET\t".)
  FUZZ_CHECK(parse_command(to_upper(cmd.name) + " x").kind == cmd.kind);
  FUZZ_CHECK(parse_command(to_lower(cmd.name) + " x").kind == cmd.kind);

  FUZZ_CHECK(!cmd.bad_syntax || cmd.kind == verb::mail || cmd.kind == verb::rcpt);
  if (cmd.kind == verb::mail && !cmd.bad_syntax) FUZZ_CHECK(starts_with_nocase(line, "MAIL FROM:"));
  if (cmd.kind == verb::rcpt && !cmd.bad_syntax) FUZZ_CHECK(starts_with_nocase(line, "RCPT TO:"));

  if ((cmd.kind == verb::mail || cmd.kind == verb::rcpt) && !cmd.bad_syntax) {
    const bool reverse = cmd.kind == verb::mail;
    portcullis::smtp::fuzz::check_path_argument(cmd.arg, reverse, false);
    portcullis::smtp::fuzz::check_path_argument(cmd.arg, reverse, true);
  }

  // A BDAT chunk size is digits alone (with " LAST" at most), and read as written.
  if (const auto size = bdat_chunk_size(cmd.arg)) {
    const std::string_view digits = cmd.arg.substr(0, cmd.arg.find(' '));
    FUZZ_CHECK(!digits.empty() && digits.size() <= 18);
    FUZZ_CHECK(std::to_string(*size) == digits.substr(std::min(digits.find_first_not_of('0'), digits.size() - 1)));
  }
  return 0;
}
