// What the DKIM verifier and signer share of OpenDKIM: its header (which
// uses C's _Bool), a handle that frees itself, and a message fed to it.
#pragma once

#include "store/message_store.hpp"

#define _Bool bool
extern "C" {
#include <opendkim/dkim.h>
}
#undef _Bool

namespace portcullis::checks {

// One signing or verifying handle, freed with its scope.
struct dkim_handle {
  DKIM* dkim = nullptr;
  dkim_handle() = default;
  dkim_handle(const dkim_handle&) = delete;
  dkim_handle& operator=(const dkim_handle&) = delete;
  ~dkim_handle() {
    if (dkim) dkim_free(dkim);
  }
};

// Feeds the message, exactly as stored, to `dkim`: the header fields one by
// one (each with its folding, without its final CRLF), the end of the
// header, then the body as it came. Throws std::runtime_error when a spilled
// message cannot be read. The caller ends with dkim_eom.
void feed_message(DKIM* dkim, const message_store& message);

}  // namespace portcullis::checks
