#include "net/session_executor.hpp"

#include <vector>

namespace portcullis::after_strand {

namespace {
thread_local unsigned depth = 0;       // session_executor dispatches running on this thread
thread_local bool running = false;     // the outermost one's tasks are being run
thread_local std::vector<std::unique_ptr<task>> pending;
thread_local std::vector<std::unique_ptr<task>> batch;  // the tasks being run (its storage kept, as pending's)

// Runs the tasks pushed during the dispatch that just ended, and any they
// push in turn (a task that resumes a session may hand over its next hook:
// it runs here, after this one, not nested in it).
void run_pending() {
  running = true;
  struct done {
    ~done() {
      batch.clear();  // (after a task threw: the rest of its batch is dropped, never run later)
      running = false;
    }
  } reset;
  while (!pending.empty()) {
    batch.swap(pending);  // pending takes the empty batch's storage: no allocation a push
    for (auto& t : batch) t->run();
    batch.clear();
  }
}
}  // namespace

bool in_dispatch() { return depth > 0; }

void push(std::unique_ptr<task> t) { pending.push_back(std::move(t)); }

void enter() { ++depth; }

void leave() {
  if (--depth == 0 && !running && !pending.empty()) run_pending();
}

void abandon() { --depth; }

}  // namespace portcullis::after_strand
