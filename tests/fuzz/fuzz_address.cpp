// libFuzzer target: mailboxes, paths, ESMTP parameters and is_valid_address.
// The first byte holds flags (utf8, reverse, utf8_session); the rest is text.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "address_invariants.hpp"
#include "fuzz_check.hpp"
#include "smtp/address.hpp"
#include "smtp/text.hpp"

using namespace portcullis::smtp;
using portcullis::smtp::fuzz::check_params;
using portcullis::smtp::fuzz::check_path_argument;
using portcullis::smtp::fuzz::check_wire_safe;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const bool utf8 = data[0] & 1, reverse = data[0] & 2, utf8_session = data[0] & 4;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  // parse_mailbox: what it accepts is the text itself, re-parses to the same
  // value, is fit for the wire, and is a valid address whenever it fits in a
  // path (§4.5.3.1.3: 256 octets with "<>"; local part and domain have their
  // own, larger limits).
  if (const auto a = parse_mailbox(text, utf8)) {
    FUZZ_CHECK(a->str() == text);
    FUZZ_CHECK(parse_mailbox(a->str(), utf8) == a);
    FUZZ_CHECK(is_valid_address(*a, utf8) == (text.size() + 2 <= max_path));
    check_wire_safe(*a);
    FUZZ_CHECK(!a->local.empty() && !a->domain.empty());
    FUZZ_CHECK(a->local.size() <= max_local_part && a->domain.size() <= max_domain);
    FUZZ_CHECK(utf8 || is_ascii(text));
    FUZZ_CHECK(is_valid_utf8(text));
    if (!utf8) FUZZ_CHECK(parse_mailbox(text, true) == a);
    // The same mailbox inside a path parses the same.
    if (text.size() + 2 <= max_path) {
      const path_result p = parse_path_argument("<" + std::string(text) + ">", reverse, utf8);
      FUZZ_CHECK(p.error == path_error::none && p.value->addr == *a && p.value->params.empty());
    }
  }

  check_path_argument(text, reverse, utf8_session);

  if (const auto params = parse_esmtp_params(text, utf8)) {
    check_params(*params);
    FUZZ_CHECK(utf8 || is_ascii(text));
  }

  // is_valid_address is what a policy's rewrite is checked with: whatever it
  // passes must be fit for the wire, whoever built it.
  if (const auto at = text.rfind('@'); at != std::string_view::npos) {
    const address a{std::string(text.substr(0, at)), std::string(text.substr(at + 1))};
    if (is_valid_address(a, utf8)) {
      check_wire_safe(a);
      // (A domain-less "Postmaster" is a RCPT of its own, not a mailbox.)
      if (!a.null() && !a.domain.empty()) FUZZ_CHECK(parse_mailbox(a.str(), utf8) == a);
    }
  }
  return 0;
}
