// libFuzzer target: the ARC verifier whole (checks/arc_verifier): the
// header read, the ARC sets found and checked for form (checks/arc_sets),
// the newest message signature's body hashed, every seal's data made and
// verified with keys from a fixed table (the seeds' sealers' key, a revoked
// one, garbage, a timeout). The seeds are chains dkimpy made. Whatever the
// bytes: no crash, no sanitizer report, none exactly when there are no ARC
// fields, at most 50 sets, a pass names each set's sealer, and the same
// result when validated again (the key cache changes nothing).
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "checks/arc_verifier.hpp"
#include "checks/message_fields.hpp"
#include "fuzz_check.hpp"
#include "fuzz_txt_table.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"
#include "store/message_store.hpp"

using namespace portcullis;

namespace {

const std::string arc_key =
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC7xod2RST4vHHuUdAMG9+17+YGLQOPegpVFozMOrBToM7Wk63dMHyL4CQXK24ddAG5APc2OCl"
    "vAgk2bVVvaWr73iDEHqtlm6XWpM/PCjH+xHeW7COO2Qv737kJLBAQ9IQ2J1NFWncpxdoDrRraSujKLAE8BFi6LOi55L5b8tbT6QIDAQAB";

const std::map<std::string, dns::answer>& table() {
  static const std::map<std::string, dns::answer> t = [] {
    std::map<std::string, dns::answer> m;
    m["arc._domainkey.lists.test"] = fuzz::txt("v=DKIM1; k=rsa; p=" + arc_key);
    m["arc._domainkey.relay.test"] = fuzz::txt("v=DKIM1; p=" + arc_key);
    m["revoked._domainkey.lists.test"] = fuzz::txt("v=DKIM1; p=");
    m["garbage._domainkey.lists.test"] = fuzz::txt("v=DKIM1; p=QUJDRA==");
    m["slow._domainkey.lists.test"] = fuzz::timeout();
    return m;
  }();
  return t;
}

dns::answer lookup(const std::string& name) { return fuzz::lookup_in(table(), name); }

bool is_arc_field(std::string_view name) {
  return smtp::equals_nocase(name, "ARC-Seal") || smtp::equals_nocase(name, "ARC-Message-Signature") ||
         smtp::equals_nocase(name, "ARC-Authentication-Results");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const checks::arc_verifier verifier(lookup);
  using kind = checks::arc_result::kind;
  auto message = message_store::wrap(std::make_shared<const std::string>(reinterpret_cast<const char*>(data), size));
  const std::int64_t now = 1796190049 + 60;  // (the seeds' t=)
  const auto r = verifier.verify_now(*message, now);

  bool any = false;
  smtp::header_reader header;
  const auto note = [&](std::string_view field) { any = any || is_arc_field(smtp::header_field_name(field)); };
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  header.feed(bytes, note);
  header.finish(note);
  FUZZ_CHECK((r.result == kind::none) == !any || size > checks::max_checked_header);  // (past it: fail, unread)
  FUZZ_CHECK(r.instances <= checks::max_arc_instance);
  FUZZ_CHECK(r.sealers.size() == r.instances);
  FUZZ_CHECK(r.result != kind::pass || (r.instances > 0 && r.problem.empty()));
  FUZZ_CHECK(r.result != kind::fail || !r.problem.empty());

  const auto again = verifier.verify_now(*message, now);
  FUZZ_CHECK(again.result == r.result && again.problem == r.problem && again.sealers == r.sealers);
  return 0;
}
