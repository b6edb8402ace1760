#include "smtp/dot_decoder.hpp"

#include <bit>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace portcullis::smtp {

namespace {

// The first CR, LF or NUL at or after `i` (the end of input: none). SSE2
// looks at 16 bytes a step; x86-64 always has it.
std::size_t next_stop(std::string_view in, std::size_t i) {
  const char* p = in.data();
  const std::size_t n = in.size();
#if defined(__SSE2__)
  const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'), nul = _mm_setzero_si128();
  for (; i + 16 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i stops = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)), _mm_cmpeq_epi8(v, nul));
    const auto mask = static_cast<unsigned>(_mm_movemask_epi8(stops));
    if (mask != 0) return i + static_cast<std::size_t>(std::countr_zero(mask));
  }
#endif
  for (; i < n; ++i)
    if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') return i;
  return n;
}

// End of the plain text starting at `from` (in the middle of a line): the
// first byte the state machine must judge, a CR, LF or NUL, or the end of
// input. A CRLF followed by anything but a dot is plain text too (a line
// ends, the next starts with text): a message with no stuffed dots is one
// run, looked at 16 bytes at a time (two memchr calls and a turn of the
// state machine a line cost twice as much). A CRLF at the very end
// is left to the machine: the next input may start with a dot.
std::size_t plain_text_end(std::string_view in, std::size_t from) {
  std::size_t i = next_stop(in, from);
  while (i + 2 < in.size() && in[i] == '\r' && in[i + 1] == '\n' && in[i + 2] != '.') i = next_stop(in, i + 2);
  return i;
}

// The first dot after an LF at or after `from` (npos: none): where a line
// may need stuffing. Looking for the pair, not for every line's end, makes
// text with no such dot one pass, 16 bytes a step.
std::size_t next_line_dot(std::string_view in, std::size_t from) {
  const char* p = in.data();
  const std::size_t n = in.size();
  std::size_t i = from;
#if defined(__SSE2__)
  const __m128i lf = _mm_set1_epi8('\n'), dot = _mm_set1_epi8('.');
  for (; i + 17 <= n; i += 16) {
    const __m128i at = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i next = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1));
    const auto mask = static_cast<unsigned>(_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(at, lf), _mm_cmpeq_epi8(next, dot))));
    if (mask != 0) return i + static_cast<std::size_t>(std::countr_zero(mask)) + 1;
  }
#endif
  for (; i + 1 < n; ++i)
    if (p[i] == '\n' && p[i + 1] == '.') return i + 1;
  return std::string_view::npos;
}

struct string_sink final : byte_sink {
  std::string& out;
  explicit string_sink(std::string& s) : out(s) {}
  void write(std::string_view bytes) override { out.append(bytes); }
};

}  // namespace

void dot_decoder::emit(byte_sink& out, std::string_view bytes) {
  size_ += bytes.size();
  if (size_ > max_size_) fail(fault::too_big);
  if (fault_ == fault::none) out.write(bytes);
}

std::size_t dot_decoder::feed(std::string_view in, std::string& out) {
  string_sink sink(out);
  return feed(in, sink);
}

