// The tests' second opinion on DKIM: OpenDKIM verifies a message read from
// stdin, its keys read from a file of "selector._domainkey.domain record"
// lines (OpenDKIM's file query method, so no DNS is involved). Prints one
// line per signature, top down: "RESULT DOMAIN SELECTOR" with RESULT one of
// pass fail neutral temperror permerror (RFC 8601's names).
//
//   opendkim_verify KEY_FILE < message
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#define _Bool bool  // OpenDKIM's header uses C's _Bool
extern "C" {
#include <opendkim/dkim.h>
}
#undef _Bool

namespace {

const char* result_of(DKIM_SIGINFO* sig) {
  const unsigned flags = dkim_sig_getflags(sig);
  if (flags & DKIM_SIGFLAG_IGNORE) return "neutral";
  if ((flags & DKIM_SIGFLAG_PASSED) && dkim_sig_getbh(sig) == DKIM_SIGBH_MATCH) return "pass";
  switch (dkim_sig_geterror(sig)) {
    case DKIM_SIGERROR_KEYFAIL: return "temperror";
    case DKIM_SIGERROR_OK:  // verified, but the body hash differs
    case DKIM_SIGERROR_BADSIG: return (flags & DKIM_SIGFLAG_PROCESSED) ? "fail" : "permerror";
    default: return "permerror";
  }
}

const char* text(const unsigned char* s) { return s ? reinterpret_cast<const char*>(s) : "-"; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: opendkim_verify KEY_FILE < message\n");
    return 2;
  }
  std::string message{std::istreambuf_iterator<char>(std::cin), {}};
  DKIM_LIB* lib = dkim_init(nullptr, nullptr);
  dkim_query_t method = DKIM_QUERY_FILE;
  dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYMETHOD, &method, sizeof method);
  dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_QUERYINFO, argv[1], std::char_traits<char>::length(argv[1]));
  DKIM_STAT status = DKIM_STAT_OK;
  DKIM* dkim = dkim_verify(lib, reinterpret_cast<const unsigned char*>("test"), nullptr, &status);
  if (dkim == nullptr) {
    std::fprintf(stderr, "dkim_verify: %s\n", dkim_getresultstr(status));
    return 1;
  }
  dkim_chunk(dkim, reinterpret_cast<unsigned char*>(message.data()), message.size());
  dkim_chunk(dkim, nullptr, 0);
  dkim_eom(dkim, nullptr);
  DKIM_SIGINFO** sigs = nullptr;
  int n = 0;
  if (dkim_getsiglist(dkim, &sigs, &n) == DKIM_STAT_OK) {
    for (int i = 0; i < n; ++i)
      std::printf("%s %s %s\n", result_of(sigs[i]), text(dkim_sig_getdomain(sigs[i])), text(dkim_sig_getselector(sigs[i])));
  }
  dkim_free(dkim);
  dkim_close(lib);
  return 0;
}
