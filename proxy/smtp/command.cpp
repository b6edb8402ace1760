#include "smtp/command.hpp"

#include <array>
#include <utility>

#include "smtp/text.hpp"

namespace portcullis::smtp {

namespace {

constexpr std::array<std::pair<std::string_view, verb>, 22> verbs{{
    {"HELO", verb::helo},         {"EHLO", verb::ehlo},         {"MAIL", verb::mail},
    {"RCPT", verb::rcpt},         {"DATA", verb::data},         {"RSET", verb::rset},
    {"NOOP", verb::noop},         {"QUIT", verb::quit},         {"HELP", verb::help},
    {"VRFY", verb::vrfy},         {"EXPN", verb::expn},         {"STARTTLS", verb::starttls},
    {"AUTH", verb::auth},         {"BDAT", verb::bdat},         {"XCLIENT", verb::xclient},
    {"XFORWARD", verb::xforward}, {"GET", verb::http},          {"POST", verb::http},
    {"CONNECT", verb::http},      {"HEAD", verb::http},         {"PUT", verb::http},
    {"OPTIONS", verb::http},
}};

// "FROM:" / "TO:" then an optional space: RFC 5321 has none, but many clients
// send "MAIL FROM: <a@b>" and every major MTA accepts it.
bool strip_keyword(std::string_view& arg, std::string_view keyword) {
  if (!starts_with_nocase(arg, keyword)) return false;
  arg.remove_prefix(keyword.size());
  if (!arg.empty() && arg.front() == ' ') arg.remove_prefix(1);
  return true;
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }

}  // namespace

command parse_command(std::string_view line) {
  command cmd;
  // RFC 5321 §4.1.1: white space before the CRLF SHOULD be tolerated (some
  // clients send "EHLO host " or "RSET\t"); the verb and its argument keep
  // their one SP.
  while (!line.empty() && is_blank(line.back())) line.remove_suffix(1);
  const auto sp = line.find(' ');
  cmd.name = line.substr(0, sp);
  cmd.arg = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  for (const auto& [name, kind] : verbs) {
    if (equals_nocase(cmd.name, name)) {
      cmd.kind = kind;
      break;
    }
  }
  if (cmd.kind == verb::unknown) {
    // "MAIL FROM:<x>" is the verb with its keyword; "MAIL:" or "RCPTTO:" are not verbs at all.
    return cmd;
  }
  if (cmd.kind == verb::mail && !strip_keyword(cmd.arg, "FROM:")) cmd.bad_syntax = true;
  if (cmd.kind == verb::rcpt && !strip_keyword(cmd.arg, "TO:")) cmd.bad_syntax = true;
  return cmd;
}

std::optional<std::uint64_t> bdat_chunk_size(std::string_view arg) {
  const auto sp = arg.find(' ');
  const std::string_view digits = arg.substr(0, sp);
  if (sp != std::string_view::npos && !equals_nocase(arg.substr(sp + 1), "LAST")) return std::nullopt;
  if (digits.empty() || digits.size() > 18) return std::nullopt;  // (18 digits: no overflow)
  std::uint64_t n = 0;
  for (char c : digits) {
    if (!is_digit(c)) return std::nullopt;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

}  // namespace portcullis::smtp
