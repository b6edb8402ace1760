#include "checks/dkim_fields.hpp"

#include <algorithm>
#include <charconv>
#include <limits>

#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

using smtp::is_fws;

std::string_view trim_fws(std::string_view s) { return smtp::trimmed(s, is_fws); }

std::string without_fws(std::string_view s) { return smtp::without_bytes(s, is_fws); }

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// tag-name = ALPHA *ALNUMPUNC (§3.2)
bool is_tag_name(std::string_view s) {
  if (s.empty() || !is_alpha(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return is_alpha(c) || is_digit(c) || c == '_'; });
}

// base64 (RFC 2045 §6.8) with the whitespace taken out: groups of four, "=" only at the end.
bool is_base64(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) return false;
  const auto pad = s.find('=');
  if (pad != std::string_view::npos && (pad + 2 < s.size() || s.find_first_not_of('=', pad) != std::string_view::npos))
    return false;
  return std::all_of(s.begin(), s.begin() + static_cast<long>(std::min(pad, s.size())), [](char c) {
    return is_alpha(c) || is_digit(c) || c == '+' || c == '/';
  });
}

std::optional<std::string_view> tag(const dkim_tags& tags, std::string_view name) {
  for (const auto& [n, v] : tags) {
    if (n == name) return v;
  }
  return std::nullopt;
}

// A colon-separated list (h=, q=, the key's h=, s=, t=), each item without FWS around it.
std::vector<std::string_view> colon_list(std::string_view s) {
  std::vector<std::string_view> out;
  for (std::size_t start = 0;;) {
    const auto colon = s.find(':', start);
    out.push_back(trim_fws(s.substr(start, colon - start)));
    if (colon == std::string_view::npos) return out;
    start = colon + 1;
  }
}

bool lists(std::string_view list, std::string_view item) {
  const auto items = colon_list(list);
  return std::any_of(items.begin(), items.end(), [&](std::string_view i) { return smtp::equals_nocase(i, item); });
}

// 1*DIGIT as a number (a value past the type's range: its maximum).
template <class Int>
std::optional<Int> decimal(std::string_view s, std::size_t max_digits) {
  if (s.empty() || s.size() > max_digits || !std::all_of(s.begin(), s.end(), is_digit)) return std::nullopt;
  Int n = 0;
  if (std::from_chars(s.data(), s.data() + s.size(), n).ec != std::errc{}) n = std::numeric_limits<Int>::max();
  return n;
}

std::optional<dkim_canonicalization> canonicalization(std::string_view s) {
  if (s == "simple") return dkim_canonicalization::simple;
  if (s == "relaxed") return dkim_canonicalization::relaxed;
  return std::nullopt;
}

// d=: a domain name; no specials, no whitespace, no empty label.
bool is_domain(std::string_view d) {
  if (d.empty() || d.front() == '.' || d.back() == '.' || d.find("..") != std::string_view::npos) return false;
  return std::none_of(d.begin(), d.end(), [](char c) {
    return is_fws(c) || std::string_view("()<>[]:;@\\,\"").find(c) != std::string_view::npos ||
           static_cast<unsigned char>(c) < 0x21 || c == 0x7f;
  });
}

// A required tag: its value, or "" with `problem` set (missing / empty).
std::optional<std::string_view> required(const dkim_tags& tags, std::string_view name, std::string_view what,
                                         std::string& problem) {
  const auto v = tag(tags, name);
  if (!v) {
    problem = std::string(what) + " missing";
  } else if (v->empty()) {
    problem = std::string(what) + " empty";
  } else {
    return v;
  }
  return std::nullopt;
}

}  // namespace

