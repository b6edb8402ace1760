// What a process writes when it dies of a fatal signal (SIGSEGV, SIGBUS,
// SIGFPE, SIGILL, SIGABRT): a line naming the signal and its thread, then
// that thread's native stack (one frame a line: binary(+offset), resolved
// with `addr2line -e portcullis -f -C offset`), and it dies as it would have
// (the supervisor still sees the signal). With policies, Python's
// faulthandler writes each Python thread's stack first, then hands over.
// Not in a sanitized build: ASan and UBSan report with symbols themselves.
#pragma once

namespace portcullis {

// Once, early in main (workers inherit it across fork).
void install_crash_report();

}  // namespace portcullis
