// What a DKIM verifier reads: the DKIM-Signature field (RFC 6376 §3.5) and
// the key record (§3.6.1), both tag=value lists (§3.2), parsed and checked.
// Pure: text in, values out; the b=, bh= and p= values stay base64 (the
// verifier decodes them), with their whitespace removed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "checks/dkim_canon.hpp"

namespace portcullis::checks {

// A tag=value list: the tags in order, values without the whitespace around
// them. nullopt (and `error` set) for a list that breaks §3.2's grammar or
// names a tag twice.
using dkim_tags = std::vector<std::pair<std::string_view, std::string_view>>;
std::optional<dkim_tags> parse_dkim_tags(std::string_view list, std::string& error);

struct dkim_signature_fields {
  std::string algorithm;  // a=: "rsa-sha256" or "ed25519-sha256"
  std::string signature;  // b=, base64
  std::string body_hash;  // bh=, base64
  dkim_canonicalization header_canon = dkim_canonicalization::simple;  // c=
  dkim_canonicalization body_canon = dkim_canonicalization::simple;
  std::string domain;                     // d=, lower case
  std::string selector;                   // s=
  std::vector<std::string> headers;       // h=, lower case, in order
  std::string identity_domain;            // i='s domain, lower case (d= when absent)
  std::optional<std::uint64_t> length;    // l=
  std::optional<std::int64_t> timestamp;  // t=
  std::optional<std::int64_t> expires;    // x=
  // ARC (RFC 8617 §4.1): its i= is the set's instance, not an identity.
  unsigned instance = 0;
  std::string chain_status;  // an ARC-Seal's cv=: none, fail or pass
};

// The fields that carry DKIM signatures: DKIM-Signature (RFC 6376 §3.5), and
// ARC's ARC-Message-Signature and ARC-Seal (RFC 8617 §4.1.2, §4.1.3), which
// take its tags with their own differences (no v=; i= the instance; a seal
// has cv= and signs no body and no h= list).
enum class dkim_signature_kind { dkim, arc_message, arc_seal };

// RFC 8617 §4.2.1: an ARC chain has at most 50 sets.
inline constexpr unsigned max_arc_instance = 50;

// The instance an ARC-Authentication-Results value starts with (RFC 8617
// §4.1.1: "i=" 1*2DIGIT ";", with folding whitespace around its parts);
// nullopt when it does not, or it is not 1 to max_arc_instance.
std::optional<unsigned> arc_results_instance(std::string_view value);

// Parses a DKIM-Signature field's value (what follows the colon, folding
// and all). Returns the problem ("" when usable): a tag-list error, a tag
// missing or malformed, rsa-sha1 (RFC 8301 §3.1), no From in h=, an i=
// outside d=. `out.domain` and `out.selector` are set whenever present,
// so that a broken signature can still be named.
std::string parse_dkim_signature(std::string_view value, dkim_signature_fields& out,
                                 dkim_signature_kind kind = dkim_signature_kind::dkim);

// Times (§3.5 t= and x=): "" or the problem at `now` (seconds since the
// epoch): expired, timestamped more than `drift` seconds ahead, or x= < t=.
std::string check_dkim_times(const dkim_signature_fields& sig, std::int64_t now, std::int64_t drift = 300);

struct dkim_key_fields {
  enum class type { rsa, ed25519 } key_type = type::rsa;  // k=
  std::string key;       // p=, base64 ("": revoked)
  bool testing = false;  // t=y
  bool strict = false;   // t=s: i= must be d= itself
};

// Parses a key record (a TXT record's strings joined). Returns the problem
// ("" when usable): a tag-list error, v= other than DKIM1, an h= without
// sha256, an unknown k=, an s= that excludes email, no p=.
std::string parse_dkim_key(std::string_view record, dkim_key_fields& out);

}  // namespace portcullis::checks
