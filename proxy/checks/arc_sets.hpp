// The ARC sets (RFC 8617 §4.1) among a message's header fields: found by
// their instances and checked for form, and what an ARC-Seal signs. Pure:
// header fields in, values out; the verifier (checks/arc_verifier) and the
// sealer (checks/arc_sealer) share it.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "checks/dkim_fields.hpp"

namespace portcullis::checks {

// One ARC set: its three fields (indices among the header fields) and the
// two signatures' tags.
struct arc_set {
  std::size_t results = 0;            // ARC-Authentication-Results
  std::size_t message_signature = 0;  // ARC-Message-Signature
  std::size_t seal = 0;               // ARC-Seal
  dkim_signature_fields message_tags;
  dkim_signature_fields seal_tags;
};

struct arc_chain {
  std::vector<arc_set> sets;  // sets[i - 1] is instance i
  bool any = false;           // the message has ARC fields at all
  unsigned newest = 0;        // the highest instance any ARC field names
  bool ended = false;         // the newest ARC-Seal says cv=fail: no one continues the chain (§5.1.1)
  std::string problem;        // why the chain is malformed ("" when sound)
};

// The chain among `fields` (whole header fields), checked as RFC 8617 §5.2
// steps 2 to 4 ask: every field parses and names an instance from 1 to 50,
// each instance has exactly one field of each kind with no gap, the newest
// seal does not say cv=fail, and each seal's cv= fits its place (none at 1,
// pass after). `problem` says what is wrong; `sets` is then left empty.
arc_chain find_arc_chain(const std::vector<std::string>& fields);

// What the ARC-Seal of the last set signs (§5.1.1): every set's
// ARC-Authentication-Results, ARC-Message-Signature and ARC-Seal in
// relaxed canonicalization, in instance order, the last seal with its b=
// value empty and without its final CRLF.
using arc_set_fields = std::array<std::string_view, 3>;  // results, message signature, seal
std::string arc_seal_data(const std::vector<arc_set_fields>& sets);

// The fields of each of `sets` (found among `fields`), for arc_seal_data.
std::vector<arc_set_fields> arc_set_fields_of(const std::vector<std::string>& fields, const std::vector<arc_set>& sets);

}  // namespace portcullis::checks
