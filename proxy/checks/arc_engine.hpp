// ARC (RFC 8617) as the checks use it: verifying a message's chain and
// sealing it. Debian has no ARC library for C; dkimpy (python3-dkim) does
// it, in the embedded interpreter, so the engine comes from the Python
// layer (policy/python_arc.hpp) and the server hands it over. Both calls
// block (DNS, RSA in Python): pool threads make them, never an I/O thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "checks/results.hpp"
#include "store/message_store.hpp"

namespace portcullis::checks {

// Messages larger than this are neither verified nor sealed (the engine
// holds a whole message in memory, twice).
inline constexpr std::size_t max_arc_message = 16 * 1024 * 1024;

struct arc_key {
  std::string domain;    // d=
  std::string selector;  // s=
  std::string pem;       // the RSA private key (RFC 8617 §4.1.3: rsa-sha256)
};

class arc_engine {
 public:
  virtual ~arc_engine() = default;
  // The chain of the message as received.
  virtual arc_result verify_now(const message_store& message) = 0;
  // Our ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
  // CRLF-ended) for `prefix` + `message` as they go upstream, `prefix`
  // holding our Authentication-Results (its arc= result is the set's cv=);
  // empty when the chain may not be continued. Throws std::runtime_error.
  virtual std::string seal_now(std::string_view prefix, const message_store& message, const arc_key& key,
                               const std::string& authserv_id) = 0;
};

}  // namespace portcullis::checks
