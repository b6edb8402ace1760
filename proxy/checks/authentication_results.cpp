#include "checks/authentication_results.hpp"

#include <algorithm>

#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

constexpr std::string_view field_name = "Authentication-Results";
// Enough of a field to read its name and authserv-id: comments before the
// id are CFWS and may be long, but a longer run of them is no id of ours.
constexpr std::size_t kept_field_bytes = 2048;
constexpr std::size_t max_reason = 200;

// A MIME token (RFC 2045 §5.1), which RFC 8601 §2.2 takes for a value.
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7F || std::string_view("()<>@,;:\\\"/[]?=").find(c) != std::string_view::npos) return false;
  }
  return true;
}

// A value as RFC 8601 writes it: a token, or a quoted-string of printable
// ASCII, of at most `max` octets and its quotes (escapes count: a d= of 300
// '"' made a line of 1,100 octets, past RFC 5322's 998, and the upstream
// refused the message).
std::string value(std::string_view s, std::size_t max = 255) {
  if (is_token(s) && s.size() <= max) return std::string(s);
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    const bool escaped = s[i] == '"' || s[i] == '\\';
    if (out.size() + (escaped ? 2 : 1) > max + 1) break;  // (never half an escape)
    if (escaped) out += '\\';
    out += (u >= 0x20 && u < 0x7F) ? s[i] : '?';
  }
  return out + "\"";
}

// Skips CFWS (RFC 5322 §3.2.2): white space, folding, nested comments.
std::size_t skip_cfws(std::string_view s, std::size_t i) {
  cfws_reader cfws;
  while (i < s.size() && cfws.takes(s[i])) ++i;
  return i;
}

}  // namespace

std::string authserv_id_of(std::string_view v) {
  std::size_t i = skip_cfws(v, 0);
  std::string id;
  if (i < v.size() && v[i] == '"') {
    for (++i; i < v.size() && v[i] != '"'; ++i) {
      if (v[i] == '\\' && i + 1 < v.size()) ++i;
      if (v[i] != '\r' && v[i] != '\n') id += v[i];
    }
    return id;
  }
  while (i < v.size() && !smtp::is_wsp(v[i]) && v[i] != ';' && v[i] != '(' && v[i] != '\r' && v[i] != '\n') id += v[i++];
  return id;
}

namespace {

// RFC 8601 §2.2's Keyword (letters, digits, "-"), and a property name's
// characters (special-smtp-verb and Keyword, "_" as some write them).
bool is_keyword_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// A reader of the parts of an Authentication-Results value.
struct results_reader {
  std::string_view v;
  std::size_t i = 0;

  bool at(char c) {
    i = skip_cfws(v, i);
    if (i >= v.size() || v[i] != c) return false;
    ++i;
    return true;
  }
  std::string keyword() {
    i = skip_cfws(v, i);
    const std::size_t start = i;
    while (i < v.size() && is_keyword_char(v[i])) ++i;
    return smtp::to_lower(v.substr(start, i - start));
  }
  // A value: a token, a quoted-string, or a pvalue's [local-part "@"] domain
  // (quoted parts unquoted), up to CFWS or ";".
  std::string value() {
    i = skip_cfws(v, i);
    std::string out;
    while (i < v.size() && !smtp::is_wsp(v[i]) && v[i] != '\r' && v[i] != '\n' && v[i] != ';' && v[i] != '(') {
      if (v[i] != '"') {
        out += v[i++];
        continue;
      }
      for (++i; i < v.size() && v[i] != '"'; ++i) {
        if (v[i] == '\\' && i + 1 < v.size()) ++i;
        out += v[i];
      }
      if (i < v.size()) ++i;  // the closing quote
    }
    return out;
  }
};

// The domain of a pvalue: after its last "@", if any.
std::string domain_of(std::string_view identity) {
  const auto at = identity.rfind('@');
  return smtp::to_lower(at == std::string_view::npos ? identity : identity.substr(at + 1));
}

}  // namespace

