// ARC (RFC 8617): the chain a message arrives with, validated (§5.2) over
// the message exactly as received, read once: the newest
// ARC-Message-Signature's body hash as the body streams by, then every
// ARC-Seal from the newest down. The signatures are DKIM's (RFC 6376), so
// the DKIM pieces do the work: tags (dkim_fields), canonicalization
// (dkim_canon), keys through our resolver (dkim_keys). Blocks on DNS: the
// checks' threads call it, never an I/O thread.
//
// (dkimpy did this before, in the embedded interpreter: a copy of each
// message outside the memory budget, nothing checked over 16 MiB, and the
// GIL taken from the policies. The tests still check our chains and seals
// against dkimpy's.)
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "checks/authentication_results.hpp"
#include "checks/dkim_keys.hpp"
#include "checks/results.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

// How long one validation may spend on key lookups in all: a chain may
// hold 50 sets, each naming keys of its own on slow servers.
inline constexpr std::chrono::milliseconds arc_lookup_budget{20000};

// Of the newest set's ARC-Authentication-Results, the passes kept (see
// verify_now): a sealer writes a few; a sender, any number.
inline constexpr std::size_t max_arc_authenticated = 16;

class arc_verifier {
 public:
  explicit arc_verifier(txt_lookup lookup, std::chrono::milliseconds budget = arc_lookup_budget);
  ~arc_verifier();
  arc_verifier(const arc_verifier&) = delete;
  arc_verifier& operator=(const arc_verifier&) = delete;

  // The chain's validation at `now` (seconds since the epoch; default: the
  // clock): none (no ARC fields), pass, or fail with the reason; a header
  // section longer than max_checked_header is not read on (fail). When it
  // passes and `newest_passes` is given, what the newest set's
  // ARC-Authentication-Results report as passed goes there
  // (reported_passes: at most max_arc_authenticated, the first ones), the
  // findings of the hop that handed the message over, under its seal: what
  // DMARC's arc_aligned is made of. Throws std::runtime_error when a
  // spilled message cannot be read.
  arc_result verify_now(const message_store& message, std::optional<std::int64_t> now = {},
                        std::vector<reported_pass>* newest_passes = nullptr) const;

 private:
  txt_lookup lookup_;
  std::chrono::milliseconds budget_;
  std::unique_ptr<dkim_key_cache> keys_;
};

}  // namespace portcullis::checks
