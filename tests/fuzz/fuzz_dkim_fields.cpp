// libFuzzer target: what a DKIM verifier parses (checks/dkim_fields) and the
// signature field it hashes (checks/dkim_canon unsigned_signature_field).
// A tag list that parses has well-formed names, each once, and values with
// no ";" and no whitespace at either end; written out again it parses to
// the same tags. A signature that parses covers From, names a known
// algorithm and a lower-case domain that its i= lies in. Nothing crashes or
// runs away on any input.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "checks/dkim_canon.hpp"
#include "checks/dkim_fields.hpp"
#include "fuzz_check.hpp"
#include "smtp/text.hpp"

using namespace portcullis::checks;

namespace {

bool fws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  std::string error;
  if (const auto tags = parse_dkim_tags(in, error)) {
    std::set<std::string_view> names;
    std::string again;
    for (const auto& [name, value] : *tags) {
      FUZZ_CHECK(!name.empty() && names.insert(name).second);
      FUZZ_CHECK(value.find(';') == std::string_view::npos);
      FUZZ_CHECK(value.empty() || (!fws(value.front()) && !fws(value.back())));
      again += std::string(name) + "=" + std::string(value) + ";";
    }
    std::string error2;
    const auto reparsed = parse_dkim_tags(again, error2);
    FUZZ_CHECK(reparsed && *reparsed == *tags);
  } else {
    FUZZ_CHECK(!error.empty());
  }

  dkim_signature_fields sig;
  if (parse_dkim_signature(in, sig).empty()) {
    FUZZ_CHECK(sig.algorithm == "rsa-sha256" || sig.algorithm == "ed25519-sha256");
    FUZZ_CHECK(portcullis::smtp::to_lower(sig.domain) == sig.domain && !sig.domain.empty());
    FUZZ_CHECK(sig.identity_domain == sig.domain || sig.identity_domain.ends_with("." + sig.domain));
    bool from = false;
    for (const auto& h : sig.headers) from = from || h == "from";
    FUZZ_CHECK(from && !sig.signature.empty() && sig.signature.size() % 4 == 0 && sig.body_hash.size() % 4 == 0);
    check_dkim_times(sig, 1'800'000'000);
  }

  dkim_key_fields key;
  if (parse_dkim_key(in, key).empty()) FUZZ_CHECK(!key.key.empty() && key.key.size() % 4 == 0);

  // As a DKIM-Signature field: its own signature's input has no b= value and no line end at its end.
  const std::string field = "DKIM-Signature:" + std::string(in) + "\r\n";
  for (auto c : {dkim_canonicalization::simple, dkim_canonicalization::relaxed}) {
    const auto unsigned_field = unsigned_signature_field(field, c);
    FUZZ_CHECK(!unsigned_field.ends_with("\n"));
    FUZZ_CHECK(unsigned_field.size() <= field.size());
  }
  return 0;
}
