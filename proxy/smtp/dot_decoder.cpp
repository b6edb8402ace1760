#include "smtp/dot_decoder.hpp"

#include <cstring>

namespace portcullis::smtp {

namespace {

// End of the plain text starting at `from`: the first CR, LF or NUL, or the
// end of input. memchr is vectorised, so long lines cost a few instructions
// per 32 bytes instead of three compares per byte.
std::size_t text_run_end(std::string_view in, std::size_t from) {
  const char* begin = in.data() + from;
  const char* end = in.data() + in.size();
  const char* cr = static_cast<const char*>(std::memchr(begin, '\r', static_cast<std::size_t>(end - begin)));
  if (cr) end = cr;
  for (char stop : {'\n', '\0'}) {
    const char* p = static_cast<const char*>(std::memchr(begin, stop, static_cast<std::size_t>(end - begin)));
    if (p) end = p;
  }
  return static_cast<std::size_t>(end - in.data());
}

}  // namespace

void dot_decoder::emit(std::string& out, std::string_view bytes) {
  size_ += bytes.size();
  if (size_ > max_size_) fail(fault::too_big);
  if (fault_ == fault::none) out.append(bytes);
}

std::size_t dot_decoder::feed(std::string_view in, std::string& out) {
  std::size_t i = 0;
  // Plain text runs are appended in one go; the state machine sees only the
  // bytes that matter (CR, LF, NUL, a dot at the start of a line).
  while (i < in.size() && state_ != state::done) {
    const char c = in[i];
    switch (state_) {
      case state::line_start:
        if (c == '.') {
          state_ = state::dot;
          ++i;
          continue;
        }
        state_ = state::mid_line;
        continue;  // the same byte, judged as text
      case state::mid_line: {
        const std::size_t run = text_run_end(in, i);
        if (run > i) {
          emit(out, in.substr(i, run - i));
          i = run;
          continue;
        }
        if (c == '\r') {
          state_ = state::cr;
        } else {
          fail(c == '\0' ? fault::nul : fault::bare_line_ending);
          emit(out, in.substr(i, 1));
        }
        ++i;
        continue;
      }
      case state::cr:
        if (c == '\n') {
          emit(out, "\r\n");
          state_ = state::line_start;
          ++i;
        } else {
          // A CR not followed by LF; "\r\r\n" keeps the second CR as a candidate.
          fail(fault::bare_line_ending);
          emit(out, "\r");
          state_ = state::mid_line;
        }
        continue;
      case state::dot:
        if (c == '\r') {
          state_ = state::dot_cr;
          ++i;
          continue;
        }
        // "." then more text: the stuffed dot goes, the rest is text (§4.5.2).
        state_ = state::mid_line;
        continue;
      case state::dot_cr:
        if (c == '\n') {
          state_ = state::done;
          ++i;
          continue;
        }
        // ".\r" then not LF: a bare CR on a line that started with a dot.
        fail(fault::bare_line_ending);
        emit(out, "\r");
        state_ = state::mid_line;
        continue;
      case state::done:
        break;
    }
  }
  return i;
}

std::vector<std::string_view> dot_stuffed_pieces(std::string_view message) {
  static constexpr std::string_view dot = ".";
  static constexpr std::string_view crlf = "\r\n";
  static constexpr std::string_view end = ".\r\n";
  std::vector<std::string_view> pieces;
  std::size_t start = 0;  // start of the current piece
  std::size_t line = 0;   // start of the current line
  while (line < message.size()) {
    if (message[line] == '.') {
      // Cut here and send an extra dot before the line.
      if (line > start) pieces.push_back(message.substr(start, line - start));
      pieces.push_back(dot);
      start = line;
    }
    const auto nl = message.find("\r\n", line);
    if (nl == std::string_view::npos) break;
    line = nl + 2;
  }
  if (start < message.size()) pieces.push_back(message.substr(start));
  if (!message.empty() && !message.ends_with("\r\n")) pieces.push_back(crlf);
  pieces.push_back(end);
  return pieces;
}

}  // namespace portcullis::smtp