std::vector<reported_pass> reported_passes(std::string_view value, std::size_t max) {
  std::vector<reported_pass> out;
  results_reader in{value};
  in.value();  // the authserv-id
  in.i = skip_cfws(value, in.i);
  while (in.i < value.size() && value[in.i] >= '0' && value[in.i] <= '9') ++in.i;  // authres-version
  // Each resinfo: ";" method [ "/" version ] "=" result, then reasonspec and propspecs.
  while (out.size() < max && in.at(';')) {
    const std::string method = in.keyword();
    if (method.empty()) break;
    if (in.at('/')) in.keyword();
    if (!in.at('=')) break;  // ("none": no results)
    const std::string result = in.keyword();
    std::string d, i, mailfrom, helo, from;
    for (;;) {
      const std::size_t before = in.i;
      const std::string ptype = in.keyword();
      if (ptype.empty()) {
        in.i = before;
        break;
      }
      std::string property;
      if (ptype != "reason" && in.at('.')) property = in.keyword();
      if (!in.at('=')) return out;
      const std::string v = in.value();
      if (ptype == "header" && property == "d") d = v;
      if (ptype == "header" && property == "i") i = v;
      if (ptype == "header" && property == "from") from = v;
      if (ptype == "smtp" && property == "mailfrom") mailfrom = v;
      if (ptype == "smtp" && property == "helo") helo = v;
    }
    if (result != "pass") continue;
    std::string domain;
    if (method == "dkim") domain = domain_of(!d.empty() ? d : i);
    if (method == "spf") domain = domain_of(!mailfrom.empty() ? mailfrom : helo);
    if (method == "dmarc") domain = domain_of(from);
    if (domain.empty()) continue;
    reported_pass pass{method, std::move(domain)};
    if (std::find(out.begin(), out.end(), pass) == out.end()) out.push_back(std::move(pass));
  }
  return out;
}

std::string authentication_results_header(std::string_view authserv_id, const std::optional<spf_result>& spf,
                                          const std::optional<dkim_results>& dkim,
                                          const std::optional<dmarc_result>& dmarc,
                                          const std::optional<arc_result>& arc) {
  std::string h = std::string(field_name) + ": " + std::string(authserv_id) + ";";
  if (!spf && !dkim && !dmarc && !arc) return h + " none\r\n";  // §2.2: no method was applied
  std::string methods;
  const auto method = [&](std::string text) {
    if (!methods.empty()) methods += ";";
    methods += "\r\n\t" + text;
  };
  if (spf) {
    std::string m = "spf=" + std::string(to_string(spf->result));
    if (!spf->problem.empty()) m += " reason=" + value(spf->problem, max_reason);
    m += spf->helo ? " smtp.helo=" : " smtp.mailfrom=";
    method(m + value(spf->domain));
  }
  if (dkim && dkim->empty()) method("dkim=none");
  for (const auto& sig : dkim ? *dkim : dkim_results{}) {
    std::string m = "dkim=" + std::string(to_string(sig.result));
    if (!sig.problem.empty()) m += " reason=" + value(sig.problem, max_reason);
    // (An entry with no d= stands for no one signature: the ones past
    // [checks] dkim_signatures, or all of a header section too large.)
    if (!sig.domain.empty()) m += " header.d=" + value(sig.domain) + " header.s=" + value(sig.selector);
    method(m);
  }
  if (dmarc) {
    // RFC 7489 §11.2, with the policy and the disposition in a comment as OpenDMARC writes them.
    std::string m = "dmarc=" + std::string(to_string(dmarc->result));
    if (dmarc->policy != dmarc_result::policy_kind::unspecified)
      m += " (p=" + std::string(to_string(dmarc->policy)) + " dis=" + std::string(to_string(dmarc->disposition)) + ")";
    if (!dmarc->problem.empty()) m += " reason=" + value(dmarc->problem, max_reason);
    if (!dmarc->domain.empty()) m += " header.from=" + value(dmarc->domain);
    method(m);
  }
  if (arc) {
    // RFC 8617 §10.1 (the arc= of the set we may add takes its cv= from here).
    std::string m = "arc=" + std::string(to_string(arc->result));
    if (arc->result == arc_result::kind::fail && !arc->problem.empty()) m += " reason=" + value(arc->problem, max_reason);
    method(m);
  }
  return h + methods + "\r\n";
}

