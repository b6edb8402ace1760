#include "checks/spf_checker.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "checks/idna_domain.hpp"
#include "checks/spf_dns_layer.hpp"
#include "dns/resolver.hpp"
#include "net/network.hpp"

namespace portcullis::checks {

namespace {

// Explanations reach a reply as one printable ASCII line (RFC 7208 §6.2:
// the domain's text is untrusted), at most this long.
constexpr std::size_t max_explanation = 200;

// libspf2's fatal-error handler must not return, and its default abort()s
// the daemon: a throw unwinds to check_now, which answers temperror.
struct libspf2_fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// GNU's noreturn, as libspf2 declares the pointer: clang counts it in the type.
__attribute__((noreturn)) void on_libspf2_error(const char* file, int line, const char* message) {
  throw libspf2_fault(std::string("libspf2: ") + (message ? message : "?") + " (" + (file ? file : "?") + ":" +
                      std::to_string(line) + ")");
}
void on_libspf2_message(const char*, int, const char*) {}  // warnings, info, debug: not ours to print

// SPF_request_query_mailfrom without its first step, which passes a
// loopback client unasked ("localhost is always allowed"): the rest of it,
// step by step through libspf2's public functions (spf_request.c).
SPF_errcode_t query_mailfrom(SPF_request_t* request, SPF_response_t** response) {
  *response = SPF_response_new(request);
  if (*response == nullptr) return SPF_E_NO_MEMORY;
  request->cur_dom = request->use_helo ? request->helo_dom : request->env_from_dp;  // (SPF_request_prepare)
  SPF_record_t* record = nullptr;
  SPF_errcode_t err = SPF_server_get_record(request->spf_server, request, *response, &record);
  if (err != SPF_E_SUCCESS) {
    if (record != nullptr) SPF_record_free(record);
    SPF_i_done(*response, (*response)->result, (*response)->reason, (*response)->err);
    return err;
  }
  (*response)->spf_record_exp = record;
  err = SPF_record_interpret(record, request, *response, 0);
  SPF_record_free(record);
  return err;
}

void install_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    SPF_error_handler = on_libspf2_error;
    SPF_warning_handler = on_libspf2_message;
    SPF_info_handler = on_libspf2_message;
    SPF_debug_handler = on_libspf2_message;
  });
}

spf_result::kind kind_of(SPF_result_t r) {
  switch (r) {
    case SPF_RESULT_PASS: return spf_result::kind::pass;
    case SPF_RESULT_FAIL: return spf_result::kind::fail;
    case SPF_RESULT_SOFTFAIL: return spf_result::kind::softfail;
    case SPF_RESULT_NEUTRAL: return spf_result::kind::neutral;
    case SPF_RESULT_NONE: return spf_result::kind::none;
    case SPF_RESULT_TEMPERROR: return spf_result::kind::temperror;
    default: return spf_result::kind::permerror;
  }
}

// The domain an SPF check is about: the sender's, or for <> the HELO name (§2.4).
std::string identity_domain(std::string_view helo, const smtp::address& sender, bool& is_helo) {
  is_helo = sender.local.empty() && sender.domain.empty();
  return is_helo ? std::string(helo) : sender.domain;
}

// RFC 7208 §4.3: a domain that is not a multi-label name is "none", without a lookup.
bool checkable_domain(const std::string& d) {
  if (d.empty() || d.front() == '[' || d.find('.') == std::string::npos) return false;
  return dns::valid_query_name(d);
}

// libspf2's server, one per thread, kept from check to check: making one
// asks the system for the host name (a system call) and compiles its
// default explanation and local policy, a fifth of a cached check. Its DNS
// layer points at the check that runs (`layer.hook`); the checker's own
// settings are set on it for each check (a reload's checker has others).
// After a fault inside libspf2 it is made anew.
class thread_server {
 public:
  thread_server() = default;
  thread_server(const thread_server&) = delete;
  thread_server& operator=(const thread_server&) = delete;
  ~thread_server() { drop(); }

  SPF_server_t* get(spf_evaluation& e) {
    if (server_ == nullptr) {
      layer_ = spf_dns_layer(e);
      server_ = SPF_server_new_dns(&layer_, 0);
      if (server_ == nullptr) throw libspf2_fault("SPF_server_new_dns failed");
      // No default explanation (libspf2's points at a dead web site): only a domain's own exp= text.
      SPF_response_t* exp_response = nullptr;
      SPF_server_set_explanation(server_, "", &exp_response);
      if (exp_response) SPF_response_free(exp_response);
    }
    layer_.hook = &e;
    return server_;
  }
  void done() { layer_.hook = nullptr; }  // (the check it pointed at ends)
  void drop() {
    if (server_) SPF_server_free(server_);
    server_ = nullptr;
  }

 private:
  SPF_dns_server_t layer_{};  // (the server points at it: it lives as long)
  SPF_server_t* server_ = nullptr;
};
thread_local thread_server this_thread_server;

struct libspf2_objects {
  SPF_request_t* request = nullptr;
  SPF_response_t* response = nullptr;
  libspf2_objects() = default;
  libspf2_objects(const libspf2_objects&) = delete;
  libspf2_objects& operator=(const libspf2_objects&) = delete;
  ~libspf2_objects() {
    if (response) SPF_response_free(response);
    if (request) SPF_request_free(request);
  }
};

