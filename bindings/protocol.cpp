// `_portcullis_core.Job`, `.VerdictReply` and `.Result`: the policy protocol
// (proxy/policy/policy_job.hpp) as Python classes. Reading a field converts
// it then, so a hook that never looks at the message never copies it. The
// setters exist for the engine's tests, which build the daemon's own objects.
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>

#include "bindings/core.hpp"
#include "bindings/job_state.hpp"
#include "smtp/text.hpp"
#include "policy/policy_job.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

py::dict params_dict(const std::vector<smtp::esmtp_param>& params) {
  py::dict d;
  for (const auto& p : params) d[py::str(p.keyword)] = p.has_value ? py::object(py::str(p.value)) : py::object(py::none());
  return d;
}

namespace {

std::vector<smtp::esmtp_param> params_from(const py::dict& d) {
  std::vector<smtp::esmtp_param> out;
  for (auto [k, v] : d) {
    smtp::esmtp_param p;
    p.keyword = py::str(k).cast<std::string>();
    std::transform(p.keyword.begin(), p.keyword.end(), p.keyword.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });  // as the daemon's parser
    p.has_value = !v.is_none();
    if (p.has_value) p.value = py::str(v).cast<std::string>();
    out.push_back(std::move(p));
  }
  return out;
}

// An address a test sets on a job, checked with the daemon's own parser (the
// daemon's jobs carry what it parsed off the wire); the null sender and
// "Postmaster" have no domain.
smtp::address address_of(const std::string& text) {
  if (text.empty() || smtp::equals_nocase(text, "postmaster")) return smtp::address{text, ""};
  return checked_mailbox(text, true);
}

std::vector<smtp::address> addresses_of(const std::vector<std::string>& texts) {
  std::vector<smtp::address> out;
  for (const auto& t : texts) out.push_back(address_of(t));
  return out;
}

std::vector<std::string> address_texts(const std::vector<smtp::address>& list) {
  std::vector<std::string> out;
  for (const auto& a : list) out.push_back(a.str());
  return out;
}

}  // namespace

// An address as (local part, domain): Python makes its Address from these as they are.
py::tuple address_parts(const smtp::address& a) { return py::make_tuple(a.local, a.domain); }

namespace {

py::object none_if_empty(const std::string& s) { return s.empty() ? py::object(py::none()) : py::object(py::str(s)); }

policy_stage stage_from(std::string_view name) {
  for (std::size_t i = 0; i < policy_stage_count; ++i)
    if (policy_stage_names[i] == name) return static_cast<policy_stage>(i);
  throw py::value_error("unknown stage " + std::string(name));
}

}  // namespace

// The stage names as interned Python strings: a job's stage is read at every job.
const py::str& stage_str(policy_stage s) {
  static const auto names = [] {
    std::array<py::str, policy_stage_count> a;
    for (std::size_t i = 0; i < policy_stage_count; ++i) {
      PyObject* o = PyUnicode_FromStringAndSize(policy_stage_names[i].data(),
                                                static_cast<Py_ssize_t>(policy_stage_names[i].size()));
      PyUnicode_InternInPlace(&o);
      a[i] = py::reinterpret_steal<py::str>(o);
    }
    return new std::array<py::str, policy_stage_count>(std::move(a));  // never freed: the interpreter is never finalised
  }();
  return (*names)[static_cast<std::size_t>(s)];
}

// The parts of job.state().
py::tuple connection_tuple(const policy_job& j) {
  return py::make_tuple(j.session_id, j.client_ip, j.client_port, none_if_empty(j.helo), j.tls,
                        j.tls ? none_if_empty(j.tls_version) : py::none(), j.tls ? none_if_empty(j.tls_cipher) : py::none(),
                        j.auth_user ? py::object(py::str(*j.auth_user)) : py::object(py::none()));
}

