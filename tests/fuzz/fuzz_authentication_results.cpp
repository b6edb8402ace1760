// libFuzzer target: the finder of Authentication-Results fields claiming our
// authserv-id (checks/authentication_results). Whatever the message: the
// ranges it finds are in order, do not overlap, lie in the header section,
// each starts a field named Authentication-Results; and feeding the message
// in pieces finds the same ranges as feeding it whole.
//
// Input: byte 0 picks the piece size; the rest is the message.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "checks/authentication_results.hpp"
#include "fuzz_check.hpp"
#include "smtp/text.hpp"

using namespace portcullis::checks;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view message(reinterpret_cast<const char*>(data + 1), size - 1);

  claimed_results_finder whole("mx.example.test");
  whole.feed(message);
  whole.finish();
  claimed_results_finder pieces("mx.example.test");
  for (std::size_t i = 0; i < message.size(); i += piece) pieces.feed(message.substr(i, piece));
  pieces.finish();
  FUZZ_CHECK(whole.claimed() == pieces.claimed());

  const auto end_of_headers = message.find("\r\n\r\n");
  std::uint64_t last_end = 0;
  for (auto [begin, end] : whole.claimed()) {
    FUZZ_CHECK(begin >= last_end);
    FUZZ_CHECK(begin < end);
    FUZZ_CHECK(end <= message.size());
    FUZZ_CHECK(end_of_headers == std::string_view::npos || begin <= end_of_headers + 2);
    FUZZ_CHECK(begin == 0 || message[begin - 1] == '\n');
    FUZZ_CHECK(portcullis::smtp::starts_with_nocase(message.substr(begin), "authentication-results"));
    last_end = end;
  }
  return 0;
}
