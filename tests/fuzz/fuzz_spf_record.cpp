// libFuzzer target: the RFC 7208 record check and the record libspf2 is
// given (checks/spf_record). The input is one record, as DNS may hold it.
// Whatever it holds: an error message is short, printable ASCII; whether a
// record is valid depends neither on letter case, nor on the order of its
// terms, nor on trailing spaces; a valid record stays valid with one more
// term; and the record made for libspf2 is valid, a fixed point of the
// rewrite, and free of the /0 ip4 and ip6 networks libspf2 refuses; made
// for one client, it is valid still, its terms a subset, and it keeps no
// ip4 term for an IPv6 client or ip6 term for an IPv4 one.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "checks/spf_record.hpp"
#include "fuzz_check.hpp"
#include "smtp/text.hpp"

using namespace portcullis::checks;
using portcullis::smtp::starts_with_nocase;
using portcullis::smtp::to_lower;
using portcullis::smtp::to_upper;

namespace {

constexpr std::string_view version = "v=spf1";
// The quoted term, a quoted label and the words around them.
constexpr std::size_t max_error_chars = 3 * spf_error_term_chars;

bool is_valid(std::string_view record) { return !spf_record_error(record).has_value(); }

std::vector<std::string_view> terms_of(std::string_view record) {
  std::vector<std::string_view> terms;
  std::size_t i = version.size();
  while (i < record.size()) {
    const auto start = record.find_first_not_of(' ', i);
    if (start == std::string_view::npos) break;
    const auto end = std::min(record.find(' ', start), record.size());
    terms.push_back(record.substr(start, end - start));
    i = end;
  }
  return terms;
}

void check_error(const std::string& error) {
  FUZZ_CHECK(!error.empty());
  FUZZ_CHECK(error.size() <= max_error_chars);
  for (const char c : error) FUZZ_CHECK(c >= 0x20 && c <= 0x7e);
}

void check_for_libspf2(std::string_view record) {
  const std::string rewritten = spf_record_for_libspf2(record);
  FUZZ_CHECK(is_valid(rewritten));
  FUZZ_CHECK(spf_record_for_libspf2(rewritten) == rewritten);
  FUZZ_CHECK(terms_of(rewritten).size() <= 2 * terms_of(record).size());
  for (auto term : terms_of(rewritten)) {
    if (term[0] == '+' || term[0] == '-' || term[0] == '~' || term[0] == '?') term.remove_prefix(1);
    if (starts_with_nocase(term, "ip4:") || starts_with_nocase(term, "ip6:"))
      FUZZ_CHECK(!term.ends_with("/0"));
  }
}

// (`record` already made for libspf2.)
void check_for_client(const std::string& record, const char* client) {
  const auto address = boost::asio::ip::make_address(client);
  const std::string made = spf_record_for_client(record, address, any_address_marker());
  FUZZ_CHECK(is_valid(made));
  FUZZ_CHECK(terms_of(made).size() <= terms_of(record).size());
  const auto before = terms_of(record);
  for (auto term : terms_of(made)) {
    if (term[0] == '+' || term[0] == '-' || term[0] == '~' || term[0] == '?') term.remove_prefix(1);
    const bool ip4 = starts_with_nocase(term, "ip4:"), ip6 = starts_with_nocase(term, "ip6:");
    if (!ip4 && !ip6) continue;
    FUZZ_CHECK(address.is_v4() ? ip4 : ip6);
    FUZZ_CHECK(std::any_of(before.begin(), before.end(), [&](std::string_view t) { return t.ends_with(term); }));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string record(reinterpret_cast<const char*>(data), size);
  const auto error = spf_record_error(record);
  if (error) check_error(*error);

  FUZZ_CHECK(is_valid(to_upper(record)) == !error);
  FUZZ_CHECK(is_valid(to_lower(record)) == !error);
  FUZZ_CHECK(spf_record_error(record + "  ") == error);

  // The same terms the other way round.
  if (starts_with_nocase(record, version) && (record.size() == version.size() || record[version.size()] == ' ')) {
    auto terms = terms_of(record);
    std::reverse(terms.begin(), terms.end());
    std::string reversed(version);
    for (const auto term : terms) reversed.append(" ").append(term);
    FUZZ_CHECK(is_valid(reversed) == !error);
  }

  if (error) return 0;
  FUZZ_CHECK(starts_with_nocase(record, version));
  for (const char c : record) FUZZ_CHECK(c == ' ' || (c >= 0x21 && c <= 0x7e));
  FUZZ_CHECK(is_valid(record + " -all"));
  check_for_libspf2(record);
  const std::string for_libspf2 = spf_record_for_libspf2(record);
  for (const char* client : {"192.0.2.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::", "ffff::1"})
    check_for_client(for_libspf2, client);
  return 0;
}
