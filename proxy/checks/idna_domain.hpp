// A domain name in the form DNS and the sender checks use for an
// internationalized one: A-labels (RFC 5890 §2.3.2.1). SPF (RFC 7208 §4.3)
// and DMARC (RFC 7489 §6.6.3, RFC 8616 §4-5) look names up, and compare
// them, as A-labels; an SMTPUTF8 sender or From field may give U-labels.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace portcullis::checks {

// `domain` in A-labels, by libidn2: IDNA2008 with the UTS #46
// non-transitional mapping (ß and ς stay, as IDNA2008 has them; case and
// compatibility forms are mapped), its input normalized to NFC first. A name
// all ASCII comes back as it is (it is already in A-labels, or not an IDN);
// nullopt for one IDNA2008 refuses (a disallowed code point, a label that
// does not convert, bytes that are not UTF-8).
std::optional<std::string> a_label_domain(std::string_view domain);

}  // namespace portcullis::checks
