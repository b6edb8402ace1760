// DMARC (RFC 7489): the From domain's policy found through our resolver
// (§6.6.3: the From domain, else its organizational domain), parsed by
// libopendmarc, and the SPF and DKIM results the session already has
// judged for alignment against the Public Suffix List (libpsl).
//
// libopendmarc parses the record; alignment is ours: its own compares
// reversed names by prefix with a suffix list that knows no default rule,
// so a signature by a public suffix (d=co.uk) would align with every domain
// under it, and a domain under an unlisted TLD (.test) would have no
// organizational domain. Blocks on DNS: the checks' threads call it.
//
// A message may name several author domains (several mailboxes in From, or
// several From fields, which RFC 5322 §3.6 forbids): each is evaluated and
// the strictest failure reported (RFC 7489 §6.6.1), so that a p=reject
// domain's forgery cannot get away by naming one more. Up to
// max_author_domains of them; a From that names more, or none that can be
// evaluated, is dmarc_result::unusable_from.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "checks/authentication_results.hpp"
#include "checks/results.hpp"
#include "checks/txt_lookup.hpp"
#include "dns/resolver.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

// How long one evaluation may spend on policy lookups in all: each author
// domain takes one or two (§6.6.3). Past it, the domains left are temperror.
inline constexpr std::chrono::milliseconds dmarc_lookup_budget{20000};

// The DMARC record as libopendmarc gets it: the tags that decide (p, sp,
// pct, adkim, aspf), each the first of its name, those of invalid values
// dropped for their defaults (RFC 7489 §6.3); without a valid p= (or with an
// invalid sp=), "p=none" when rua= names a reporting URI, else nullopt: no
// DMARC (§6.6.3 step 6). The reporting tags go: nothing is reported, and a
// broken one made the whole record permerror.
std::optional<std::string> dmarc_policy_record(std::string_view record);

class dmarc_evaluator {
 public:
  using txt_lookup = checks::txt_lookup;
  // A number in [0, 100) for the pct= sample (random; fixed in the tests).
  using sample = std::function<unsigned()>;

  // Throws std::runtime_error when the Public Suffix List cannot be loaded.
  explicit dmarc_evaluator(txt_lookup lookup, sample draw = {},
                           std::chrono::milliseconds budget = dmarc_lookup_budget);
  ~dmarc_evaluator();
  dmarc_evaluator(const dmarc_evaluator&) = delete;
  dmarc_evaluator& operator=(const dmarc_evaluator&) = delete;

  // How the policy records of several author domains are looked up
  // (sender_checker.cpp decides; look_up_together unless told).
  void set_lookups_together(txt_lookups together) { together_ = std::move(together); }

  // The message's From field(s), read from its header section (at most
  // max_checked_header bytes of it: past them, unusable_from).
  // `arc_passes`: what the newest ARC set's ARC-Authentication-Results report
  // as passed, when the chain passed (arc_verifier); they give arc_aligned.
  dmarc_result evaluate_now(const message_store& message, const std::optional<spf_result>& spf,
                            const std::optional<dkim_results>& dkim,
                            const std::vector<reported_pass>& arc_passes = {}) const;
  // The same from the From fields' values (each unfolded).
  dmarc_result evaluate(const std::vector<std::string>& from_values, const std::optional<spf_result>& spf,
                        const std::optional<dkim_results>& dkim,
                        const std::vector<reported_pass>& arc_passes = {}) const;

  // The organizational domain (§3.2): the registrable domain by the Public
  // Suffix List, its "*" default rule included; a public suffix is its own.
  std::string organizational_domain(std::string_view domain) const;

 private:
  struct library;
  // One author domain (A-labels), evaluated; its lookups made before
  // `deadline`, or found in `fetched` (by the record's name).
  dmarc_result evaluate_domain(const std::string& author, const std::optional<spf_result>& spf,
                               const std::optional<dkim_results>& dkim, const std::vector<reported_pass>& arc_passes,
                               std::chrono::steady_clock::time_point deadline,
                               const std::map<std::string, dns::answer>& fetched) const;

  txt_lookup lookup_;
  sample draw_;
  std::chrono::milliseconds budget_;
  txt_lookups together_ = look_up_together;
  std::unique_ptr<library> lib_;
};

}  // namespace portcullis::checks
