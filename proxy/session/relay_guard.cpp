#include "session/relay_guard.hpp"

#include "smtp/text.hpp"

namespace portcullis {

namespace {
std::string canonical_domain(std::string_view d) {
  std::string out = smtp::to_lower(d);
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}
}  // namespace

relay_guard::relay_guard(const relay_config& cfg) : enabled_(cfg.enabled), trusted_(cfg.trusted_networks) {
  for (const auto& d : cfg.local_domains) local_domains_.insert(canonical_domain(d));
}

bool relay_guard::is_local(const smtp::address& rcpt) const {
  // RFC 5321 §4.1.1.3: <Postmaster> alone is always ours.
  if (rcpt.domain.empty()) return smtp::equals_nocase(rcpt.local, "postmaster");
  if (rcpt.local.find_first_of("%!@") != std::string::npos) return false;
  return local_domains_.count(canonical_domain(rcpt.domain)) > 0;
}

}  // namespace portcullis
