#include "checks/arc_verifier.hpp"

#include <ctime>

#include "checks/arc_sets.hpp"
#include "checks/authentication_results.hpp"
#include "checks/dkim_canon.hpp"
#include "checks/dkim_crypto.hpp"
#include "checks/message_fields.hpp"
#include "smtp/message_header.hpp"

namespace portcullis::checks {

arc_verifier::arc_verifier(txt_lookup lookup, std::chrono::milliseconds budget)
    : lookup_(std::move(lookup)), budget_(budget), keys_(std::make_unique<dkim_key_cache>()) {
  sha256();  // (fails here, at start-up, if ever)
}

arc_verifier::~arc_verifier() = default;

namespace {

// What each seal signs (§5.1.1: seal i covers sets 1 to i, its own b=
// empty), hashed: the sets' fields canonicalized once, in instance order,
// into one running hash that each seal's digest branches off. (Building
// each seal's data anew re-canonicalized sets 1 to i for every i: work
// quadratic in the sets a sender sends.)
std::vector<std::string> seal_digests(const std::vector<arc_set_fields>& sets) {
  std::vector<std::string> digests;
  sha256_hasher covered;  // sets 1 to i - 1, whole
  for (const auto& [results, message_signature, seal] : sets) {
    covered.update(relaxed_header(results));
    covered.update(relaxed_header(message_signature));
    sha256_hasher own = covered;
    own.update(unsigned_signature_field(seal, dkim_canonicalization::relaxed));
    digests.push_back(own.digest());
    covered.update(relaxed_header(seal));
  }
  return digests;
}

}  // namespace

arc_result arc_verifier::verify_now(const message_store& message, std::optional<std::int64_t> now,
                                    std::vector<reported_pass>* newest_passes) const {
  arc_result r;
  const auto fail = [&r](std::string problem) {
    r.result = arc_result::kind::fail;
    r.problem = std::move(problem);
    return std::move(r);
  };

  // The header fields; then, once the chain is known, the newest message
  // signature's body hash as the rest streams by.
  arc_chain chain;
  std::optional<body_hasher> body;
  const auto fields = read_for_signatures(message, {}, max_checked_header, [&](const std::vector<std::string>& header) {
    chain = find_arc_chain(header);
    if (chain.sets.empty()) return std::vector<body_hasher*>{};
    const auto& ams = chain.sets.back().message_tags;
    return std::vector{&body.emplace(ams.body_canon, ams.length)};
  });
  if (!fields)  // (whether it has ARC fields at all is not known)
    return fail("header section too large (over " + std::to_string(max_checked_header / 1024) + " KiB): not validated");

  if (!chain.any) return r;  // §5.2 step 1: none
  if (!chain.problem.empty()) return fail(chain.problem);
  const auto& sets = chain.sets;
  r.instances = static_cast<unsigned>(sets.size());
  for (const auto& set : sets) r.sealers.push_back(set.seal_tags.domain);

  const auto deadline = std::chrono::steady_clock::now() + budget_;
  const std::int64_t at = now.value_or(std::time(nullptr));
  // One signature over data hashed to `digest`: "" or why it does not verify.
  const auto verify = [&](const dkim_signature_fields& sig, const std::string& digest) -> std::string {
    if (auto problem = check_dkim_times(sig, at); !problem.empty()) return problem;
    if (std::chrono::steady_clock::now() > deadline)
      return "not verified: key lookups took over " + std::to_string(budget_.count() / 1000) + " s in all";
    auto found = find_dkim_key(lookup_, *keys_, sig);
    if (!found.key) return found.problem;
    return digest_signature_verifies(*found.key, digest, base64_decode(sig.signature)) ? ""
                                                                                        : "signature verification failed";
  };

  // §5.2 step 5: the newest message signature.
  const auto& newest = sets.back();
  const auto& ams = newest.message_tags;
  std::string problem;
  if (ams.length && *ams.length > body->length()) {
    problem = "length tag value exceeds body size";
  } else if (base64_decode(ams.body_hash) != body->digest()) {
    problem = "body hash did not verify";
  } else {
    sha256_hasher data;
    for_each_signed_field(*fields, ams.headers, ams.header_canon, [&data](std::string_view f) { data.update(f); });
    data.update(unsigned_signature_field((*fields)[newest.message_signature], ams.header_canon));
    problem = verify(ams, data.digest());
  }
  if (!problem.empty())
    return fail("ARC-Message-Signature[" + std::to_string(sets.size()) + "] did not validate: " + problem);

  // §5.2 step 7: every seal, the newest first; seal i covers sets 1 to i.
  const auto digests = seal_digests(arc_set_fields_of(*fields, sets));
  for (std::size_t i = sets.size(); i > 0; --i) {
    if (problem = verify(sets[i - 1].seal_tags, digests[i - 1]); !problem.empty())
      return fail("ARC-Seal[" + std::to_string(i) + "] did not validate: " + problem);
  }
  r.result = arc_result::kind::pass;
  if (newest_passes) {
    // What the last intermediary found, under its seal (RFC 8617 §4.1.1):
    // its ARC-Authentication-Results, past the "i=N;" that starts it.
    const std::string aar = smtp::header_field_value((*fields)[newest.results]);
    *newest_passes = reported_passes(std::string_view(aar).substr(aar.find(';') + 1), max_arc_authenticated);
  }
  return r;
}

}  // namespace portcullis::checks
