#include "session/relay_guard.hpp"

#include "checks/idna_domain.hpp"
#include "smtp/text.hpp"

namespace portcullis {

namespace {
// Lower case, no trailing dot, in A-labels: under SMTPUTF8 a recipient's
// domain may come in U-labels (RFC 6531 §3.2), and x@exämple.test is the
// same domain as x@xn--exmple-cua.test (RFC 5890 §2.3.2.1). A domain that
// does not convert (not valid IDNA2008) is nobody's: nullopt.
std::optional<std::string> canonical_domain(std::string_view d) {
  auto ascii = checks::a_label_domain(d);
  if (!ascii) return std::nullopt;
  std::string out = smtp::to_lower(*ascii);
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}
}  // namespace

relay_guard::relay_guard(const relay_config& cfg) : enabled_(cfg.enabled), trusted_(cfg.trusted_networks) {
  for (const auto& d : cfg.local_domains)
    if (auto c = canonical_domain(d)) local_domains_.insert(std::move(*c));
}

bool relay_guard::is_local(const smtp::address& rcpt) const {
  // RFC 5321 §4.1.1.3: <Postmaster> alone is always ours.
  if (rcpt.domain.empty()) return smtp::equals_nocase(rcpt.local, "postmaster");
  if (rcpt.local.find_first_of("%!@") != std::string::npos) return false;
  const auto domain = canonical_domain(rcpt.domain);
  return domain && local_domains_.count(*domain) > 0;
}

}  // namespace portcullis
