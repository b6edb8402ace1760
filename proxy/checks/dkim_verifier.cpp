#include "checks/dkim_verifier.hpp"

#include <algorithm>
#include <ctime>
#include <map>
#include <set>

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

// Whether a signature of `signer` (its d=) may align with `author` (RFC 7489
// §3.1.1): the same organizational domain when `organizational` is given;
// else the same domain, a parent or a subdomain of it.
bool may_align(std::string_view signer, const std::string& author, const dkim_verifier::domain_map& organizational) {
  const auto under = [](std::string_view name, std::string_view parent) {
    return name.size() > parent.size() && name.ends_with(parent) && name[name.size() - parent.size() - 1] == '.';
  };
  if (signer == author || under(signer, author) || under(author, signer)) return true;
  return organizational && organizational(signer) == organizational(author);
}

// The indexes of the DKIM-Signature fields to evaluate, top down: all of
// them when they are at most `max`; else `max` of them, those that may
// align with an author domain first. Sets `total` to how many there are.
std::vector<std::size_t> signatures_to_evaluate(const std::vector<std::string>& fields, std::size_t max,
                                                const dkim_verifier::domain_map& organizational,
                                                std::size_t& total) {
  std::vector<std::size_t> signatures, from_fields;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const auto name = smtp::header_field_name(fields[i]);
    if (smtp::equals_nocase(name, "DKIM-Signature")) signatures.push_back(i);
    if (smtp::equals_nocase(name, "From")) from_fields.push_back(i);
  }
  total = signatures.size();
  if (signatures.size() <= max) return signatures;
  // (Only past the limit: the From's values unfolded, its domains parsed.)
  std::vector<std::string> from;
  for (const auto i : from_fields) from.push_back(smtp::header_field_value(fields[i]));
  std::string problem;
  const auto authors = author_domains(from, problem);
  std::vector<std::size_t> chosen, others;
  for (const auto i : signatures) {
    std::string error;
    const std::string value = authors ? smtp::header_field_value(fields[i]) : std::string();  // (the tags view it)
    const auto tags = authors ? parse_dkim_tags(value, error) : std::nullopt;
    const auto d = tags ? std::find_if(tags->begin(), tags->end(), [](const auto& t) { return t.first == "d"; })
                        : dkim_tags::const_iterator{};
    const bool aligned = tags && d != tags->end() && std::any_of(authors->begin(), authors->end(), [&](const auto& a) {
                           return may_align(smtp::to_lower(d->second), a, organizational);
                         });
    if (chosen.size() < max && aligned) chosen.push_back(i);
    else if (others.size() < max) others.push_back(i);
  }
  for (std::size_t k = 0; chosen.size() < max; ++k) chosen.push_back(others[k]);
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

}  // namespace

dkim_verifier::dkim_verifier(txt_lookup lookup, unsigned max_signatures, domain_map organizational_domain)
    : lookup_(std::move(lookup)),
      max_signatures_(max_signatures),
      organizational_domain_(std::move(organizational_domain)),
      keys_(std::make_unique<dkim_key_cache>()) {
  sha256();  // (fails here, at start-up, if ever)
}

dkim_verifier::~dkim_verifier() = default;

dkim_results dkim_verifier::verify_now(const message_store& message, std::optional<std::int64_t> now) const {
  using kind = dkim_signature::kind;
  std::vector<signature_state> sigs;
  std::vector<std::unique_ptr<body_hasher>> hashers;
  std::size_t past_limit = 0;  // signatures not evaluated: counted, not verified nor kept

  const auto decide = [](signature_state& s, kind k, std::string problem) {
    s.result.result = k;
    s.result.problem = std::move(problem);
    s.decided = true;
  };
  // Once the header is read: the signatures, each parsed, and a body hasher for each way the body is wanted.
  const auto read_signatures = [&](const std::vector<std::string>& fields) {
    std::size_t total = 0;
    const auto chosen = signatures_to_evaluate(fields, max_signatures_, organizational_domain_, total);
    past_limit = total - chosen.size();
    for (const auto i : chosen) {
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

  // The keys of several signatures, asked for together: one after the other,
  // five whose keys never answered held a check thread five [dns] timeouts
  // (and eight such messages every check thread).
  std::set<std::string> names;
  for (const auto& s : sigs)
    if (!s.decided) names.insert(dkim_key_name(s.tags));
  std::map<std::string, dns::answer> fetched;
  if (names.size() > 1) fetched = together_(lookup_, names);
  const txt_lookup lookup = [&](const std::string& name) {
    const auto answer = fetched.find(name);
    return answer != fetched.end() ? answer->second : lookup_(name);
  };
  dkim_results out;
  for (auto& s : sigs) {
    if (!s.decided) {
      // The key (§6.1.2).
      auto found = find_dkim_key(lookup, *keys_, s.tags);
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
                   " not evaluated (limit " + std::to_string(max_signatures_) + ")";
    out.push_back(std::move(rest));
  }
  return out;
}

}  // namespace portcullis::checks