bool cfws_reader::takes(char c) {
  if (escaped) {
    escaped = false;
    return true;
  }
  if (depth > 0 && c == '\\') {
    escaped = true;
  } else if (c == '(') {
    ++depth;
  } else if (c == ')' && depth > 0) {
    --depth;
  } else {
    return depth > 0 || smtp::is_wsp(c) || c == '\r' || c == '\n';
  }
  return true;
}

claimed_results_finder::claimed_results_finder(std::string_view authserv_id) : authserv_id_(authserv_id) {}

void claimed_results_finder::end_field(std::uint64_t end) {
  if (!in_field_) return;
  in_field_ = false;
  const auto colon = field_.find(':');
  if (colon == std::string::npos) return;
  std::string_view name(field_.data(), colon);
  while (!name.empty() && smtp::is_wsp(name.back())) name.remove_suffix(1);  // RFC 5322 §4.5.3 (obsolete syntax)
  if (!smtp::equals_nocase(name, field_name)) return;
  if (smtp::equals_nocase(authserv_id_of(std::string_view(field_).substr(colon + 1)), authserv_id_))
    claimed_.emplace_back(field_start_, end);
}

void claimed_results_finder::keep(std::string_view piece) {
  for (std::size_t j = 0; j < piece.size() && field_.size() < kept_field_bytes; ++j) {
    const char c = piece[j];
    if (part_ == part::name) {
      // (A run of WSP kept as one: before the colon, RFC 5322 §4.5.3 allows any length.)
      if (!smtp::is_wsp(c) || field_.empty() || !smtp::is_wsp(field_.back())) field_ += c;
      if (c == ':') part_ = part::cfws;
      continue;
    }
    if (part_ == part::cfws) {
      if (cfws_.takes(c)) continue;
      part_ = part::id;
    }
    field_.append(piece.substr(j, std::min(piece.size() - j, kept_field_bytes - field_.size())));
    return;
  }
}

bool claimed_results_finder::feed(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    if (done_) return false;
    if (!at_line_start_) {
      // Inside a line: the rest of it at once, up to its LF (or the end of these bytes).
      const auto lf = bytes.find('\n', i);
      const auto end = lf == std::string_view::npos ? bytes.size() : lf + 1;
      if (in_field_) keep(bytes.substr(i, end - i));
      offset_ += end - i;
      at_line_start_ = lf != std::string_view::npos;
      i = end;
      continue;
    }
    const char c = bytes[i++];
    if (saw_cr_ && c == '\n') {  // the empty line: the header section ends
      end_field(offset_ - 1);
      done_ = true;
      ++offset_;
      return false;
    }
    if (c == '\r' && !saw_cr_) {
      saw_cr_ = true;
      ++offset_;
      continue;
    }
    if (!smtp::is_wsp(c)) {  // a new field (a WSP would fold the current one)
      end_field(offset_ - (saw_cr_ ? 1 : 0));
      in_field_ = true;
      field_start_ = offset_ - (saw_cr_ ? 1 : 0);
      field_.clear();
      part_ = part::name;
      cfws_ = {};
      if (saw_cr_) field_ += '\r';
    }
    saw_cr_ = false;
    at_line_start_ = c == '\n';
    if (in_field_) keep(std::string_view(&c, 1));
    ++offset_;
  }
  return !done_;
}

void claimed_results_finder::finish() {
  if (done_) return;
  end_field(offset_);
  done_ = true;
}

}  // namespace portcullis::checks
