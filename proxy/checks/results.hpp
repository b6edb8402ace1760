// What the sender checks found, as plain values: the session keeps them in
// its transaction, policies read them (tx.spf), and the
// Authentication-Results header (RFC 8601) reports them.
#pragma once

#include <string>
#include <string_view>

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

}  // namespace portcullis::checks
