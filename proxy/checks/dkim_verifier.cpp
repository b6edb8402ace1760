#include "checks/dkim_verifier.hpp"

#include <arpa/nameser.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "dns/resolver.hpp"
#include "smtp/message_header.hpp"


// OpenDKIM's header uses C's _Bool.
#define _Bool bool
extern "C" {
#include <opendkim/dkim.h>
}
#undef _Bool

namespace portcullis::checks {

namespace {

// One verifying handle, freed with its scope.
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
void feed_message(DKIM* dkim, const message_store& message) {
  smtp::header_reader header;
  const auto on_field = [&](std::string_view field) {
    field.remove_suffix(field.ends_with("\r\n") ? 2 : 1);  // (a field handed over ends with its line end)
    dkim_header(dkim, reinterpret_cast<u_char*>(const_cast<char*>(field.data())), field.size());
  };
  message_store::reader in(message);
  for (auto chunk = in.next(); !chunk.empty(); chunk = in.next()) {
    std::size_t used = 0;
    if (!header.done()) {
      used = header.feed(chunk, on_field);
      if (header.done()) dkim_eoh(dkim);
    }
    if (used < chunk.size())
      dkim_body(dkim, reinterpret_cast<u_char*>(const_cast<char*>(chunk.data() + used)), chunk.size() - used);
  }
  if (in.failed()) throw std::runtime_error("the message could not be read: " + in.error());
  if (!header.done()) {  // a message of header fields only
    header.finish(on_field);
    dkim_eoh(dkim);
  }
}

// OpenDKIM's key lookups, made through our resolver: it parses replies
// itself, so it gets the reply packet. The lookup is made at "start" (this
// thread blocks there); "waitreply" hands the result over, "cancel" frees it.
struct key_query {
  std::size_t bytes = 0;
  bool failed = false;  // timeout, SERVFAIL, no usable reply: KEYFAIL (temperror)
};

// A reply saying NXDOMAIN to `name`, TXT, for a name the resolver refused
// to ask (it cannot exist): OpenDKIM reads the question back from it.
std::string nxdomain_reply(const std::string& name) {
  std::string p = {0, 0, char(0x81), char(0x83), 0, 1, 0, 0, 0, 0, 0, 0};  // QR RD RA, rcode 3, qdcount 1
  std::size_t start = 0;
  while (start < name.size()) {
    auto dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    const auto label = std::min<std::size_t>(dot - start, 63);
    p += static_cast<char>(label);
    p += name.substr(start, label);
    start = dot + 1;
  }
  p += '\0';
  p += std::string{0, char(ns_t_txt), 0, char(ns_c_in)};
  return p;
}

int query_start(void* service, int type, unsigned char* query, unsigned char* buf, size_t buflen, void** qh) {
  auto* resolver = static_cast<dns::resolver*>(service);
  auto q = new key_query;
  *qh = q;
  const std::string name(reinterpret_cast<const char*>(query));
  if (type != ns_t_txt) {
    q->failed = true;
    return 0;
  }
  const auto answer = resolver->lookup_sync(name, dns::rr_type::txt);
  std::string packet = answer.packet;
  if (answer.what == dns::answer::status::nxdomain && packet.empty()) packet = nxdomain_reply(name);
  const bool usable = (answer.ok() || answer.what == dns::answer::status::nxdomain) && !packet.empty() &&
                      packet.size() <= buflen;
  if (!usable) {
    q->failed = true;
    return 0;
  }
  std::memcpy(buf, packet.data(), packet.size());
  q->bytes = packet.size();
  return 0;
}

int query_waitreply(void*, void* qh, struct timeval*, size_t* bytes, int* error, int* dnssec) {
  auto* q = static_cast<key_query*>(qh);
  if (error) *error = 0;
  if (dnssec) *dnssec = DKIM_DNSSEC_UNKNOWN;
  if (q->failed) return DKIM_DNS_ERROR;
  *bytes = q->bytes;
  return DKIM_DNS_SUCCESS;
}

int query_cancel(void*, void* qh) {
  delete static_cast<key_query*>(qh);
  return DKIM_DNS_SUCCESS;
}

// Signatures past the limit are not evaluated (no key lookup, no hashing).
DKIM_CBSTAT limit_signatures(DKIM* dkim, DKIM_SIGINFO** sigs, int nsigs) {
  const auto max = *static_cast<const unsigned*>(dkim_get_user_context(dkim));
  for (int i = static_cast<int>(max); i < nsigs; ++i) dkim_sig_ignore(sigs[i]);
  return DKIM_CBSTAT_CONTINUE;
}

dkim_signature::kind kind_of(DKIM_SIGINFO* sig) {
  using k = dkim_signature::kind;
  const unsigned flags = dkim_sig_getflags(sig);
  if (flags & DKIM_SIGFLAG_IGNORE) return k::neutral;
  if ((flags & DKIM_SIGFLAG_PASSED) && dkim_sig_getbh(sig) == DKIM_SIGBH_MATCH) return k::pass;
  switch (dkim_sig_geterror(sig)) {
    case DKIM_SIGERROR_KEYFAIL: return k::temperror;
    case DKIM_SIGERROR_OK:  // verified, but the body hash differs
    case DKIM_SIGERROR_BADSIG:
      return (flags & DKIM_SIGFLAG_PROCESSED) ? k::fail : k::permerror;
    default: return k::permerror;  // the signature, the key or the reply is unusable
  }
}

std::string problem_of(DKIM_SIGINFO* sig, dkim_signature::kind kind, unsigned max) {
  switch (kind) {
    case dkim_signature::kind::pass: return "";
    case dkim_signature::kind::neutral: return "not evaluated: more than " + std::to_string(max) + " signatures";
    default: break;
  }
  const int error = dkim_sig_geterror(sig);
  if (error == DKIM_SIGERROR_OK && dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH) return "body hash did not verify";
  const char* text = dkim_sig_geterrorstr(error);
  return text ? text : "error " + std::to_string(error);
}

std::string text_of(const unsigned char* s) { return s ? reinterpret_cast<const char*>(s) : ""; }

}  // namespace

struct dkim_verifier::library {
  DKIM_LIB* lib = nullptr;
  ~library() {
    if (lib) dkim_close(lib);
  }
};

dkim_verifier::dkim_verifier(std::shared_ptr<dns::resolver> resolver, unsigned max_signatures)
    : resolver_(std::move(resolver)), max_signatures_(max_signatures), lib_(std::make_unique<library>()) {
  lib_->lib = dkim_init(nullptr, nullptr);
  if (lib_->lib == nullptr) throw std::runtime_error("OpenDKIM did not start (dkim_init)");
  // Its resolver is ours: it neither makes one (init) nor frees ours as if it were its own (close).
  dkim_dns_set_init(lib_->lib, [](void** service) { return *service != nullptr ? 0 : -1; });
  dkim_dns_set_close(lib_->lib, [](void*) {});
  dkim_dns_set_query_service(lib_->lib, resolver_.get());
  dkim_dns_set_query_start(lib_->lib, query_start);
  dkim_dns_set_query_waitreply(lib_->lib, query_waitreply);
  dkim_dns_set_query_cancel(lib_->lib, query_cancel);
  dkim_set_prescreen(lib_->lib, limit_signatures);
  // Header fields as received, with their folding, are what the signer signed (RFC 6376 §3.4).
  unsigned int flags = DKIM_LIBFLAGS_FIXCRLF;
  dkim_options(lib_->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
}

dkim_verifier::~dkim_verifier() = default;

dkim_results dkim_verifier::verify_now(const message_store& message) const {
  DKIM_STAT status = DKIM_STAT_OK;
  dkim_handle h;
  h.dkim = dkim_verify(lib_->lib, reinterpret_cast<const unsigned char*>("portcullis"), nullptr, &status);
  if (h.dkim == nullptr) throw std::runtime_error(std::string("OpenDKIM: ") + dkim_getresultstr(status));
  unsigned max = max_signatures_;
  dkim_set_user_context(h.dkim, &max);

  feed_message(h.dkim, message);
  dkim_eom(h.dkim, nullptr);

  DKIM_SIGINFO** sigs = nullptr;
  int nsigs = 0;
  dkim_results out;
  if (dkim_getsiglist(h.dkim, &sigs, &nsigs) != DKIM_STAT_OK) return out;
  for (int i = 0; i < nsigs; ++i) {
    dkim_signature s;
    s.result = kind_of(sigs[i]);
    s.domain = text_of(dkim_sig_getdomain(sigs[i]));
    s.selector = text_of(dkim_sig_getselector(sigs[i]));
    s.problem = problem_of(sigs[i], s.result, max_signatures_);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace portcullis::checks