namespace {

// A check's result by its name (the tests set the daemon's checks on a job).
template <class Kind>
Kind kind_named(std::string_view name, std::initializer_list<Kind> kinds, std::string_view check) {
  for (Kind kind : kinds)
    if (checks::to_string(kind) == name) return kind;
  throw py::value_error("unknown " + std::string(check) + " result " + std::string(name));
}

void set_spf(policy_job& j, const py::object& t) {
  if (t.is_none()) {
    j.spf.reset();
    return;
  }
  using k = checks::spf_result::kind;
  auto [result, domain, explanation] = t.cast<std::tuple<std::string, std::string, std::optional<std::string>>>();
  checks::spf_result r;
  r.result = kind_named(result, {k::none, k::neutral, k::pass, k::fail, k::softfail, k::temperror, k::permerror}, "SPF");
  r.domain = std::move(domain);
  r.explanation = explanation.value_or("");
  j.spf = std::move(r);
}

void set_dkim(policy_job& j, const py::object& list) {
  if (list.is_none()) {
    j.dkim.reset();
    return;
  }
  using k = checks::dkim_signature::kind;
  checks::dkim_results out;
  for (auto item : list) {
    auto [result, domain, selector] = item.cast<std::tuple<std::string, std::string, std::string>>();
    checks::dkim_signature sig;
    sig.result = kind_named(result, {k::pass, k::fail, k::neutral, k::temperror, k::permerror}, "DKIM");
    sig.domain = std::move(domain);
    sig.selector = std::move(selector);
    out.push_back(std::move(sig));
  }
  j.dkim = std::move(out);
}

checks::dmarc_result::policy_kind policy_named(const std::optional<std::string>& name) {
  using p = checks::dmarc_result::policy_kind;
  if (!name) return p::unspecified;
  for (p kind : {p::none, p::quarantine, p::reject})
    if (checks::to_string(kind) == *name) return kind;
  throw py::value_error("unknown DMARC policy " + *name);
}

std::optional<std::string> policy_name(checks::dmarc_result::policy_kind p) {
  if (p == checks::dmarc_result::policy_kind::unspecified) return std::nullopt;
  return std::string(checks::to_string(p));
}

using dmarc_fields = std::tuple<std::string, std::string, std::optional<std::string>, std::optional<std::string>,
                                std::string, unsigned, bool, bool>;

// (result, domain, policy, disposition, org_domain, pct, spf_aligned,
// dkim_aligned), then optionally (from_domains, unusable_from, arc_aligned):
// a test's job may leave those out (their defaults: none, false, false).
void set_dmarc(policy_job& j, const py::object& t) {
  if (t.is_none()) {
    j.dmarc.reset();
    return;
  }
  using k = checks::dmarc_result::kind;
  const auto items = t.cast<py::sequence>();
  if (items.size() != std::tuple_size_v<dmarc_fields> && items.size() != std::tuple_size_v<dmarc_fields> + 3)
    throw py::value_error("a DMARC result is a sequence of 8 or 11 items");
  auto [result, domain, policy, disposition, org_domain, pct, spf_aligned, dkim_aligned] =
      py::tuple(items[py::slice(0, std::tuple_size_v<dmarc_fields>, 1)]).cast<dmarc_fields>();
  checks::dmarc_result r;
  r.result = kind_named(result, {k::none, k::pass, k::fail, k::temperror, k::permerror}, "DMARC");
  r.domain = std::move(domain);
  r.policy = policy_named(policy);
  r.disposition = policy_named(disposition);
  r.org_domain = std::move(org_domain);
  r.pct = pct;
  r.spf_aligned = spf_aligned;
  r.dkim_aligned = dkim_aligned;
  if (items.size() > std::tuple_size_v<dmarc_fields>) {
    r.from_domains = checks::author_domain_list(items[8].cast<std::vector<std::string>>());
    r.unusable_from = items[9].cast<bool>();
    r.arc_aligned = items[10].cast<bool>();
  }
  j.dmarc = std::move(r);
}

// (result, domain, policy, disposition, org_domain, pct, spf_aligned,
// dkim_aligned, from_domains, unusable_from, arc_aligned), policy and
// disposition None when no record applies, from_domains a tuple; or None
// without a DMARC check.
py::object dmarc_tuple(const policy_job& j) {
  if (!j.dmarc) return py::none();
  const auto& d = *j.dmarc;
  const auto& domains = d.from_domains.get();
  py::tuple from_domains(domains.size());
  for (std::size_t i = 0; i < domains.size(); ++i) from_domains[i] = py::str(domains[i]);
  return py::make_tuple(std::string(checks::to_string(d.result)), d.domain, policy_name(d.policy),
                        policy_name(d.disposition), d.org_domain, d.pct, d.spf_aligned, d.dkim_aligned,
                        std::move(from_domains), d.unusable_from, d.arc_aligned);
}

void set_arc(policy_job& j, const py::object& t) {
  if (t.is_none()) {
    j.arc.reset();
    return;
  }
  using k = checks::arc_result::kind;
  auto [result, instances, sealers] = t.cast<std::tuple<std::string, unsigned, std::vector<std::string>>>();
  checks::arc_result r;
  r.result = kind_named(result, {k::none, k::pass, k::fail}, "ARC");
  r.instances = instances;
  r.sealers = std::move(sealers);
  j.arc = std::move(r);
}

// (result, instances, (sealer domain, ...)), or None without an ARC check.
py::object arc_tuple(const policy_job& j) {
  if (!j.arc) return py::none();
  py::tuple sealers(j.arc->sealers.size());
  for (std::size_t i = 0; i < j.arc->sealers.size(); ++i) sealers[i] = py::str(j.arc->sealers[i]);
  return py::make_tuple(std::string(checks::to_string(j.arc->result)), j.arc->instances, std::move(sealers));
}

// (result, domain, explanation or None), or None without an SPF check.
py::object spf_tuple(const policy_job& j) {
  if (!j.spf) return py::none();
  return py::make_tuple(std::string(checks::to_string(j.spf->result)), j.spf->domain, none_if_empty(j.spf->explanation));
}

// [(result, domain, selector), ...] in the message's order, or None without a DKIM check.
py::object dkim_list(const policy_job& j) {
  if (!j.dkim) return py::none();
  py::list out;
  for (const auto& s : *j.dkim) out.append(py::make_tuple(std::string(checks::to_string(s.result)), s.domain, s.selector));
  return out;
}

}  // namespace