std::optional<dkim_tags> parse_dkim_tags(std::string_view list, std::string& error) {
  dkim_tags tags;
  for (std::size_t start = 0; start <= list.size();) {
    auto semicolon = list.find(';', start);
    if (semicolon == std::string_view::npos) semicolon = list.size();
    const auto spec = trim_fws(list.substr(start, semicolon - start));
    const bool last = semicolon >= list.size();
    start = semicolon + 1;
    if (spec.empty()) {
      if (last) break;  // a final ";" (or an empty list)
      error = "an empty tag";
      return std::nullopt;
    }
    const auto equals = spec.find('=');
    if (equals == std::string_view::npos) {
      error = "a tag without \"=\"";
      return std::nullopt;
    }
    const auto name = trim_fws(spec.substr(0, equals));
    if (!is_tag_name(name)) {
      error = "a malformed tag name";
      return std::nullopt;
    }
    tags.emplace_back(name, trim_fws(spec.substr(equals + 1)));
  }
  std::vector<std::string_view> names;
  for (const auto& t : tags) names.push_back(t.first);
  std::sort(names.begin(), names.end());
  if (const auto twice = std::adjacent_find(names.begin(), names.end()); twice != names.end()) {
    error = "the tag " + std::string(*twice) + "= twice";
    return std::nullopt;
  }
  return tags;
}

// A DKIM-Signature's or ARC-Message-Signature's h=, i=, l= and q= (a seal has none of them).
std::string parse_covered(const dkim_tags& tags, dkim_signature_fields& out, bool dkim) {
  std::string problem;
  const auto h = required(tags, "h", "header list", problem);
  if (!h) return problem;
  for (auto name : colon_list(*h)) {
    if (name.empty()) return "header list invalid";
    out.headers.push_back(smtp::to_lower(name));
  }
  if (std::find(out.headers.begin(), out.headers.end(), "from") == out.headers.end())
    return "header list does not cover From";
  // RFC 8617 §4.1.2: a message signature never covers seals (they come after it).
  if (!dkim && std::find(out.headers.begin(), out.headers.end(), "arc-seal") != out.headers.end())
    return "header list covers ARC-Seal";
  if (const auto i = tag(tags, "i"); i && dkim) {
    const auto at = i->rfind('@');
    if (at == std::string_view::npos) return "identity (i=) invalid";
    out.identity_domain = smtp::to_lower(i->substr(at + 1));
    const bool covered = out.identity_domain == out.domain ||
                         (out.identity_domain.size() > out.domain.size() &&
                          out.identity_domain.ends_with("." + out.domain));
    if (!covered) return "invalid domain coverage";
  }
  if (const auto l = tag(tags, "l")) {
    out.length = decimal<std::uint64_t>(*l, 76);
    if (!out.length) return "body length value invalid";
  }
  if (const auto q = tag(tags, "q"); q && !lists(*q, "dns/txt")) return "query method invalid";
  return "";
}

std::string parse_dkim_signature(std::string_view value, dkim_signature_fields& out, dkim_signature_kind kind) {
  const bool dkim = kind == dkim_signature_kind::dkim;
  const bool seal = kind == dkim_signature_kind::arc_seal;
  std::string problem;
  const auto tags = parse_dkim_tags(value, problem);
  if (!tags) return "signature syntax: " + problem;
  // Named first, so that a broken signature still says whose it is.
  if (const auto d = tag(*tags, "d")) out.domain = smtp::to_lower(*d);
  if (const auto s = tag(*tags, "s")) out.selector = std::string(*s);

  if (dkim) {
    const auto v = required(*tags, "v", "version", problem);
    if (!v) return problem;
    if (*v != "1") return "unsupported signature version";
  } else {
    const auto i = required(*tags, "i", "instance", problem);
    if (!i) return problem;
    const auto n = decimal<unsigned>(*i, 2);
    if (!n || *n < 1 || *n > max_arc_instance) return "instance (i=) invalid";
    out.instance = *n;
  }
  const auto a = required(*tags, "a", "signature algorithm", problem);
  if (!a) return problem;
  if (*a == "rsa-sha1") return "rsa-sha1 is not accepted (RFC 8301)";
  if (*a != "rsa-sha256" && *a != "ed25519-sha256") return "signature algorithm invalid";
  out.algorithm = std::string(*a);
  const auto b = required(*tags, "b", "signature data", problem);
  if (!b) return problem;
  out.signature = without_fws(*b);
  if (!is_base64(out.signature)) return "signature data corrupt";
  if (seal) {
    // RFC 8617 §4.1.3: relaxed header canonicalization, no body, no h=.
    const auto cv = required(*tags, "cv", "chain validation status", problem);
    if (!cv) return problem;
    if (*cv != "none" && *cv != "fail" && *cv != "pass") return "chain validation status (cv=) invalid";
    out.chain_status = std::string(*cv);
    if (tag(*tags, "h")) return "h= in an ARC-Seal";
    out.header_canon = dkim_canonicalization::relaxed;
  } else {
    const auto bh = required(*tags, "bh", "body hash", problem);
    if (!bh) return problem;
    out.body_hash = without_fws(*bh);
    if (!is_base64(out.body_hash)) return "body hash corrupt";
    if (const auto c = tag(*tags, "c")) {
      const auto slash = c->find('/');
      const auto header = canonicalization(c->substr(0, slash));
      if (!header) return "invalid header canonicalization";
      out.header_canon = *header;
      if (slash != std::string_view::npos) {
        const auto body = canonicalization(c->substr(slash + 1));
        if (!body) return "invalid body canonicalization";
        out.body_canon = *body;
      }
    }
  }
  if (!required(*tags, "d", "domain tag", problem)) return problem;
  if (!is_domain(out.domain)) return "domain tag invalid";
  if (!required(*tags, "s", "selector tag", problem)) return problem;
  out.identity_domain = out.domain;
  if (!seal) {
    if (auto p = parse_covered(*tags, out, dkim); !p.empty()) return p;
  }
  if (const auto t = tag(*tags, "t")) {
    out.timestamp = decimal<std::int64_t>(*t, 12);
    if (!out.timestamp) return "timestamp (t=) invalid";
  }
  if (const auto x = tag(*tags, "x")) {
    out.expires = decimal<std::int64_t>(*x, 12);
    if (!out.expires) return "expiration (x=) invalid";
  }
  return "";
}

