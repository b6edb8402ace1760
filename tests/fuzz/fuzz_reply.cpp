// libFuzzer target: the upstream's replies (reply_parser, fit, with_status).
// Whatever the upstream sends, what reaches our client is well-formed: every
// line within 512 octets (RFC 5321 §4.5.3.1.5), printable US-ASCII only
// (§4.2), one code per reply, a code of 2yz-5yz with y <= 5; and fit() puts
// every 4xx/5xx down as a refusal, every success as the command's own code.
//
// Input: byte 0 picks the command the replies answer; the rest is what the
// upstream sends, cut into lines at LF (a CR before it dropped), as
// line_stream hands them over.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "smtp/reply.hpp"

using namespace portcullis::smtp;

namespace {

constexpr std::size_t max_read = 4096;  // smtp_upstream's longest line

void check_wire(const reply& r) {
  const std::string wire = r.wire();
  std::size_t start = 0, lines = 0;
  for (auto end = wire.find("\r\n"); end != std::string::npos; start = end + 2, end = wire.find("\r\n", start)) {
    const std::string_view line = std::string_view(wire).substr(start, end - start);
    FUZZ_CHECK(line.size() + 2 <= max_reply_line_octets);
    FUZZ_CHECK(is_safe_reply_text(line));
    FUZZ_CHECK(line.substr(0, 3) == std::to_string(r.code));
    ++lines;
  }
  FUZZ_CHECK(start == wire.size());
  FUZZ_CHECK(lines == (r.lines.empty() ? 1 : r.lines.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const auto what = static_cast<reply_to>(data[0] % (static_cast<int>(reply_to::quit) + 1));
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  reply_parser parser;
  while (!in.empty()) {
    const auto lf = in.find('\n');
    std::string_view line = in.substr(0, lf);
    in = lf == std::string_view::npos ? std::string_view{} : in.substr(lf + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > max_read) return 0;  // too_long: a protocol error before the parser
    const auto st = parser.feed_line(line);
    if (st == reply_parser::state::malformed) return 0;  // the connection is dropped
    if (st == reply_parser::state::need_more) continue;
    const reply r = parser.take();
    FUZZ_CHECK(r.code >= 200 && r.code <= 559 && (r.code / 10) % 10 <= 5);
    FUZZ_CHECK(r.status.empty() || (is_enhanced_status(r.status) && r.status[0] == '0' + r.code / 100));
    check_wire(r);
    check_wire(with_status(r, "2.0.0"));
    const auto f = fit(what, r.code);
    if (r.code >= 400) FUZZ_CHECK(f == reply_fit::refusal);
    if (f == reply_fit::success) FUZZ_CHECK(r.code < 400);
    FUZZ_CHECK(!name(what).empty());
  }
  return 0;
}