py::bytes message_bytes(const message_store& m) {
  auto out = py::reinterpret_steal<py::bytes>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(m.size())));
  if (!out) throw py::error_already_set();
  m.read_into(PyBytes_AS_STRING(out.ptr()));
  return out;
}

py::object envelope_tuple(const policy_job& j) {
  if (!j.has_tx) return py::none();
  py::list recipients(j.recipients.size());
  for (std::size_t i = 0; i < j.recipients.size(); ++i) recipients[i] = address_parts(j.recipients[i]);
  return py::make_tuple(j.tx_id, address_parts(j.sender), params_dict(j.sender_params), std::move(recipients),
                        j.smtputf8, j.body_8bit, spf_tuple(j), dkim_list(j), dmarc_tuple(j), arc_tuple(j));
}

namespace {

// A result's bytes (the message, or fields for its top): bytes or None in Python.
template <std::optional<std::string> policy_result::*Field>
py::object bytes_field(const policy_result& r) {
  if (!(r.*Field)) return py::none();
  return py::bytes(*(r.*Field));
}
template <std::optional<std::string> policy_result::*Field>
void set_bytes_field(policy_result& r, const py::object& raw) {
  if (raw.is_none()) {
    (r.*Field).reset();
  } else {
    r.*Field = raw.cast<std::string>();
  }
}

// The stage's own arguments: what its hooks get besides conn or tx.
py::object arguments_tuple(const policy_job& j) {
  switch (j.stage) {
    case policy_stage::helo: return py::str(j.hostname);
    case policy_stage::auth: return py::make_tuple(j.mechanism, j.username, j.password);
    case policy_stage::rcpt: return py::make_tuple(address_parts(j.rcpt), params_dict(j.rcpt_params));
    case policy_stage::delivered: return py::make_tuple(j.reply_code, j.reply_status, j.reply_text);
    default: return py::none();
  }
}

}  // namespace