void set_client(SPF_request_t* request, const asio::ip::address& client) {
  if (client.is_v4()) {
    const auto bytes = client.to_v4().to_bytes();
    in_addr a{};
    std::memcpy(&a, bytes.data(), sizeof a);
    SPF_request_set_ipv4(request, a);
  } else {
    const auto bytes = client.to_v6().to_bytes();
    in6_addr a{};
    std::memcpy(&a, bytes.data(), sizeof a);
    SPF_request_set_ipv6(request, a);
  }
}

// The lookup holds the resolver: it lives as long as the checker.
spf_checker::dns_lookup lookup_on(std::shared_ptr<dns::resolver> resolver) {
  return [resolver = std::move(resolver)](const std::string& name, dns::rr_type type,
                                         std::chrono::steady_clock::time_point deadline) {
    return resolver->lookup_sync(name, type, deadline);
  };
}

}  // namespace

spf_checker::spf_checker(std::shared_ptr<dns::resolver> resolver, std::string receiver,
                         const std::vector<std::string>& skip, spf_limits limits)
    : spf_checker(lookup_on(std::move(resolver)), std::move(receiver), skip, limits) {}

spf_checker::spf_checker(dns_lookup lookup, std::string receiver, const std::vector<std::string>& skip,
                         spf_limits limits)
    : lookup_(std::move(lookup)), receiver_(std::move(receiver)), skip_(skip), limits_(limits) {
  install_handlers();
}

spf_result spf_checker::check_now(const asio::ip::address& client_address, std::string_view helo,
                                  const smtp::address& sender) const {
  spf_result out;
  out.domain = identity_domain(helo, sender, out.helo);
  // §4.3: an internationalized domain (an SMTPUTF8 sender or HELO) is checked
  // as A-labels; one that does not convert is malformed: "none". The result
  // names the A-label form, as DMARC aligns with it.
  if (auto ascii = a_label_domain(out.domain)) {
    out.domain = std::move(*ascii);
  } else {
    out.problem = "not a valid internationalized domain name (IDNA2008): " + out.domain;
    return out;  // none (§4.3)
  }
  if (!checkable_domain(out.domain)) {
    out.problem = out.domain.empty() ? "no domain to check" : "not a domain name: " + out.domain;
    return out;  // none (§4.3)
  }
  const auto client = unmapped(client_address);  // an IPv4-mapped IPv6 client is checked as IPv4
  if (skip_.contains(client)) {
    out.problem = "not checked: the client is in [checks] spf_skip_networks";
    return out;
  }
  spf_evaluation e(lookup_, limits_, client);
  try {
    libspf2_objects o;
    SPF_server_t* const server = this_thread_server.get(e);
    SPF_server_set_rec_dom(server, receiver_.c_str());
    SPF_server_set_max_dns_mech(server, static_cast<int>(limits_.dns_terms));
    SPF_server_set_max_dns_mx(server, static_cast<int>(limits_.mx_hosts));
    SPF_server_set_max_dns_ptr(server, static_cast<int>(limits_.mx_hosts));
    o.request = SPF_request_new(server);
    if (o.request == nullptr) throw libspf2_fault("SPF_request_new failed");
    e.request = o.request;
    set_client(o.request, client);
    // HELO first, so that <> is checked as postmaster@HELO (§2.4).
    // (%{h} of an internationalized HELO name: its A-labels, when it has them.)
    const std::string helo_text = a_label_domain(helo).value_or(std::string(helo));
    if (!helo_text.empty()) SPF_request_set_helo_dom(o.request, helo_text.c_str());
    const std::string from = out.helo ? "postmaster@" + out.domain : sender.local + "@" + out.domain;
    SPF_request_set_env_from(o.request, from.c_str());
    const SPF_errcode_t err = query_mailfrom(o.request, &o.response);
    if (o.response == nullptr) throw libspf2_fault("no response");
    out.result = kind_of(SPF_response_result(o.response));
    // libspf2 reports some failures only as an error code: the DNS's are
    // temporary, the rest are the record's fault (§2.6.6, §2.6.7).
    if (err != SPF_E_SUCCESS && err != SPF_E_NOT_SPF) {
      out.result = e.dns_trouble || err == SPF_E_DNS_ERROR ? spf_result::kind::temperror : spf_result::kind::permerror;
      out.problem = SPF_strerror(err);
    }
    if (e.permerror) {
      out.result = spf_result::kind::permerror;
      out.problem = *e.permerror;
    } else if (e.out_of_time) {
      out.result = spf_result::kind::temperror;
      out.problem = "the check took longer than " + std::to_string(limits_.budget.count() / 1000) + " s";
    }
    if (out.result == spf_result::kind::fail) {
      // get_exp made it one printable line: shortened here.
      if (const char* exp = SPF_response_get_explanation(o.response)) out.explanation = std::string(exp).substr(0, max_explanation);
    }
    if (out.problem.empty() && (out.result == spf_result::kind::permerror || out.result == spf_result::kind::temperror))
      out.problem = SPF_strerror(SPF_response_errcode(o.response));
  } catch (const std::exception& ex) {
    if (dynamic_cast<const libspf2_fault*>(&ex)) this_thread_server.drop();  // (the request went first)
    out.result = spf_result::kind::temperror;
    out.problem = ex.what();
    out.explanation.clear();
  }
  this_thread_server.done();
  return out;
}

}  // namespace portcullis::checks
