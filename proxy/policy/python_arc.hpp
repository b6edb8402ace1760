// The ARC engine (checks/arc_engine.hpp) on dkimpy, in the embedded
// interpreter: portcullis._arc, called with the GIL taken on the calling
// pool thread; its key lookups go through the daemon's resolver (pc.dns).
#pragma once

#include "checks/arc_engine.hpp"

namespace portcullis {

class python_arc final : public checks::arc_engine {
 public:
  python_arc();  // starts the interpreter if need be
  checks::arc_result verify_now(const message_store& message) override;
  std::string seal_now(std::string_view prefix, const message_store& message, const checks::arc_key& key,
                       const std::string& authserv_id) override;
};

}  // namespace portcullis