std::optional<unsigned> arc_results_instance(std::string_view value) {
  value = trim_fws(value);
  if (value.empty() || (value.front() != 'i' && value.front() != 'I')) return std::nullopt;
  value = trim_fws(value.substr(1));
  if (value.empty() || value.front() != '=') return std::nullopt;
  value = trim_fws(value.substr(1));
  const auto semicolon = value.find(';');
  if (semicolon == std::string_view::npos) return std::nullopt;
  const auto n = decimal<unsigned>(trim_fws(value.substr(0, semicolon)), 2);
  if (!n || *n < 1 || *n > max_arc_instance) return std::nullopt;
  return n;
}

std::string check_dkim_times(const dkim_signature_fields& sig, std::int64_t now, std::int64_t drift) {
  // x= "MUST be greater than" t= (RFC 6376 §3.5): equal is no more valid than earlier.
  if (sig.timestamp && sig.expires && *sig.expires <= *sig.timestamp) return "signature timestamp order error";
  if (sig.expires && *sig.expires < now) return "signature expired";
  if (sig.timestamp && *sig.timestamp > now + drift) return "signature timestamp in the future";
  return "";
}

std::string parse_dkim_key(std::string_view record, dkim_key_fields& out) {
  std::string problem;
  const auto tags = parse_dkim_tags(record, problem);
  if (!tags) return "key record syntax: " + problem;
  if (const auto v = tag(*tags, "v"); v && *v != "DKIM1") return "unknown key version";
  if (const auto h = tag(*tags, "h"); h && !lists(*h, "sha256")) return "signature-key hash mismatch";
  if (const auto k = tag(*tags, "k")) {
    if (*k == "rsa") {
      out.key_type = dkim_key_fields::type::rsa;
    } else if (*k == "ed25519") {
      out.key_type = dkim_key_fields::type::ed25519;
    } else {
      return "unknown key type";
    }
  }
  if (const auto s = tag(*tags, "s"); s && !lists(*s, "*") && !lists(*s, "email")) return "not an e-mail key";
  if (const auto t = tag(*tags, "t")) {
    out.testing = lists(*t, "y");
    out.strict = lists(*t, "s");
  }
  const auto p = tag(*tags, "p");
  if (!p) return "key record without p=";
  out.key = without_fws(*p);
  if (out.key.empty()) return "key revoked";
  if (!is_base64(out.key)) return "key data corrupt";
  return "";
}

}  // namespace portcullis::checks
