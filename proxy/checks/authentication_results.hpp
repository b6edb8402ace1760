// The Authentication-Results header field (RFC 8601): the one we add, and
// the ones a message arrives with that claim to be ours. Pure: bytes in,
// bytes and ranges out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "checks/results.hpp"

namespace portcullis::checks {

// "Authentication-Results: <authserv_id>;\r\n\tspf=pass smtp.mailfrom=example.com;\r\n\tdkim=pass
// header.d=example.com header.s=sel;\r\n\tdmarc=pass (p=reject dis=none)
// header.from=example.com\r\n": one result a folded line (§2.2),
// one per DKIM signature ("dkim=none" for a message without; one without
// header.d and header.s for an entry that stands for no one signature),
// "none" when no check was made. A result that is not pass says why in a reason
// (§2.3), printable ASCII, quoted, shortened.
std::string authentication_results_header(std::string_view authserv_id, const std::optional<spf_result>& spf,
                                          const std::optional<dkim_results>& dkim = std::nullopt,
                                          const std::optional<dmarc_result>& dmarc = std::nullopt,
                                          const std::optional<arc_result>& arc = std::nullopt);

// CFWS (RFC 5322 §3.2.2: white space, folding, nested comments and their
// quoted pairs) read a byte at a time, across pieces.
struct cfws_reader {
  int depth = 0;         // of comments
  bool escaped = false;  // a quoted pair's backslash just read
  bool takes(char c);    // whether `c` is still CFWS (and read)
};

// Finds, in a message's header section fed in pieces, the
// Authentication-Results fields whose authserv-id is ours, so that they can
// be removed before ours is added: a downstream reader trusts ours, and
// anyone can write one (RFC 8601 §5, §7.1). Of a field only its name and
// the first bytes from its authserv-id on are kept while it is read, however
// long it is: the CFWS before the id, which may be as long as the sender
// likes (§2.2), is skipped as it goes by, so that it cannot hide an id of ours.
class claimed_results_finder {
 public:
  using range = std::pair<std::uint64_t, std::uint64_t>;  // [begin, end) offsets in the message

  explicit claimed_results_finder(std::string_view authserv_id);

  // The next bytes of the message; false once the header section has ended
  // (the rest need not be fed).
  bool feed(std::string_view bytes);
  // The end of the message (a header section without a body ends there).
  void finish();
  const std::vector<range>& claimed() const { return claimed_; }

 private:
  void end_field(std::uint64_t end);  // the current field ends before `end`
  void keep(std::string_view piece);  // the current field's next bytes: what of them end_field needs

  std::string authserv_id_;
  std::vector<range> claimed_;
  std::uint64_t offset_ = 0;        // of the next byte fed
  std::uint64_t field_start_ = 0;
  bool in_field_ = false;
  bool at_line_start_ = true;
  bool saw_cr_ = false;
  bool done_ = false;
  std::string field_;               // the current field's name, colon and first bytes from its authserv-id on
  // Where keep() is in the current field: its name, the CFWS before the id, or the id and what follows it.
  enum class part { name, cfws, id } part_ = part::name;
  cfws_reader cfws_;
};

// The authserv-id an Authentication-Results field value starts with (after
// CFWS, RFC 8601 §2.2), or empty.
std::string authserv_id_of(std::string_view value);

// What an Authentication-Results value (RFC 8601 §2.2: the authserv-id,
// then the results) reports as passed by the methods DMARC builds on, in
// order: (method, domain) with method "dkim" (the domain of header.d, else
// of header.i), "spf" (of smtp.mailfrom, else smtp.helo) or "dmarc"
// (header.from), both lower-cased; each pair once, at most `max` of them.
// Comments and folding are skipped; where the value breaks the grammar, the
// results before that point are what it reports.
using reported_pass = std::pair<std::string, std::string>;
std::vector<reported_pass> reported_passes(std::string_view value, std::size_t max);

}  // namespace portcullis::checks
