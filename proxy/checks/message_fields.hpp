// Header fields of a stored message, as the checks read them.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/message_store.hpp"

namespace portcullis::checks {

// The most of a header section the checks of a received message read (the
// DKIM and ARC verifiers, DMARC's From): what they keep of it is held in
// memory, outside server.message_memory_budget, so a message whose header
// section goes on past this is not checked (DKIM permerror, ARC fail, DMARC
// unusable_from), whatever its size; its body costs nothing either way. Real
// header sections are a few KB, a 50-set ARC chain some hundreds. (The same
// size as the policy engine's max_head_read in bindings/job_objects.cpp, for
// another purpose: past that one, a policy reads the whole message instead.)
inline constexpr std::size_t max_checked_header = std::size_t{1} << 20;

// Author domains evaluated per message (RFC 7489 §6.6.1: each is looked up
// and evaluated); a From naming more is unusable. (DMARCbis's "Denial of
// DMARC Processing Attacks": a bound on them keeps the lookups bounded.)
inline constexpr std::size_t max_author_domains = 8;

// The unfolded values of every field called `name` (any case), in order.
// Reads only the header section, at most `max_header` bytes of it: nullopt
// when it goes on past them (what was read is dropped). Throws
// std::runtime_error when a spilled message cannot be read.
std::optional<std::vector<std::string>> header_values(const message_store& message, std::string_view name,
                                                      std::size_t max_header);

// Every distinct author domain (RFC 7489 §3.1, §6.6.1) the From fields'
// values name, in order, lower-cased and in A-labels (libidn2, as
// a_label_domain), a final root dot dropped ("paypal.test." is the DNS name
// paypal.test, RFC 1034 §3.1, and shown as it). nullopt and why in `problem`
// when the From gives none to evaluate: no From field, a value that is no
// mailbox list, an address literal or a name IDNA2008 refuses among them, or
// more than `max_domains` distinct domains.
std::optional<std::vector<std::string>> author_domains(const std::vector<std::string>& from_values,
                                                       std::string& problem,
                                                       std::size_t max_domains = max_author_domains);

// The one author domain of a message to sign (the DKIM signer): one From
// field whose mailboxes are all of one domain, lower-cased, in A-labels (an
// address literal as written); else nullopt and why in `problem`.
std::optional<std::string> author_domain(const std::vector<std::string>& from_values, std::string& problem);

}  // namespace portcullis::checks
