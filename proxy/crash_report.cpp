#include "crash_report.hpp"

#include <execinfo.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace portcullis {

namespace {

constexpr int fatal_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

// Only async-signal-safe calls from here on: write(2), and backtrace, whose
// one allocation (loading libgcc's unwinder) install_crash_report made early.
void put(const char* text) {
  for (std::size_t left = std::strlen(text); left > 0;) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<std::size_t>(n);
  }
}

void put_number(long value) {
  char digits[24];
  char* p = digits + sizeof digits;
  *--p = '\0';
  const bool negative = value < 0;
  unsigned long v = negative ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value);
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  if (negative) *--p = '-';
  put(p);
}

void on_fatal_signal(int signo) {
  put("portcullis: fatal signal ");
  put_number(signo);
  put(" (");
  put(sigabbrev_np(signo) != nullptr ? sigabbrev_np(signo) : "?");
  put(") in process ");
  put_number(static_cast<long>(getpid()));
  put(", thread ");
  put_number(static_cast<long>(syscall(SYS_gettid)));
  put("; its native stack:\n");
  void* frames[64];
  backtrace_symbols_fd(frames, backtrace(frames, 64), STDERR_FILENO);
  // The default action again (SA_RESETHAND), taken when the handler returns.
  raise(signo);
}

}  // namespace

// ASan and UBSan (the sanitized build) report a fatal signal with symbols themselves.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif

void install_crash_report() {
  if (sanitized) return;
  void* warm[1];
  backtrace(warm, 1);
  struct sigaction action {};
  action.sa_handler = on_fatal_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND | SA_ONSTACK;
  for (const int signo : fatal_signals) sigaction(signo, &action, nullptr);
}

}  // namespace portcullis
