// libFuzzer target: DKIM's canonicalizations (checks/dkim_canon).
// Whatever the body: fed in pieces, the output is the same as fed whole;
// relaxed, it is empty or ends with one CRLF, has no WSP before a CRLF, no
// two WSP in a row, no tab, and no empty line at its end; simple, it ends
// with one CRLF and no empty line; canonicalizing again changes nothing;
// relaxed, it is what a line-by-line reading of RFC 6376 §3.4.4 gives. A
// (folded) header field's relaxed form has no CR or LF but its final CRLF, a
// lower-case name, and the value unfolded with each run of WSP one space,
// none at either end.
//
// Input: byte 0 picks the piece size; the rest is the body (and a field).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "checks/dkim_canon.hpp"
#include "fuzz_check.hpp"
#include "smtp/text.hpp"

using namespace portcullis::checks;

namespace {

std::string canonical(std::string_view in, std::size_t piece,
                      dkim_canonicalization c = dkim_canonicalization::relaxed) {
  canonical_body b(c);
  std::string out;
  for (std::size_t i = 0; i < in.size(); i += piece) b.feed(in.substr(i, piece), out);
  b.finish(out);
  return out;
}

// The relaxed body by a second route, line by line (RFC 6376 §3.4.4): CR
// dropped, lines split at LF, each run of WSP one SP and none at a line's
// end, the empty lines at the end dropped, each line ending in CRLF.
std::string relaxed_by_lines(std::string_view in) {
  std::vector<std::string> lines(1);
  bool wsp = false;
  for (char c : in) {
    if (c == '\n') {
      lines.emplace_back();
      wsp = false;
    } else if (portcullis::smtp::is_wsp(c)) {
      wsp = true;
    } else if (c != '\r') {
      if (wsp) lines.back() += ' ';
      wsp = false;
      lines.back() += c;
    }
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::string out;
  for (const auto& line : lines) out += line + "\r\n";
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);

  const auto whole = canonical(in, in.size() + 1);
  FUZZ_CHECK(canonical(in, piece) == whole);
  FUZZ_CHECK(whole == relaxed_by_lines(in));
  if (!whole.empty()) FUZZ_CHECK(whole.ends_with("\r\n"));
  FUZZ_CHECK(whole.find(" \r\n") == std::string::npos);
  FUZZ_CHECK(whole.find("  ") == std::string::npos);
  FUZZ_CHECK(whole.find('\t') == std::string::npos);
  FUZZ_CHECK(!whole.ends_with("\r\n\r\n") && whole != "\r\n");
  FUZZ_CHECK(canonical(whole, piece) == whole);

  // Simple: CR and LF only as CRLF pairs, as the DATA decoder leaves them.
  std::string lines;
  for (char c : in) {
    if (c == '\n') lines += "\r\n";
    else if (c != '\r') lines += c;
  }
  const auto simple = canonical(lines, lines.size() + 1, dkim_canonicalization::simple);
  FUZZ_CHECK(canonical(lines, piece, dkim_canonicalization::simple) == simple);
  FUZZ_CHECK(simple.ends_with("\r\n") && (simple == "\r\n" || !simple.ends_with("\r\n\r\n")));
  FUZZ_CHECK(canonical(simple, piece, dkim_canonicalization::simple) == simple);
  FUZZ_CHECK(lines.starts_with(simple.substr(0, simple.size() - 2)));

  // The same bytes as a header field as the header reader hands it over: its
  // line ends are folds (CRLF and a space), and it ends with CRLF.
  std::string raw;
  for (char c : in) {
    if (c == '\n') raw += "\r\n ";
    else if (c != '\r') raw += c;
  }
  const auto field = relaxed_header(raw + "\r\n");
  FUZZ_CHECK(field.ends_with("\r\n"));
  const auto core = std::string_view(field).substr(0, field.size() - 2);
  FUZZ_CHECK(core.find('\r') == std::string_view::npos && core.find('\n') == std::string_view::npos);
  const auto colon = core.find(':');
  FUZZ_CHECK(colon != std::string_view::npos);
  FUZZ_CHECK(portcullis::smtp::to_lower(core.substr(0, colon)) == core.substr(0, colon));
  // The value, by a second route: unfolded, split at WSP, joined with one space.
  std::string value;
  bool wsp = false;
  const auto raw_colon = raw.find(':');
  if (raw_colon != std::string::npos) {
    for (char c : std::string_view(raw).substr(raw_colon + 1)) {
      if (c == '\r' || c == '\n') continue;
      if (portcullis::smtp::is_wsp(c)) {
        wsp = true;
        continue;
      }
      if (wsp && !value.empty()) value += ' ';
      wsp = false;
      value += c;
    }
  }
  FUZZ_CHECK(core.substr(colon + 1) == value);
  return 0;
}
