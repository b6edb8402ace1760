// libFuzzer target: DKIM's relaxed canonicalization (checks/dkim_canon).
// Whatever the body: fed in pieces, the output is the same as fed whole;
// it is empty or ends with one CRLF, has no WSP before a CRLF, no two WSP in
// a row, no tab, and no empty line at its end; canonicalizing it again
// changes nothing. A (folded) header field's relaxed form has no CR or LF but
// its final CRLF, a lower-case name, no WSP after the colon or before the CRLF.
//
// Input: byte 0 picks the piece size; the rest is the body (and a field).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "checks/dkim_canon.hpp"
#include "fuzz_check.hpp"
#include "smtp/text.hpp"

using namespace portcullis::checks;

namespace {

std::string canonical(std::string_view in, std::size_t piece) {
  relaxed_body b;
  std::string out;
  for (std::size_t i = 0; i < in.size(); i += piece) b.feed(in.substr(i, piece), out);
  b.finish(out);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);

  const auto whole = canonical(in, in.size() + 1);
  FUZZ_CHECK(canonical(in, piece) == whole);
  if (!whole.empty()) FUZZ_CHECK(whole.ends_with("\r\n"));
  FUZZ_CHECK(whole.find(" \r\n") == std::string::npos);
  FUZZ_CHECK(whole.find("  ") == std::string::npos);
  FUZZ_CHECK(whole.find('\t') == std::string::npos);
  FUZZ_CHECK(!whole.ends_with("\r\n\r\n") && whole != "\r\n");
  FUZZ_CHECK(canonical(whole, piece) == whole);

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
  FUZZ_CHECK(core.size() == colon + 1 || (!portcullis::smtp::is_wsp(core[colon + 1]) && !portcullis::smtp::is_wsp(core.back())));
  return 0;
}
