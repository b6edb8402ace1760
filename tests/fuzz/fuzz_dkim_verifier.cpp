// libFuzzer target: the DKIM verifier whole (checks/dkim_verifier): a
// message's header read, its signatures parsed, the body canonicalized and
// hashed, keys parsed and cached, OpenSSL verifying. DNS answers come from a
// fixed table (good RSA and Ed25519 keys, a revoked one, garbage, a timeout)
// and, for the selector "fuzz", from the message's own X-Fuzz-Key field (so
// random key records reach the key parser and OpenSSL's). The seeds are
// messages dkimpy signed with the RSA key. Whatever the bytes:
// no crash, no sanitizer report, one result per DKIM-Signature field, and
// the same results when verified again (the key cache changes nothing).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "checks/dkim_verifier.hpp"
#include "checks/message_fields.hpp"
#include "fuzz_check.hpp"
#include "fuzz_txt_table.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"
#include "store/message_store.hpp"

using namespace portcullis;

namespace {

const std::string rsa_key =
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDHZouu5BiBafJm1OfnAJAuPe4IfeSvG95yqC4NHUYbEhoGTtuqDYDGc0WPp7UCG+oqiM4FjE"
    "LeoIb/QEsIe1Cq21S31b9BvXPcJEejt999djOqLdjdwHniAuThuW3Ugxtbto/hqTxDvN5RPJlDHnug2FFjLntH8BzbG/TKr/lx9wIDAQAB";

const std::map<std::string, dns::answer>& table() {
  static const std::map<std::string, dns::answer> t = [] {
    std::map<std::string, dns::answer> m;
    m["rsa._domainkey.example.test"] = fuzz::txt("v=DKIM1; k=rsa; p=" + rsa_key);
    m["strict._domainkey.example.test"] = fuzz::txt("v=DKIM1; t=s; h=sha256; p=" + rsa_key);
    m["ed._domainkey.example.test"] = fuzz::txt("v=DKIM1; k=ed25519; p=9rs1PJ74YPnXu2T4Qhv+M3lySa8qXvlkfIPA+B+zaKI=");
    m["revoked._domainkey.example.test"] = fuzz::txt("v=DKIM1; p=");
    m["garbage._domainkey.example.test"] = fuzz::txt("v=DKIM1; p=QUJDRA==");
    m["slow._domainkey.example.test"] = fuzz::timeout();
    return m;
  }();
  return t;
}

std::string fuzzed_key;  // this input's X-Fuzz-Key value (the fuzzer runs one input at a time)

dns::answer lookup(const std::string& name) {
  if (smtp::equals_nocase(name, "fuzz._domainkey.example.test")) return fuzz::txt(fuzzed_key);
  return fuzz::lookup_in(table(), name);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const checks::dkim_verifier verifier(lookup, 5);
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::size_t signatures = 0;
  fuzzed_key.clear();
  smtp::header_reader header;
  const auto read = [&](std::string_view field) {
    const auto name = smtp::header_field_name(field);
    if (smtp::equals_nocase(name, "DKIM-Signature")) ++signatures;
    if (smtp::equals_nocase(name, "X-Fuzz-Key")) fuzzed_key = smtp::header_field_value(field);
  };
  header.feed(bytes, read);
  header.finish(read);

  auto message = message_store::wrap(std::make_shared<const std::string>(reinterpret_cast<const char*>(data), size));
  const std::int64_t now = 1796190049 + 60;  // (the seeds' t=)
  const auto results = verifier.verify_now(*message, now);
  // The first 5 one by one, the rest counted in one entry (past
  // max_checked_header of header section, one entry whatever the count).
  if (size <= checks::max_checked_header)
    FUZZ_CHECK(results.size() == std::min<std::size_t>(signatures, 5) + (signatures > 5 ? 1 : 0));

  const auto again = verifier.verify_now(*message, now);
  FUZZ_CHECK(again.size() == results.size());
  for (std::size_t i = 0; i < again.size(); ++i) {
    FUZZ_CHECK(again[i].result == results[i].result && again[i].problem == results[i].problem);
  }
  return 0;
}
