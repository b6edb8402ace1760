// libspf2's DNS layer (SPF_dns_server_t), made of our resolver (or a test's
// table: spf_checker::dns_lookup): every lookup libspf2 makes for one check
// comes here, with the check's accounting (RFC 7208 §4.6.4 limits, its time
// budget, DNS trouble), and the records it is given pass our validator first.
#include "checks/spf_dns_layer.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "checks/spf_record.hpp"
#include "dns/resolver.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

spf_evaluation& evaluation_of(SPF_dns_server_t* layer) { return *static_cast<spf_evaluation*>(layer->hook); }

std::optional<dns::rr_type> our_type(ns_type t) {
  switch (t) {
    case ns_t_a: return dns::rr_type::a;
    case ns_t_aaaa: return dns::rr_type::aaaa;
    case ns_t_mx: return dns::rr_type::mx;
    case ns_t_txt: return dns::rr_type::txt;
    case ns_t_ptr: return dns::rr_type::ptr;
    default: return std::nullopt;  // type SPF (99) among them: RFC 7208 §3.1 uses TXT only
  }
}

std::string name_key(std::string_view s) {
  std::string out = smtp::to_lower(s);
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

// §4.8: an expanded name longer than 253 characters loses labels on its left until it fits.
std::string fitted(std::string name) {
  if (!name.empty() && name.back() == '.') name.pop_back();
  while (name.size() > 253) {
    const auto dot = name.find('.');
    if (dot == std::string::npos) break;
    name.erase(0, dot + 1);
  }
  return name;
}

void count_dns_term(spf_evaluation& e) {
  if (++e.dns_terms > e.limits.dns_terms && !e.permerror)
    e.permerror = "more than " + std::to_string(e.limits.dns_terms) + " DNS-querying terms (RFC 7208 §4.6.4)";
}

// One lookup with the check's accounting: its time budget, void lookups, DNS trouble.
dns::answer fetch(spf_evaluation& e, std::string name, dns::rr_type type) {
  dns::answer nothing;
  nothing.what = dns::answer::status::ok;  // NODATA: all a check past a permerror is told
  if (e.permerror) return nothing;
  if (std::chrono::steady_clock::now() >= e.deadline) {
    e.out_of_time = true;
    nothing.what = dns::answer::status::timeout;
    return nothing;
  }
  auto answer = e.lookup(fitted(std::move(name)), type, e.deadline);
  if (answer.is_void() && ++e.voids > e.limits.void_lookups && !e.permerror)
    e.permerror = "more than " + std::to_string(e.limits.void_lookups) + " lookups named nothing (RFC 7208 §4.6.4)";
  if (answer.what == dns::answer::status::timeout || answer.what == dns::answer::status::failure) e.dns_trouble = true;
  // (A lookup waits until the deadline at most: one cut short there is the budget's end.)
  if (answer.what == dns::answer::status::timeout && std::chrono::steady_clock::now() >= e.deadline) e.out_of_time = true;
  return answer;
}

// Whether `name` carries the check's any-address marker (it loses it).
bool strip_any_address(std::string& name, std::string_view marker) {
  if (!name.empty() && name.back() == '.') name.pop_back();
  const auto n = marker.size();
  if (name.size() <= n || !smtp::equals_nocase(std::string_view(name).substr(name.size() - n), marker)) return false;
  name.resize(name.size() - n);
  return true;
}

SPF_dns_rr_t* rr_of(SPF_dns_server_t* layer, const char* domain, ns_type type, const dns::answer& answer) {
  switch (answer.what) {
    case dns::answer::status::nxdomain: return SPF_dns_rr_new_init(layer, domain, type, 0, HOST_NOT_FOUND);
    case dns::answer::status::timeout:
    case dns::answer::status::failure: return SPF_dns_rr_new_init(layer, domain, type, 0, TRY_AGAIN);
    case dns::answer::status::ok: break;
  }
  const int ttl = static_cast<int>(answer.ttl);
  SPF_dns_rr_t* rr = SPF_dns_rr_new_init(layer, domain, type, ttl, answer.records.empty() ? NO_DATA : NETDB_SUCCESS);
  if (rr == nullptr) return nullptr;
  int n = 0;
  for (const auto& r : answer.records) {
    if (type == ns_t_a) {
      in_addr a{};
      if (::inet_pton(AF_INET, r.value.c_str(), &a) != 1) continue;
      if (SPF_dns_rr_buf_realloc(rr, n, sizeof a) != SPF_E_SUCCESS) break;
      rr->rr[n]->a = a;
    } else if (type == ns_t_aaaa) {
      in6_addr a{};
      if (::inet_pton(AF_INET6, r.value.c_str(), &a) != 1) continue;
      if (SPF_dns_rr_buf_realloc(rr, n, sizeof a) != SPF_E_SUCCESS) break;
      rr->rr[n]->aaaa = a;
    } else {
      // MX and PTR names (TXT goes through get_spf and get_exp, which keep every byte).
      if (r.value.find('\0') != std::string::npos) continue;
      if (SPF_dns_rr_buf_realloc(rr, n, r.value.size() + 1) != SPF_E_SUCCESS) break;
      std::memcpy(rr->rr[n]->txt, r.value.c_str(), r.value.size() + 1);
    }
    ++n;
  }
  rr->num_rr = n;
  if (n == 0) rr->herrno = NO_DATA;
  return rr;
}

SPF_dns_rr_t* lookup(SPF_dns_server_t* layer, const char* domain, ns_type type, int /*should_cache*/) {
  auto& e = evaluation_of(layer);
  const auto ours = our_type(type);
  if (!ours || e.permerror) return SPF_dns_rr_new_init(layer, domain, type, 0, NO_DATA);
  if (e.explaining) {
    // §6.2: the explanation never changes the result: no term, no void
    // lookup, no budget spent (past it, nothing is asked).
    if (std::chrono::steady_clock::now() >= e.deadline) return SPF_dns_rr_new_init(layer, domain, type, 0, TRY_AGAIN);
    return rr_of(layer, domain, type, e.lookup(fitted(domain), *ours, e.deadline));
  }
  // Each term that queries DNS (a, mx, ptr, exists here; include and
  // redirect in get_spf) makes one lookup of its own; an mx or ptr term then
  // looks up the names it found, which are not terms (§4.6.4).
  bool for_ptr = *ours == dns::rr_type::ptr;
  if (*ours == dns::rr_type::mx || *ours == dns::rr_type::ptr) {
    count_dns_term(e);
    e.follow_ups.clear();
    e.follow_ups_of_ptr = for_ptr;
  } else if (*ours == dns::rr_type::a || *ours == dns::rr_type::aaaa) {
    // (One name per record: libspf2 looks up every record's, a host named by
    // two MX records twice, and the second lookup is no term of its own.)
    if (const auto follow_up = e.follow_ups.find(name_key(domain)); follow_up == e.follow_ups.end()) {
      count_dns_term(e);
      e.follow_ups.clear();
    } else {
      e.follow_ups.erase(follow_up);
      for_ptr = e.follow_ups_of_ptr;
    }
  }
  std::string name = domain;
  const bool any_address = strip_any_address(name, e.any_address);
  const bool trouble_before = e.dns_trouble;
  auto answer = fetch(e, std::move(name), *ours);
  // §5.5: a DNS error on the ptr term's PTR lookup, or on the address lookup
  // of one of its names, is no match, not temperror (libspf2 makes it one):
  // the client's own reverse zone would turn a domain's fail into temperror.
  if (for_ptr && !e.out_of_time &&
      (answer.what == dns::answer::status::timeout || answer.what == dns::answer::status::failure)) {
    e.dns_trouble = trouble_before;
    answer = dns::answer{};
    answer.what = dns::answer::status::ok;
  }
  if (answer.ok() && any_address) {
    if (*ours == dns::rr_type::mx) {
      for (auto& r : answer.records) r.value += e.any_address;  // their addresses are "any" too
    } else if (!answer.records.empty() && (*ours == dns::rr_type::a) == e.client.is_v4()) {
      answer.records.assign(1, dns::record{e.client.to_string(), 0});  // it has an address: the client's matches
    }
  }
  // §4.6.4: of more than 10 PTR names only the first 10 count (libspf2 would
  // call that permerror); more than 10 MX hosts are permerror, libspf2's way.
  if (*ours == dns::rr_type::ptr && answer.records.size() > e.limits.mx_hosts) answer.records.resize(e.limits.mx_hosts);
  if (answer.ok() && (*ours == dns::rr_type::mx || *ours == dns::rr_type::ptr)) {
    for (const auto& r : answer.records) e.follow_ups.insert(name_key(r.value));
  }
  return rr_of(layer, domain, type, answer);
}

// Whether `text` (a record or an explanation) uses the "p" macro (§7.3).
bool uses_p_macro(std::string_view text) {
  for (std::size_t i = 0; i + 2 < text.size(); ++i) {
    if (text[i] != '%') continue;
    if (text[i + 1] == '{' && (text[i + 2] == 'p' || text[i + 2] == 'P')) return true;
    ++i;  // "%%", "%_", "%-" (or a stray "%", which the validator refused)
  }
  return false;
}

// §7.3 "p": the client's validated name (§5.5): of its PTR names (at most
// 10, §4.6.4), those with the client among their addresses; of several,
// the domain being checked itself, else one of its subdomains, else the
// first ("unknown" without one). Set on the request before libspf2 expands
// the macro, for the record (or explanation) of the domain at hand, so that
// libspf2 never looks it up itself: its lookups came through lookup() above
// as terms (a PTR query is one, for the ptr mechanism), and a record of 10
// terms and %{p} was a permerror, an explanation with %{p} turned a fail
// into one. These lookups are no term (§4.6.4 counts include, a, mx, ptr,
// exists and redirect; pyspf the same), no void lookup, made once a check;
// past the check's budget none is made.
void set_client_name(spf_evaluation& e, SPF_request_t* request) {
  if (request == nullptr) return;
  if (!e.validated_names) {
    const auto ask = [&e](const std::string& name, dns::rr_type type) {
      return std::chrono::steady_clock::now() < e.deadline ? e.lookup(name, type, e.deadline) : dns::answer{};
    };
    e.validated_names.emplace();
    const auto names = ask(dns::reverse_name(e.client), dns::rr_type::ptr);
    const auto family = e.client.is_v4() ? dns::rr_type::a : dns::rr_type::aaaa;
    const std::size_t tried = std::min<std::size_t>(names.records.size(), e.limits.mx_hosts);
    for (std::size_t i = 0; i < tried; ++i) {
      for (const auto& address : ask(fitted(names.records[i].value), family).records) {
        boost::system::error_code bad;
        if (asio::ip::make_address(address.value, bad) == e.client && !bad) {
          e.validated_names->push_back(names.records[i].value);
          break;
        }
      }
    }
  }
  const auto& names = *e.validated_names;
  const std::string domain = name_key(request->cur_dom ? request->cur_dom : "");
  const auto under = [&domain](const std::string& n) {
    const auto k = name_key(n);
    return k.size() > domain.size() && k.ends_with(domain) && k[k.size() - domain.size() - 1] == '.';
  };
  auto chosen = std::find_if(names.begin(), names.end(), [&domain](const std::string& n) { return name_key(n) == domain; });
  if (chosen == names.end()) chosen = std::find_if(names.begin(), names.end(), under);
  if (chosen == names.end()) chosen = names.begin();
  std::free(request->client_dom);  // (one set for another domain's record; libspf2 frees the last with the request)
  request->client_dom = ::strdup(chosen == names.end() ? "unknown" : chosen->c_str());
}

bool is_spf_record(std::string_view txt) {
  constexpr std::string_view version = "v=spf1";
  return smtp::starts_with_nocase(txt, version) && (txt.size() == version.size() || txt[version.size()] == ' ');
}

// What the macro letters stand for in this request (RFC 7208 §7.3), for
// spf_macros_for_values; "p" (the client's validated name) is not known yet.
spf_macro_value macro_values(const spf_evaluation& e, SPF_request_t* request) {
  return [&e, request](char letter) -> std::optional<std::string> {
    const auto text = [](const char* s) { return s ? std::optional<std::string>(s) : std::nullopt; };
    switch (letter) {
      case 's': return text(request->env_from);
      case 'l': return text(request->env_from_lp);
      case 'o': return text(request->env_from_dp);
      case 'd': return text(request->cur_dom);
      case 'h': return text(request->helo_dom);
      case 'r': return text(SPF_request_get_rec_dom(request));
      case 'i':  // dotted: an IPv6 address as its 32 nibbles
        return e.client.is_v4() ? e.client.to_string() : std::string(31, '.');
      case 'c': return e.client.to_string();
      case 'v': return e.client.is_v4() ? "in-addr" : "ip6";
      case 't': return "0";
      default: return std::nullopt;
    }
  };
}

// The SPF record of the request's current domain (the checked one, or an
// include/redirect target), found as libspf2's own SPF_server_get_record
// does, but checked by our validator and given to libspf2 in a form it reads
// right for this client.
SPF_errcode_t get_spf(SPF_server_t* server, SPF_request_t* request, SPF_response_t* response, SPF_record_t** recordp) {
  auto& e = evaluation_of(server->resolver);
  const char* domain = request->cur_dom;
  *recordp = nullptr;
  const auto fail = [&](SPF_result_t result, SPF_errcode_t code, const std::string& why) {
    response->result = result;
    response->reason = SPF_REASON_FAILURE;
    return SPF_response_add_error(response, code, "%s", why.c_str());
  };
  if (std::exchange(e.record_fetched, true)) count_dns_term(e);  // an include or a redirect
  e.follow_ups.clear();
  const auto answer = fetch(e, domain, dns::rr_type::txt);
  const std::string where = std::string(" for '") + domain + "'";
  if (e.permerror) return fail(SPF_RESULT_PERMERROR, SPF_E_BIG_DNS, *e.permerror);
  if (answer.what == dns::answer::status::timeout || answer.what == dns::answer::status::failure)
    return fail(SPF_RESULT_TEMPERROR, SPF_E_DNS_ERROR, "temporary DNS failure" + where);
  std::vector<std::string_view> records;  // whole, NULs and all: the validator judges them
  for (const auto& r : answer.records)
    if (is_spf_record(r.value)) records.push_back(r.value);
  // §4.5: no record is "none"; more than one is permerror.
  if (records.empty()) return fail(SPF_RESULT_NONE, SPF_E_NOT_SPF, "no SPF record" + where);
  if (records.size() > 1) return fail(SPF_RESULT_PERMERROR, SPF_E_MULTIPLE_RECORDS, "several SPF records" + where);
  if (auto error = spf_record_error(records.front())) {
    e.permerror = *error + where;
    return fail(SPF_RESULT_PERMERROR, SPF_E_SYNTAX, *e.permerror);
  }
  const std::string text = spf_macros_for_values(
      spf_record_for_client(spf_record_for_libspf2(records.front()), e.client, e.any_address),
      macro_values(e, request));
  if (uses_p_macro(text)) set_client_name(e, request);
  const auto [mechanisms, modifiers, longest] = spf_shape_of(text);
  if (longest > libspf2_max_macro_string) {
    e.permerror = "the SPF record" + where + " has a term with macros of " + std::to_string(longest) +
                  " characters, too long for libspf2 (at most " + std::to_string(libspf2_max_macro_string) + ")";
    return fail(SPF_RESULT_PERMERROR, SPF_E_BIG_MECH, *e.permerror);
  }
  const bool compiled = SPF_record_compile(server, response, recordp, text.c_str()) == SPF_E_SUCCESS;
  // libspf2 drops the terms past 511 bytes of its compiled form without a
  // word (SPF_MAX_MECH_LEN): it would evaluate another record than the
  // domain's, and answer wrong (neutral, the final -all lost).
  const bool whole = compiled && (*recordp)->num_mech == mechanisms && (*recordp)->num_mod == modifiers;
  if (whole) return SPF_E_SUCCESS;
  if (*recordp != nullptr) {
    SPF_record_free(*recordp);
    *recordp = nullptr;
  }
  e.permerror = compiled ? "the SPF record" + where + " is too big for libspf2 (" + std::to_string(mechanisms) +
                               " mechanisms, " + std::to_string(text.size()) + " bytes)"
                         : "libspf2 cannot compile the SPF record" + where;
  return fail(SPF_RESULT_PERMERROR, compiled ? SPF_E_BIG_MECH : SPF_E_NOT_SPF, *e.permerror);
}

// Sets libspf2's out-buffer (malloc'd, *buflenp bytes) to `text`.
SPF_errcode_t put(const std::string& text, char** bufp, size_t* buflenp) {
  if (*bufp == nullptr || *buflenp < text.size() + 1) {
    char* grown = static_cast<char*>(std::realloc(*bufp, text.size() + 1));
    if (grown == nullptr) return SPF_E_NO_MEMORY;
    *bufp = grown;
    *buflenp = text.size() + 1;
  }
  std::memcpy(*bufp, text.c_str(), text.size() + 1);
  return SPF_E_SUCCESS;
}

// One macro-string expanded for the request, or nullopt on a syntax error
// or one too long to give libspf2 (libspf2_max_macro_string).
std::optional<std::string> expand(SPF_server_t* server, SPF_request_t* request, const std::string& text) {
  if (text.find('%') == std::string::npos) return text;  // no macro: the text itself
  if (text.size() > libspf2_max_macro_string) return std::nullopt;
  SPF_response_t* scratch = SPF_response_new(request);
  SPF_macro_t* macro = nullptr;
  std::optional<std::string> out;
  if (scratch != nullptr && SPF_record_compile_macro(server, scratch, &macro, text.c_str()) == SPF_E_SUCCESS && macro) {
    char* buf = nullptr;
    size_t len = 0;
    // The macro's data follows its header (libspf2's SPF_macro_data, not exported).
    auto* data = reinterpret_cast<SPF_data_t*>(reinterpret_cast<char*>(macro) + sizeof(SPF_macro_t));
    if (SPF_record_expand_data(server, request, scratch, data, macro->macro_len, &buf, &len) == SPF_E_SUCCESS && buf)
      out = std::string(buf);
    std::free(buf);
  }
  if (macro) SPF_macro_free(macro);
  if (scratch) SPF_response_free(scratch);
  return out;
}

// The explanation at `domain` (the exp= target, expanded), RFC 7208 §6.2.
// libspf2's own expansion garbles every space of the text, so each
// space-separated macro-string is expanded on its own. A lookup that does
// not give exactly one record, text that is not printable ASCII or does not
// expand: no explanation (empty), as if there were no exp=.
SPF_errcode_t get_exp(SPF_server_t* server, const char* domain, char** bufp, size_t* buflenp) {
  auto& e = evaluation_of(server->resolver);
  // §6.2: the result is known; nothing here may change it (no term counted,
  // no permerror, no budget overrun: see lookup()).
  const bool was_explaining = std::exchange(e.explaining, true);
  struct restore {
    spf_evaluation& e;
    bool was;
    ~restore() { e.explaining = was; }
  } restored{e, was_explaining};
  std::string explanation;
  const bool in_time = std::chrono::steady_clock::now() < e.deadline;
  const auto answer = in_time ? e.lookup(fitted(domain), dns::rr_type::txt, e.deadline) : dns::answer{};
  const auto printable = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
  };
  if (answer.ok() && answer.records.size() == 1 && printable(answer.records.front().value) && e.request != nullptr) {
    const std::string& text = answer.records.front().value;
    if (uses_p_macro(text)) set_client_name(e, e.request);
    bool ok = true;
    for (std::size_t start = 0; ok;) {
      const auto space = text.find(' ', start);
      const auto word_text = text.substr(start, space == std::string::npos ? space : space - start);
      auto word = expand(server, e.request, spf_macros_for_values(word_text, macro_values(e, e.request)));
      ok = word.has_value();
      if (ok) explanation += *word;
      if (space == std::string::npos) break;
      explanation += ' ';
      start = space + 1;
    }
    // One printable ASCII line, as the record's text was: a macro's value
    // (an SMTPUTF8 sender's %{l}) may have brought 8-bit text in.
    if (!ok || !printable(explanation)) explanation.clear();
  }
  return put(explanation, bufp, buflenp);
}

}  // namespace

SPF_dns_server_t spf_dns_layer(spf_evaluation& e) {
  SPF_dns_server_t layer{};
  layer.lookup = lookup;
  layer.get_spf = get_spf;
  layer.get_exp = get_exp;
  layer.name = "portcullis";
  layer.hook = &e;
  return layer;
}

}  // namespace portcullis::checks
