// libFuzzer target: the DATA decoder against a reference model of RFC 5321
// §4.1.1.4/§4.5.2, and the dot-stuffing encoder against the decoder.
//
// Input: byte 0 picks where the stream is cut in two, byte 1 the size limit,
// the rest is what the client sends after "354".
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "smtp/dot_decoder.hpp"

using namespace portcullis::smtp;

namespace {

constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();

struct decoded {
  bool done = false;
  dot_decoder::fault failure = dot_decoder::fault::none;
  std::size_t consumed = 0;
  std::string out;
  std::size_t size = 0;
  // What a faulted decoder left in `out` is thrown away by its caller and
  // depends on where the reads were cut: it does not count.
  bool same_as(const decoded& o) const {
    return done == o.done && failure == o.failure && consumed == o.consumed && size == o.size &&
           (failure != dot_decoder::fault::none || out == o.out);
  }
};

decoded decode(std::string_view in, const std::vector<std::size_t>& cuts, std::size_t max) {
  dot_decoder d(max);
  decoded r;
  std::size_t from = 0;
  for (std::size_t k = 0; k <= cuts.size(); ++k) {
    const std::size_t to = k < cuts.size() ? cuts[k] : in.size();
    const std::string_view piece = in.substr(from, to - from);
    const std::size_t n = d.feed(piece, r.out);
    FUZZ_CHECK(n <= piece.size());
    r.consumed += n;
    if (d.done()) break;
    FUZZ_CHECK(n == piece.size());  // a decoder not done takes every byte
    from = to;
  }
  FUZZ_CHECK(r.consumed <= in.size());
  r.done = d.done();
  r.failure = d.failure();
  r.size = d.size();
  return r;
}

// No NUL, every CR followed by LF and every LF preceded by CR.
bool strict_crlf(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\0') return false;
    if (s[i] == '\r' && (i + 1 == s.size() || s[i + 1] != '\n')) return false;
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) return false;
  }
  return true;
}

// §4.5.2: a line's leading dot goes. `s` is strict CRLF text ending in CRLF.
std::string unstuff(std::string_view s) {
  std::string out;
  std::size_t line = 0;
  while (line < s.size()) {
    const std::size_t nl = s.find("\r\n", line);
    const std::size_t start = s[line] == '.' ? line + 1 : line;
    out.append(s.substr(start, nl + 2 - start));
    line = nl + 2;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  const std::size_t max = data[1] == 0xff ? unlimited : std::size_t{data[1]} * 4;
  const std::size_t cut = in.size() * data[0] / 0xff;

  const decoded whole = decode(in, {}, max);

  // Where the reads are cut changes nothing.
  FUZZ_CHECK(decode(in, {cut}, max).same_as(whole));
  if (in.size() <= 512) {
    std::vector<std::size_t> bytewise;
    for (std::size_t i = 1; i < in.size(); ++i) bytewise.push_back(i);
    FUZZ_CHECK(decode(in, bytewise, max).same_as(whole));
  }
  FUZZ_CHECK(whole.out.size() <= max);

  // The end is the first CRLF "." CRLF, DATA's own CRLF counting as the
  // first CRLF, and nothing else: no smuggled ending ends it.
  const std::string framed = "\r\n" + std::string(in);
  const std::size_t end = framed.find("\r\n.\r\n");
  if (end == std::string::npos) {
    FUZZ_CHECK(!whole.done && whole.consumed == in.size());
    return 0;
  }
  FUZZ_CHECK(whole.done && whole.consumed == end + 3);

  // The message: strict CRLF text is unstuffed and kept within the limit;
  // anything else is a fault.
  const std::string_view message = in.substr(0, whole.consumed - 3);
  if (!strict_crlf(message)) {
    FUZZ_CHECK(whole.failure != dot_decoder::fault::none);
    return 0;
  }
  const std::string want = unstuff(message);
  FUZZ_CHECK(whole.size == want.size());
  if (want.size() > max) {
    FUZZ_CHECK(whole.failure == dot_decoder::fault::too_big);
    return 0;
  }
  FUZZ_CHECK(whole.failure == dot_decoder::fault::none);
  FUZZ_CHECK(whole.out == want);
  FUZZ_CHECK(strict_crlf(whole.out));

  // Re-encoded for the upstream and decoded again: the same message.
  std::string wire;
  for (const auto piece : dot_stuffed_pieces(whole.out)) wire += piece;
  const decoded again = decode(wire, {}, unlimited);
  FUZZ_CHECK(again.done && again.failure == dot_decoder::fault::none);
  FUZZ_CHECK(again.consumed == wire.size());
  FUZZ_CHECK(again.out == whole.out);

  // Stuffed in chunks (as the upstream writer reads a message_store): the
  // same wire, wherever the chunks are cut.
  const std::size_t chunk = 1 + (in.empty() ? 0 : static_cast<unsigned char>(in[0]) % 16);
  dot_stuffer stuffer;
  std::vector<std::string_view> pieces;
  for (std::size_t at = 0; at < whole.out.size(); at += chunk)
    stuffer.stuff(std::string_view(whole.out).substr(at, chunk), pieces);
  stuffer.finish(pieces);
  std::string chunked;
  for (const auto piece : pieces) chunked += piece;
  FUZZ_CHECK(chunked == wire);
  return 0;
}
