#include "checks/dmarc_evaluator.hpp"

#include <sys/types.h>

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>

#include "checks/idna_domain.hpp"
#include "checks/message_fields.hpp"
#include "smtp/text.hpp"

extern "C" {
#include <libpsl.h>
#include <opendmarc/dmarc.h>
}

namespace portcullis::checks {

namespace {

using policy_kind = dmarc_result::policy_kind;

// RFC 7489 §6.4: a DMARC record starts with "v=DMARC1" (WSP allowed around
// "=", the value case-sensitive), then ";" or its end.
bool is_dmarc_record(std::string_view r) {
  std::size_t i = 0;
  const auto wsp = [&] {
    while (i < r.size() && smtp::is_wsp(r[i])) ++i;
  };
  wsp();
  if (i >= r.size() || r[i] != 'v') return false;
  ++i;
  wsp();
  if (i >= r.size() || r[i] != '=') return false;
  ++i;
  wsp();
  if (r.substr(i, 6) != "DMARC1") return false;
  i += 6;
  wsp();
  return i == r.size() || r[i] == ';';
}

policy_kind policy_of(int p) {
  switch (p) {
    case DMARC_RECORD_P_NONE: return policy_kind::none;
    case DMARC_RECORD_P_QUARANTINE: return policy_kind::quarantine;
    case DMARC_RECORD_P_REJECT: return policy_kind::reject;
    default: return policy_kind::unspecified;
  }
}

// §6.6.4: a message pct= leaves out gets the next milder policy.
policy_kind milder(policy_kind p) {
  switch (p) {
    case policy_kind::reject: return policy_kind::quarantine;
    case policy_kind::quarantine: return policy_kind::none;
    default: return p;
  }
}

unsigned random_sample() {
  thread_local std::mt19937 engine{std::random_device{}()};
  return std::uniform_int_distribution<unsigned>(0, 99)(engine);
}

struct policy_context {
  DMARC_POLICY_T* p = nullptr;
  ~policy_context() {
    if (p) opendmarc_policy_connect_shutdown(p);
  }
};

u_char* text(std::string& s) { return reinterpret_cast<u_char*>(s.data()); }

// What §6.6.3 found at one name: the one DMARC record, or why not.
struct discovery {
  enum class outcome { record, none, several, error } what = outcome::none;
  std::string record;
  std::string error;
};

discovery discover(const dmarc_evaluator::txt_lookup& lookup, const std::string& domain) {
  const auto answer = lookup("_dmarc." + domain);
  discovery d;
  if (answer.what == dns::answer::status::timeout || answer.what == dns::answer::status::failure) {
    d.what = discovery::outcome::error;
    d.error = "_dmarc." + domain + ": " + (answer.error.empty() ? std::string(dns::to_string(answer.what)) : answer.error);
    return d;
  }
  for (const auto& r : answer.records) {
    if (!is_dmarc_record(r.value)) continue;  // other TXT records at the name are not ours (§6.6.3 step 2)
    if (d.what == discovery::outcome::record) {
      d.what = discovery::outcome::several;
      d.record.clear();
      return d;
    }
    d.what = discovery::outcome::record;
    d.record = r.value;
  }
  return d;
}

}  // namespace

struct dmarc_evaluator::library {
  psl_ctx_t* psl = nullptr;
  ~library() {
    if (psl) psl_free(psl);
  }
};

dmarc_evaluator::dmarc_evaluator(txt_lookup lookup, sample draw, std::chrono::milliseconds budget)
    : lookup_(std::move(lookup)), draw_(draw ? std::move(draw) : sample(random_sample)), budget_(budget),
      lib_(std::make_unique<library>()) {
  // The system's list (Debian's publicsuffix package), else the one built into libpsl.
  lib_->psl = psl_latest(nullptr);
  if (lib_->psl == nullptr) throw std::runtime_error("libpsl: no Public Suffix List (install publicsuffix)");
}

dmarc_evaluator::~dmarc_evaluator() = default;

std::string dmarc_evaluator::organizational_domain(std::string_view domain) const {
  const std::string d = smtp::to_lower(domain);
  const char* registrable = psl_registrable_domain(lib_->psl, d.c_str());
  return registrable ? std::string(registrable) : d;
}

dmarc_result dmarc_evaluator::evaluate_now(const message_store& message, const std::optional<spf_result>& spf,
                                           const std::optional<dkim_results>& dkim,
                                           const std::vector<reported_pass>& arc_passes) const {
  std::optional<std::vector<std::string>> from;
  try {
    from = header_values(message, "From", max_checked_header);
  } catch (const std::runtime_error& e) {
    dmarc_result r;
    r.result = dmarc_result::kind::temperror;
    r.problem = e.what();
    return r;
  }
  if (!from) {
    // A From past the first MiB could be missed, and another before it trusted.
    dmarc_result r;
    r.result = dmarc_result::kind::permerror;
    r.unusable_from = true;
    r.problem = "the header section is larger than " + std::to_string(max_checked_header / 1024) +
                " KiB: its From fields are not read";
    return r;
  }
  return evaluate(*from, spf, dkim, arc_passes);
}

namespace {

// How strongly one author domain's result speaks against the message: the
// highest is reported (§6.6.1: "the most strict policy selected among the
// checks that fail"; the first of equals). A failure whose domain asks for
// quarantine or reject comes first, by disposition then policy (which also
// orders them by policy: a disposition is at most one step milder); then a
// domain that could not be evaluated now (its policy unknown: it may ask
// for reject), a failure that asks for nothing, a broken record, no record,
// and pass only when every domain passed.
int severity(const dmarc_result& r) {
  using kind = dmarc_result::kind;
  const auto rank = [](policy_kind p) { return static_cast<int>(p); };  // unspecified, none, quarantine, reject
  switch (r.result) {
    case kind::fail:
      if (r.policy == policy_kind::quarantine || r.policy == policy_kind::reject)
        return 100 + 4 * rank(r.disposition) + rank(r.policy);
      return 40;
    case kind::temperror: return 50;
    case kind::permerror: return 30;
    case kind::none: return 20;
    case kind::pass: return 10;
  }
  return 0;
}

std::string_view trimmed_wsp(std::string_view s) { return smtp::trimmed(s, smtp::is_wsp); }

bool is_policy(std::string_view v) {
  return smtp::equals_nocase(v, "none") || smtp::equals_nocase(v, "quarantine") || smtp::equals_nocase(v, "reject");
}

// A reporting URI list with one URI at least (RFC 7489 §6.4: "mailto:..."):
// what makes a record without a valid p= one of p=none (§6.6.3).
bool has_reporting_uri(std::string_view v) {
  for (std::size_t start = 0; start <= v.size();) {
    auto end = v.find(',', start);
    if (end == std::string_view::npos) end = v.size();
    auto uri = trimmed_wsp(v.substr(start, end - start));
    const auto colon = uri.find(':');
    if (colon != std::string_view::npos && colon > 0 && colon + 1 < uri.size() && smtp::is_alpha(uri.front())) return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

std::optional<std::string> dmarc_policy_record(std::string_view record) {
  // (v=DMARC1 first: discovery chose the record by it.)
  std::optional<std::string_view> p, sp, pct, adkim, aspf;
  bool reports = false;
  for (std::size_t start = 0; start < record.size();) {
    auto end = record.find(';', start);
    if (end == std::string_view::npos) end = record.size();
    const auto tag = record.substr(start, end - start);
    start = end + 1;
    const auto eq = tag.find('=');
    if (eq == std::string_view::npos) continue;
    const auto name = trimmed_wsp(tag.substr(0, eq));
    const auto value = trimmed_wsp(tag.substr(eq + 1));
    const auto first = [&value](std::optional<std::string_view>& slot) {
      if (!slot) slot = value;
    };
    if (smtp::equals_nocase(name, "p")) first(p);
    else if (smtp::equals_nocase(name, "sp")) first(sp);
    else if (smtp::equals_nocase(name, "pct")) first(pct);
    else if (smtp::equals_nocase(name, "adkim")) first(adkim);
    else if (smtp::equals_nocase(name, "aspf")) first(aspf);
    else if (smtp::equals_nocase(name, "rua")) reports = reports || has_reporting_uri(value);
  }
  // §6.6.3 step 6: no valid p=, or an invalid sp=: p=none when the record
  // asks for reports, else no DMARC at all.
  std::string out = "v=DMARC1; p=";
  if (!p || !is_policy(*p) || (sp && !is_policy(*sp))) {
    if (!reports) return std::nullopt;
    return out + "none";
  }
  out += *p;
  if (sp) out += "; sp=" + std::string(*sp);
  // §6.3: a syntax error in the rest goes for the default.
  if (pct && !pct->empty() && pct->size() <= 3 && std::all_of(pct->begin(), pct->end(), smtp::is_digit) &&
      std::stoi(std::string(*pct)) <= 100)
    out += "; pct=" + std::string(*pct);
  for (const auto& [tag, value] : {std::pair{"adkim", adkim}, {"aspf", aspf}})
    if (value && (smtp::equals_nocase(*value, "r") || smtp::equals_nocase(*value, "s")))
      out += "; " + std::string(tag) + "=" + std::string(*value);
  return out;
}

dmarc_result dmarc_evaluator::evaluate(const std::vector<std::string>& from_values,
                                       const std::optional<spf_result>& spf,
                                       const std::optional<dkim_results>& dkim,
                                       const std::vector<reported_pass>& arc_passes) const {
  // The author domains (§3.1, §6.6.1): every one the From field(s) name.
  std::string problem;
  auto domains = author_domains(from_values, problem);
  if (!domains) {
    dmarc_result r;
    r.result = dmarc_result::kind::permerror;
    r.unusable_from = true;
    r.problem = std::move(problem);
    return r;
  }
  const auto deadline = std::chrono::steady_clock::now() + budget_;
  // Several author domains: every policy record they may need is looked up at
  // once, first. One after the other, an attacker's From padded with domains
  // whose DNS never answers used up the time of the real author's, which was
  // then temperror, not its fail with p=reject.
  std::map<std::string, dns::answer> fetched;  // (by the record's name, _dmarc.<domain>)
  if (domains->size() > 1) {
    std::set<std::string> names;
    for (const auto& domain : *domains)
      for (const auto& name : {domain, organizational_domain(domain)}) names.insert("_dmarc." + name);
    fetched = together_(lookup_, names);
  }
  std::optional<dmarc_result> strictest;
  bool all_arc_aligned = true;  // every failing domain
  for (const auto& domain : *domains) {
    auto r = evaluate_domain(domain, spf, dkim, arc_passes, deadline, fetched);
    if (r.result == dmarc_result::kind::fail) all_arc_aligned = all_arc_aligned && r.arc_aligned;
    if (!strictest || severity(r) > severity(*strictest)) strictest = std::move(r);
  }
  dmarc_result r = std::move(*strictest);  // (author_domains names one at least)
  r.arc_aligned = r.result == dmarc_result::kind::fail && all_arc_aligned;
  r.from_domains = author_domain_list(std::move(*domains));
  return r;
}

dmarc_result dmarc_evaluator::evaluate_domain(const std::string& author, const std::optional<spf_result>& spf,
                                              const std::optional<dkim_results>& dkim,
                                              const std::vector<reported_pass>& arc_passes,
                                              std::chrono::steady_clock::time_point deadline,
                                              const std::map<std::string, dns::answer>& fetched) const {
  using kind = dmarc_result::kind;
  dmarc_result r;
  const auto stop = [&](kind k, std::string why) {
    r.result = k;
    r.problem = std::move(why);
    return r;
  };
  // In A-labels (RFC 7489 §6.6.3, RFC 8616 §4-5; author_domains made them):
  // SPF and DKIM name domains so, and DNS has the record at _dmarc.<A-labels>.
  // tx.dmarc.domain and header.from= carry that form too.
  r.domain = author;
  r.org_domain = organizational_domain(r.domain);

  // Policy discovery (§6.6.3).
  const auto look_up = [&](const std::string& name) {
    if (const auto answer = fetched.find("_dmarc." + name); answer != fetched.end())
      return discover([&answer](const std::string&) { return answer->second; }, name);
    if (std::chrono::steady_clock::now() > deadline) {
      discovery late;
      late.what = discovery::outcome::error;
      late.error = "_dmarc." + name + ": not looked up: the lookups took over " +
                   std::to_string(budget_.count() / 1000) + " s in all";
      return late;
    }
    return discover(lookup_, name);
  };
  auto found = look_up(r.domain);
  if (found.what == discovery::outcome::none && r.org_domain != r.domain) {
    found = look_up(r.org_domain);
    r.org_record = true;
  }
  switch (found.what) {
    case discovery::outcome::error: return stop(kind::temperror, found.error);
    case discovery::outcome::none: r.org_record = false; return stop(kind::none, "no DMARC record");
    case discovery::outcome::several:
      return stop(kind::none, "several DMARC records at _dmarc." + (r.org_record ? r.org_domain : r.domain));
    case discovery::outcome::record: break;
  }

  // The record, parsed by libopendmarc.
  const std::string& policy_domain = r.org_record ? r.org_domain : r.domain;
  std::string client = "0.0.0.0";  // (kept by the library for reports; the decision is not its)
  policy_context ctx;
  ctx.p = opendmarc_policy_connect_init(text(client), 0);
  if (ctx.p == nullptr) return stop(kind::temperror, "libopendmarc: out of memory");
  auto policy_record = dmarc_policy_record(found.record);
  if (!policy_record)
    return stop(kind::none, "the DMARC record of " + policy_domain +
                                " has no valid p= (or an invalid sp=) and asks for no reports: no policy (RFC 7489 §6.6.3)");
  std::string record = std::move(*policy_record), from = r.domain, org = r.org_domain;
  const auto status = opendmarc_policy_store_dmarc(ctx.p, text(record), text(from), r.org_record ? text(org) : nullptr);
  if (status != DMARC_PARSE_OKAY)
    return stop(kind::permerror, "the DMARC record of " + policy_domain + ": " +
                                     opendmarc_policy_status_to_str(status));
  int p = 0, sp = 0, pct = 100, adkim = 0, aspf = 0;
  opendmarc_policy_fetch_p(ctx.p, &p);
  opendmarc_policy_fetch_sp(ctx.p, &sp);
  opendmarc_policy_fetch_pct(ctx.p, &pct);
  opendmarc_policy_fetch_adkim(ctx.p, &adkim);
  opendmarc_policy_fetch_aspf(ctx.p, &aspf);
  r.policy = policy_of(p);
  // sp= is for subdomains of the organizational domain whose record it is.
  if (r.org_record && policy_of(sp) != policy_kind::unspecified) r.policy = policy_of(sp);
  r.pct = static_cast<unsigned>(std::clamp(pct, 0, 100));

  // Identifier alignment (§3.1): strict is the same name, relaxed the same organizational domain.
  const auto aligned = [&](std::string_view domain, int mode) {
    const auto ascii = a_label_domain(domain);  // (a DKIM d= may come in U-labels too, RFC 8616 §4)
    if (!ascii) return false;
    std::string d = smtp::to_lower(*ascii);
    if (d.ends_with('.')) d.pop_back();
    if (d == r.domain) return true;
    return mode != DMARC_RECORD_A_STRICT && !d.empty() && organizational_domain(d) == r.org_domain;
  };
  r.spf_aligned = spf && spf->result == spf_result::kind::pass && aligned(spf->domain, aspf);
  for (const auto& sig : dkim ? *dkim : dkim_results{})
    if (sig.result == dkim_signature::kind::pass && aligned(sig.domain, adkim)) r.dkim_aligned = true;

  if (r.spf_aligned || r.dkim_aligned) {
    r.result = kind::pass;
    r.disposition = policy_kind::none;
    return r;
  }
  // An aligned identifier whose check failed on DNS (SPF temperror, a DKIM
  // key lookup that timed out) may pass when tried again: temperror, not a
  // failure to refuse for good. The record's policy stays known, so that a
  // policy can defer (policies/dmarc.py: 451) rather than let it through:
  // SPF can be made to time out by whoever answers a name the record has
  // looked up (a ptr term asks the client's own DNS).
  bool unknown = spf && spf->result == spf_result::kind::temperror && aligned(spf->domain, aspf);
  for (const auto& sig : dkim ? *dkim : dkim_results{})
    unknown = unknown || (sig.result == dkim_signature::kind::temperror && aligned(sig.domain, adkim));
  if (unknown) {
    r.disposition = policy_kind::none;  // (nothing asked of this message yet)
    return stop(kind::temperror, "an aligned SPF or DKIM check failed on DNS; nothing aligned passed");
  }
  r.result = kind::fail;
  r.disposition = r.pct >= 100 || draw_() < r.pct ? r.policy : milder(r.policy);

  // What the last intermediary found (RFC 8617 §7.2: a receiver may let a
  // sealer it trusts speak for the message as that sealer got it): its
  // ARC-Authentication-Results, which its seal covers, report a pass for
  // this domain, or one aligned with it as this domain's record asks.
  for (const auto& [method, identity] : arc_passes) {
    if ((method == "dmarc" && aligned(identity, DMARC_RECORD_A_STRICT)) ||
        (method == "dkim" && aligned(identity, adkim)) || (method == "spf" && aligned(identity, aspf))) {
      r.arc_aligned = true;
      break;
    }
  }
  return r;
}

}  // namespace portcullis::checks
