// What the sender checks found, as plain values: the session keeps them in
// its transaction, policies read them (tx.spf), and the
// Authentication-Results header (RFC 8601) reports them.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
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

// The author domains of a message (usually one) behind one pointer: a
// dmarc_result travels in every policy job, whose size is held within
// glibc's thread cache (policy/policy_job.hpp). A value: copies are deep.
class author_domain_list {
 public:
  author_domain_list() = default;
  explicit author_domain_list(std::vector<std::string> domains)
      : list_(domains.empty() ? nullptr : std::make_unique<std::vector<std::string>>(std::move(domains))) {}
  author_domain_list(const author_domain_list& other)
      : list_(other.list_ ? std::make_unique<std::vector<std::string>>(*other.list_) : nullptr) {}
  author_domain_list& operator=(const author_domain_list& other) {
    if (this != &other) *this = author_domain_list(other);
    return *this;
  }
  author_domain_list(author_domain_list&&) noexcept = default;
  author_domain_list& operator=(author_domain_list&&) noexcept = default;

  const std::vector<std::string>& get() const {
    static const std::vector<std::string> none;
    return list_ ? *list_ : none;
  }

 private:
  std::unique_ptr<std::vector<std::string>> list_;
};

// The DMARC evaluation of a message (RFC 7489; results of RFC 8601 §2.7.1).
// (The small fields first, together: see author_domain_list.)
struct dmarc_result {
  enum class kind {
    none,       // the From domain publishes no DMARC policy (nor does its organizational domain)
    pass,       // SPF or DKIM passed for a domain aligned with the From domain
    fail,       // neither did
    temperror,  // the policy could not be fetched now (DNS timeout or failure)
    permerror,  // a broken record; or no usable From domain (unusable_from)
  };
  enum class policy_kind { unspecified, none, quarantine, reject };
  kind result = kind::none;
  policy_kind policy = policy_kind::unspecified;       // p=, or sp= for a subdomain under the org's record
  policy_kind disposition = policy_kind::unspecified;  // what the domain asks for this message: none if it
                                                       // passed, else the policy (one step milder when pct= left it out)
  unsigned pct = 100;
  // The From domain (RFC 5322.From, lower-cased, A-labels); empty if there is
  // none. With several author domains (§6.6.1), the one whose result is
  // reported: the strictest failure (see dmarc_evaluator).
  std::string domain;
  std::string org_domain;  // its organizational domain (the Public Suffix List, §3.2)
  std::string problem;     // why, for temperror, permerror and none
  bool org_record = false;  // the policy is the organizational domain's (§6.6.3)
  bool spf_aligned = false;
  bool dkim_aligned = false;
  // The From field(s) give no domain to evaluate: none, one that is no
  // mailbox list, an address literal, a name IDNA2008 refuses, more than
  // max_author_domains domains, or a header section past
  // max_checked_header. result is permerror then, domain empty. RFC 7489
  // leaves such messages out of DMARC (§6.6.1), so a spoofed From could
  // hide behind one: unlike a broken record, a policy may refuse them.
  bool unusable_from = false;
  // fail: for every failing author domain, the newest ARC set's
  // ARC-Authentication-Results report a pass aligned with it (dmarc=pass
  // header.from=, or an SPF or DKIM pass aligned as its record's
  // aspf=/adkim= ask): what the last intermediary found when it got the
  // message, under its seal. False otherwise, and without a passing chain.
  bool arc_aligned = false;
  // Every distinct author domain the From field(s) name, in order, each
  // evaluated (at most max_author_domains); empty when unusable_from.
  author_domain_list from_domains;
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