std::size_t dot_decoder::feed(std::string_view in, byte_sink& out) {
  std::size_t i = 0;
  // The bytes [span, i) go to `out` as they are, in one write when something
  // breaks the run (a stuffed dot, the end of the input) rather than a write
  // per line: the state machine sees only the bytes that matter (CR, LF, NUL,
  // a dot at the start of a line), and plain text runs are skipped (plain_text_end).
  std::size_t span = 0;
  auto flush = [&](std::size_t upto) {
    if (upto > span) emit(out, in.substr(span, upto - span));
  };
  // A fault at `at` (bytes before it counted, not it): the first fault in the
  // message's order wins, so a size already too big there comes first.
  auto fail_at = [&](fault f, std::size_t at) {
    if (size_ + (at - span) > max_size_) fail(fault::too_big);
    fail(f);
  };
  if (state_ == state::cr && !in.empty()) {
    // The CR that ended the previous input, kept back until its fate was known:
    // before LF the loop goes on from state cr; else it was a bare CR.
    if (in[0] != '\n') {
      fail(fault::bare_line_ending);
      state_ = state::mid_line;
    }
    emit(out, "\r");
  }
  while (i < in.size() && state_ != state::done) {
    const char c = in[i];
    switch (state_) {
      case state::line_start:
        if (c == '.') {
          flush(i);  // the dot is not the message's: stuffing (§4.5.2) or the end
          state_ = state::dot;
          span = ++i;
          continue;
        }
        state_ = state::mid_line;
        continue;  // the same byte, judged as text
      case state::mid_line: {
        const std::size_t run = plain_text_end(in, i);
        if (run > i) {
          i = run;
          continue;
        }
        if (c == '\r') {
          state_ = state::cr;
        } else {
          fail_at(c == '\0' ? fault::nul : fault::bare_line_ending, i);
        }
        ++i;  // kept either way (a bare CR, LF or NUL fails the message, and is counted)
        continue;
      }
      case state::cr:
        if (c == '\n') {
          state_ = state::line_start;
          ++i;
        } else {
          // A CR not followed by LF (at i - 1: one from the previous input was
          // judged above); "\r\r\n" keeps the second CR as a candidate.
          fail_at(fault::bare_line_ending, i - 1);
          state_ = state::mid_line;
        }
        continue;
      case state::dot:
        if (c == '\r') {
          state_ = state::dot_cr;
          span = ++i;  // kept back: ".\r\n" is the end, not text
          continue;
        }
        // "." then more text: the stuffed dot goes, the rest is text (§4.5.2).
        state_ = state::mid_line;
        continue;
      case state::dot_cr:
        if (c == '\n') {
          state_ = state::done;
          span = ++i;
          continue;
        }
        // ".\r" then not LF: a bare CR on a line that started with a dot (the CR
        // may have come in the previous input: written from here).
        fail(fault::bare_line_ending);
        emit(out, "\r");
        state_ = state::mid_line;
        continue;
      case state::done:
        break;
    }
  }
  // A CR at the very end waits for the next input to say what it is.
  flush(state_ == state::cr ? i - 1 : i);
  return i;
}

std::vector<std::string_view> dot_stuffed_pieces(std::string_view message) {
  std::vector<std::string_view> pieces;
  dot_stuffer stuffer;
  stuffer.stuff(message, pieces);
  stuffer.finish(pieces);
  return pieces;
}

void dot_stuffer::stuff(std::string_view chunk, std::vector<std::string_view>& pieces) {
  static constexpr std::string_view dot = ".";
  if (chunk.empty()) return;
  std::size_t start = 0;  // start of the current piece
  // A line starting at `line` that begins with a dot gets an extra one (§4.5.2).
  auto line_at = [&](std::size_t line) {
    if (line >= chunk.size() || chunk[line] != '.') return;
    if (line > start) pieces.push_back(chunk.substr(start, line - start));
    pieces.push_back(dot);
    start = line;
  };
  if (line_start_) line_at(0);
  // Each dot after a CRLF (whose CR, or CRLF, may end the previous chunk).
  for (auto d = next_line_dot(chunk, 0); d != std::string_view::npos; d = next_line_dot(chunk, d)) {
    const char before_lf = d > 1 ? chunk[d - 2] : last_;
    if (before_lf == '\r') line_at(d);
  }
  if (start < chunk.size()) pieces.push_back(chunk.substr(start));
  const char before_last = chunk.size() > 1 ? chunk[chunk.size() - 2] : last_;
  line_start_ = chunk.back() == '\n' && before_last == '\r';
  last_ = chunk.back();
  empty_ = false;
}

void dot_stuffer::finish(std::vector<std::string_view>& pieces) {
  static constexpr std::string_view crlf = "\r\n";
  static constexpr std::string_view end = ".\r\n";
  if (!empty_ && !line_start_) pieces.push_back(crlf);
  pieces.push_back(end);
}

}  // namespace portcullis::smtp