void define_protocol(py::module_& m) {
  py::class_<policy_job>(m, "Job", "One hook stage's input from the daemon (docs/policy-engine.md).")
      .def(py::init<>())
      .def_property(
          "stage", [](const policy_job& j) { return stage_str(j.stage); },
          [](policy_job& j, std::string_view s) { j.stage = stage_from(s); })
      .def_readwrite("generation", &policy_job::generation)
      .def_readwrite("session_id", &policy_job::session_id)
      .def_readwrite("client_ip", &policy_job::client_ip)
      .def_readwrite("client_port", &policy_job::client_port)
      .def_readwrite("helo", &policy_job::helo)
      .def_readwrite("tls", &policy_job::tls)
      .def_readwrite("tls_version", &policy_job::tls_version)
      .def_readwrite("tls_cipher", &policy_job::tls_cipher)
      .def_readwrite("auth_user", &policy_job::auth_user)
      .def_readwrite("has_tx", &policy_job::has_tx)
      .def_readwrite("fresh_transaction", &policy_job::fresh_transaction)
      .def_readwrite("tx_id", &policy_job::tx_id)
      .def_property(
          "sender", [](const policy_job& j) { return j.sender.str(); },
          [](policy_job& j, const std::string& s) { j.sender = address_of(s); })
      .def_property(
          "sender_params", [](const policy_job& j) { return params_dict(j.sender_params); },
          [](policy_job& j, const py::dict& d) { j.sender_params = params_from(d); })
      .def_property(
          "recipients", [](const policy_job& j) { return address_texts(j.recipients); },
          [](policy_job& j, const std::vector<std::string>& list) { j.recipients = addresses_of(list); })
      .def_readwrite("smtputf8", &policy_job::smtputf8)
      .def_property("spf", spf_tuple, set_spf)
      .def_property("dkim", dkim_list, set_dkim)
      .def_property("dmarc", dmarc_tuple, set_dmarc)
      .def_property("arc", arc_tuple, set_arc)
      .def_readwrite("body_8bit", &policy_job::body_8bit)
      .def_readwrite("hostname", &policy_job::hostname)
      .def_readwrite("mechanism", &policy_job::mechanism)
      .def_readwrite("username", &policy_job::username)
      .def_readwrite("password", &policy_job::password)
      .def_property(
          "rcpt", [](const policy_job& j) { return j.rcpt.str(); },
          [](policy_job& j, const std::string& s) { j.rcpt = address_of(s); })
      .def_property(
          "rcpt_params", [](const policy_job& j) { return params_dict(j.rcpt_params); },
          [](policy_job& j, const py::dict& d) { j.rcpt_params = params_from(d); })
      .def_readwrite("reply_code", &policy_job::reply_code)
      .def_readwrite("reply_status", &policy_job::reply_status)
      .def_readwrite("reply_text", &policy_job::reply_text)
      .def_property(
          "message",
          [](const policy_job& j) -> py::object {
            if (!j.message) return py::none();
            return message_bytes(*j.message);  // a spilled message is read from its file here
          },
          [](policy_job& j, const py::object& raw) {
            j.message = raw.is_none() ? nullptr
                                      : message_store::wrap(std::make_shared<const std::string>(raw.cast<std::string>()));
          })
      .def(
          "state",
          [](const policy_job& j) {
            return py::make_tuple(stage_str(j.stage), connection_tuple(j), envelope_tuple(j), arguments_tuple(j));
          },
          "(stage, connection, envelope, arguments): what every job needs, in one call. connection: (id, "
          "client_ip, client_port, helo, tls, tls_version, tls_cipher, auth_user), None for what is unset; "
          "envelope: None outside a transaction, else (tx id, sender, sender_params, recipients, smtputf8, "
          "body_8bit, spf, dkim, dmarc, arc), spf being None or (result, domain, explanation), dkim None or [(result, "
          "domain, selector), ...], dmarc None or (result, domain, policy, disposition, org_domain, pct, "
          "spf_aligned, dkim_aligned, from_domains, unusable_from, arc_aligned), arc None or (result, instances, sealers); arguments: the stage's own (helo: hostname; auth: (mechanism, username, password); rcpt: "
          "(recipient, rcpt_params); delivered: (code, status, text)), else None; each address as (local part, domain).");

  py::class_<policy_reply>(m, "VerdictReply", "A verdict as the daemon applies it (kind, code, status, text).")
      .def(py::init<>())
      .def(py::init([](std::string kind, int code, std::string status, std::optional<std::string> text,
                       std::vector<std::string> addresses) {
             return policy_reply{std::move(kind), code, std::move(status), std::move(text), std::move(addresses)};
           }),
           py::arg("kind"), py::arg("code"), py::arg("status"), py::arg("text") = py::none(),
           py::arg("addresses") = std::vector<std::string>{})
      .def_readwrite("kind", &policy_reply::kind)
      .def_readwrite("code", &policy_reply::code)
      .def_readwrite("status", &policy_reply::status)
      .def_readwrite("text", &policy_reply::text)
      .def_readwrite("addresses", &policy_reply::addresses);

  py::class_<policy_result>(m, "Result", "A hook stage's outcome for the daemon; None stands for the empty one.")
      .def(py::init<>())
      .def_readwrite("error", &policy_result::error)
      .def_readwrite("verdict", &policy_result::verdict)
      .def_readwrite("auth", &policy_result::auth)
      .def_readwrite("sender", &policy_result::sender)
      .def_readwrite("recipients", &policy_result::recipients)
      .def_readwrite("dkim_sign", &policy_result::dkim_sign)
      .def_readwrite("arc_seal", &policy_result::arc_seal)
      .def_readwrite("decided_by", &policy_result::decided_by,
                     "the policy file whose hook gave the verdict or the error (for the daemon's log)")
      .def_property("message", &bytes_field<&policy_result::message>, &set_bytes_field<&policy_result::message>)
      .def_property("message_prefix", &bytes_field<&policy_result::message_prefix>,
                    &set_bytes_field<&policy_result::message_prefix>,
                    "header fields put on top of the message as received (whole CRLF-ended fields), instead of `message`; "
                    "with message_keep_from, a whole header section")
      .def_readwrite("message_keep_from", &policy_result::message_keep_from,
                     "0: message_prefix goes on top of the whole message as received; else the byte of it (its "
                     "body's first) that follows message_prefix")
      .def_readwrite("generation", &policy_result::generation)
      .def_property(
          "hook_counts", [](const policy_result& r) { return std::vector<unsigned>(r.hooks.count.begin(), r.hooks.count.end()); },
          [](policy_result& r, const std::vector<unsigned>& counts) {
            if (counts.size() != policy_stage_count) throw py::value_error("one count per stage");
            std::copy(counts.begin(), counts.end(), r.hooks.count.begin());
          })
      .def_property(
          "async_only", [](const policy_result& r) { return r.hooks.async_only; },
          [](policy_result& r, std::uint32_t mask) { r.hooks.async_only = mask; })
      .def_property(
          "any_async", [](const policy_result& r) { return r.hooks.any_async; },
          [](policy_result& r, std::uint32_t mask) { r.hooks.any_async = mask; });

  m.attr("STAGES") = py::cast(std::vector<std::string>(policy_stage_names.begin(), policy_stage_names.end()));
}

}  // namespace portcullis::bindings
