// What the sender checks found, as plain values: the session keeps them in
// its transaction, policies read them (tx.spf), and the
// Authentication-Results header (RFC 8601) reports them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace portcullis::checks {

struct spf_result {
  enum class kind { none, neutral, pass, fail, softfail, temperror, permerror };
  kind result = kind::none;
  std::string domain;       // the domain checked: the sender's, or the HELO name for <>
  bool helo = false;        // the HELO identity was checked (null sender, RFC 7208 §2.4)
  std::string explanation;  // fail: the domain's explanation, one printable line; else empty
  std::string problem;      // temperror, permerror, none: why, for logs and the header's comment
};

// The result names of RFC 7208 §2.6 (and RFC 8601 §2.7.2).
constexpr std::string_view to_string(spf_result::kind k) {
  switch (k) {
    case spf_result::kind::none: return "none";
    case spf_result::kind::neutral: return "neutral";
    case spf_result::kind::pass: return "pass";
    case spf_result::kind::fail: return "fail";
    case spf_result::kind::softfail: return "softfail";
    case spf_result::kind::temperror: return "temperror";
    case spf_result::kind::permerror: return "permerror";
  }
  return "?";
}

// One DKIM signature's verification (RFC 6376; results of RFC 8601 §2.7.1).
struct dkim_signature {
  enum class kind {
    pass,       // the signature and the body hash verify
    fail,       // they do not (the message changed, or a wrong key)
    neutral,    // not evaluated: the one entry that counts the signatures past [checks] dkim_signatures
    temperror,  // the key could not be fetched now (DNS timeout or failure)
    permerror,  // a broken signature, no key, a revoked or unusable key; a header section too large to read
  };
  kind result = kind::neutral;
  std::string domain;    // d= (empty for an entry that stands for no one signature: those not evaluated, or all)
  std::string selector;  // s=
  std::string problem;   // why, unless pass
};

constexpr std::string_view to_string(dkim_signature::kind k) {
  switch (k) {
    case dkim_signature::kind::pass: return "pass";
    case dkim_signature::kind::fail: return "fail";
    case dkim_signature::kind::neutral: return "neutral";
    case dkim_signature::kind::temperror: return "temperror";
    case dkim_signature::kind::permerror: return "permerror";
  }
  return "?";
}

// In the message's order; empty: no signature. At most [checks]
// dkim_signatures entries, and one more, neutral, counting the signatures
// past them (none of them parsed); or one permerror entry, with no domain,
// when the header section is larger than max_checked_header.
using dkim_results = std::vector<dkim_signature>;

// The DMARC evaluation of a message (RFC 7489; results of RFC 8601 §2.7.1).
struct dmarc_result {
  enum class kind {
    none,       // the From domain publishes no DMARC policy (nor does its organizational domain)
    pass,       // SPF or DKIM passed for a domain aligned with the From domain
    fail,       // neither did
    temperror,  // the policy could not be fetched now (DNS timeout or failure)
    permerror,  // no usable From domain (none, several, malformed), or a broken record
  };
  enum class policy_kind { unspecified, none, quarantine, reject };
  kind result = kind::none;
  std::string domain;      // the From domain (RFC 5322.From, lower-cased); empty if there is none
  std::string org_domain;  // its organizational domain (the Public Suffix List, §3.2)
  bool org_record = false;             // the policy is the organizational domain's (§6.6.3)
  policy_kind policy = policy_kind::unspecified;       // p=, or sp= for a subdomain under the org's record
  policy_kind disposition = policy_kind::unspecified;  // what the domain asks for this message: none if it
                                                       // passed, else the policy (one step milder when pct= left it out)
  unsigned pct = 100;
  bool spf_aligned = false;
  bool dkim_aligned = false;
  std::string problem;  // why, for temperror, permerror and none
};

constexpr std::string_view to_string(dmarc_result::kind k) {
  switch (k) {
    case dmarc_result::kind::none: return "none";
    case dmarc_result::kind::pass: return "pass";
    case dmarc_result::kind::fail: return "fail";
    case dmarc_result::kind::temperror: return "temperror";
    case dmarc_result::kind::permerror: return "permerror";
  }
  return "?";
}

// The validation of the ARC chain a message arrives with (RFC 8617 §5.2;
// results of RFC 8601's arc method).
struct arc_result {
  enum class kind { none, pass, fail };
  kind result = kind::none;
  unsigned instances = 0;  // ARC sets in the chain
  std::vector<std::string> sealers;  // the d= of each ARC-Seal, the first intermediary first
  std::string problem;     // why, unless pass
};

constexpr std::string_view to_string(arc_result::kind k) {
  switch (k) {
    case arc_result::kind::none: return "none";
    case arc_result::kind::pass: return "pass";
    case arc_result::kind::fail: return "fail";
  }
  return "?";
}

// "" for unspecified (no policy), else the p= value's name.
constexpr std::string_view to_string(dmarc_result::policy_kind p) {
  switch (p) {
    case dmarc_result::policy_kind::unspecified: return "";
    case dmarc_result::policy_kind::none: return "none";
    case dmarc_result::policy_kind::quarantine: return "quarantine";
    case dmarc_result::policy_kind::reject: return "reject";
  }
  return "?";
}

}  // namespace portcullis::checks
