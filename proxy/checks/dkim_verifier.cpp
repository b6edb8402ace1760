#include "checks/dkim_verifier.hpp"

#include <algorithm>
#include <ctime>

#include "checks/dkim_canon.hpp"
#include "checks/dkim_crypto.hpp"
#include "checks/dkim_fields.hpp"
#include "checks/dkim_keys.hpp"
#include "checks/message_fields.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

// One DKIM-Signature field on its way to a result.
struct signature_state {
  std::size_t field = 0;     // its index among the header fields
  dkim_signature_fields tags;
  dkim_signature result;     // result.problem set: decided (unless pass)
  std::size_t hasher = 0;
  bool decided = false;
};

}  // namespace

dkim_verifier::dkim_verifier(txt_lookup lookup, unsigned max_signatures)
    : lookup_(std::move(lookup)), max_signatures_(max_signatures), keys_(std::make_unique<dkim_key_cache>()) {
  sha256();  // (fails here, at start-up, if ever)
}

dkim_verifier::~dkim_verifier() = default;

dkim_results dkim_verifier::verify_now(const message_store& message, std::optional<std::int64_t> now) const {
  using kind = dkim_signature::kind;
  std::vector<signature_state> sigs;
  std::vector<std::unique_ptr<body_hasher>> hashers;
  std::size_t past_limit = 0;  // signatures not evaluated: counted, not parsed nor kept

  const auto decide = [](signature_state& s, kind k, std::string problem) {
    s.result.result = k;
    s.result.problem = std::move(problem);
    s.decided = true;
  };
  // Once the header is read: the signatures, each parsed, and a body hasher for each way the body is wanted.
  const auto read_signatures = [&](const std::vector<std::string>& fields) {
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (!smtp::equals_nocase(smtp::header_field_name(fields[i]), "DKIM-Signature")) continue;
      if (sigs.size() >= max_signatures_) {
        ++past_limit;
        continue;
      }
      signature_state s;
      s.field = i;
      if (auto problem = parse_dkim_signature(smtp::header_field_value(fields[i]), s.tags); !problem.empty()) {
        decide(s, kind::permerror, std::move(problem));
      } else if (problem = check_dkim_times(s.tags, now.value_or(std::time(nullptr))); !problem.empty()) {
        decide(s, kind::permerror, std::move(problem));
      } else {
        const auto same = std::find_if(hashers.begin(), hashers.end(),
                                       [&](const auto& h) { return h->wants(s.tags.body_canon, s.tags.length); });
        s.hasher = static_cast<std::size_t>(same - hashers.begin());
        if (same == hashers.end()) hashers.push_back(std::make_unique<body_hasher>(s.tags.body_canon, s.tags.length));
      }
      s.result.domain = s.tags.domain;
      s.result.selector = s.tags.selector;
      sigs.push_back(std::move(s));
    }
    std::vector<body_hasher*> wanted;
    for (auto& h : hashers) wanted.push_back(h.get());
    return wanted;
  };
  const auto fields = read_for_signatures(message, {}, max_checked_header, read_signatures);
  if (!fields) {
    // No signature can be verified without the fields it names, which may
    // come anywhere in the header section; and it is not kept past the cap.
    dkim_signature too_large;
    too_large.result = kind::permerror;
    too_large.problem = "header section too large (over " + std::to_string(max_checked_header / 1024) +
                        " KiB): not verified";
    return {too_large};
  }

  dkim_results out;
  for (auto& s : sigs) {
    if (!s.decided) {
      // The key (§6.1.2).
      auto found = find_dkim_key(lookup_, *keys_, s.tags);
      if (!found.key) decide(s, found.failure, std::move(found.problem));
      const auto& key = found.key;
      // The body (§6.1.3), then the header fields and the signature itself.
      const body_hasher* body = s.decided ? nullptr : hashers[s.hasher].get();
      if (body && s.tags.length && *s.tags.length > body->length()) {
        decide(s, kind::permerror, "length tag value exceeds body size");
      } else if (body && base64_decode(s.tags.body_hash) != body->digest()) {
        decide(s, kind::fail, "body hash did not verify");
      } else if (body) {
        // (Hashed as the fields are canonicalized: no copy of them all.)
        sha256_hasher data;
        for_each_signed_field(*fields, s.tags.headers, s.tags.header_canon,
                              [&data](std::string_view field) { data.update(field); });
        data.update(unsigned_signature_field((*fields)[s.field], s.tags.header_canon));
        const bool ok = digest_signature_verifies(*key, data.digest(), base64_decode(s.tags.signature));
        decide(s, ok ? kind::pass : kind::fail, ok ? "" : "signature verification failed");
      }
    }
    out.push_back(std::move(s.result));
  }
  if (past_limit > 0) {
    // One entry for them all (and one log line, one Authentication-Results
    // result, one policy object): a sender writes as many as it likes.
    dkim_signature rest;
    rest.result = kind::neutral;
    rest.problem = std::to_string(past_limit) + " more signature" + (past_limit == 1 ? "" : "s") +
                   " not evaluated (past the first " + std::to_string(max_signatures_) + ")";
    out.push_back(std::move(rest));
  }
  return out;
}

}  // namespace portcullis::checks
