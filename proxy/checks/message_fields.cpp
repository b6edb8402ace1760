#include "checks/message_fields.hpp"

#include <algorithm>
#include <stdexcept>

#include "checks/idna_domain.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

std::optional<std::vector<std::string>> header_values(const message_store& message, std::string_view name,
                                                      std::size_t max_header) {
  std::vector<std::string> out;
  smtp::header_reader header;
  const auto on_field = [&](std::string_view field) {
    if (smtp::equals_nocase(smtp::header_field_name(field), name)) out.push_back(smtp::header_field_value(field));
  };
  message_store::reader in(message);
  std::size_t read = 0;  // of the header section
  for (auto chunk = in.next(); !chunk.empty(); chunk = in.next()) {
    // Never more than max_header bytes to the reader, which holds a field until it ends.
    const auto piece = chunk.substr(0, max_header - read);
    read += header.feed(piece, on_field);
    if (header.done()) break;
    if (read >= max_header && !(piece.size() == chunk.size() && in.at_end())) return std::nullopt;
  }
  if (in.failed()) throw std::runtime_error("the message could not be read: " + in.error());
  header.finish(on_field);
  return out;
}

namespace {

bool is_atext(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || (u > 0x20 && u < 0x7F && std::string_view("()<>[]:;@\\,.\"").find(c) == std::string_view::npos);
}

// The value with the root dot of each absolute domain name dropped: a "."
// after a word's last character where a mailbox's domain may end (the
// value's end, white space, ">", ",", ";" or a comment), outside quoted
// strings, comments and domain literals. smtp::mailbox_domains takes RFC
// 5322's dot-atom, which has no final dot, and would refuse the whole From;
// the name is the same DNS name without it. (Such a dot in a display name or
// a local part goes too: neither is looked at.)
std::string without_root_dots(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  int comment = 0;  // depth
  bool quoted = false, literal = false;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const char c = v[i];
    if (comment > 0 || quoted) {
      out += c;
      if (c == '\\' && i + 1 < v.size()) {
        out += v[++i];
      } else if (quoted) {
        quoted = c != '"';
      } else if (c == '(') {
        ++comment;
      } else if (c == ')') {
        --comment;
      }
      continue;
    }
    if (literal) {
      out += c;
      literal = c != ']';
      continue;
    }
    if (c == '(') {
      comment = 1;
    } else if (c == '"') {
      quoted = true;
    } else if (c == '[') {
      literal = true;
    } else if (c == '.' && i > 0 && is_atext(v[i - 1]) &&
               (i + 1 == v.size() || smtp::is_fws(v[i + 1]) ||
                std::string_view(">,;(").find(v[i + 1]) != std::string_view::npos)) {
      continue;
    }
    out += c;
  }
  return out;
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// An internationalized domain (an SMTPUTF8 message) in A-labels, as DNS has
// it and SPF, DKIM and [dkim_sign] name it (RFC 8616 §4-5); an ASCII one is
// in them already (and mailbox_domains lower-cased it).
std::optional<std::string> in_a_labels(const std::string& domain, std::string& problem) {
  if (is_ascii(domain)) return domain;
  auto ascii = a_label_domain(domain);
  if (!ascii) {
    problem = "a From domain is not a valid internationalized domain name (IDNA2008)";
    return std::nullopt;
  }
  return smtp::to_lower(*ascii);
}

}  // namespace

std::optional<std::vector<std::string>> author_domains(const std::vector<std::string>& from_values,
                                                       std::string& problem, std::size_t max_domains) {
  if (from_values.empty()) {
    problem = "no From field";
    return std::nullopt;
  }
  std::vector<std::string> out;
  for (const auto& value : from_values) {
    const auto domains = smtp::mailbox_domains(without_root_dots(value));
    if (!domains) {
      problem = "the From field is not a list of mailboxes";
      return std::nullopt;
    }
    for (const auto& d : *domains) {
      if (d.front() == '[') {
        problem = "a From domain is an address literal";
        return std::nullopt;
      }
      auto name = in_a_labels(d, problem);
      if (!name) return std::nullopt;
      if (std::find(out.begin(), out.end(), *name) != out.end()) continue;
      if (out.size() >= max_domains) {
        problem = "the From field names more than " + std::to_string(max_domains) + " domains";
        return std::nullopt;
      }
      out.push_back(std::move(*name));
    }
  }
  return out;
}

std::optional<std::string> author_domain(const std::vector<std::string>& from_values, std::string& problem) {
  if (from_values.size() != 1) {
    problem = from_values.empty() ? "no From field" : std::to_string(from_values.size()) + " From fields";
    return std::nullopt;
  }
  const auto domains = smtp::mailbox_domains(without_root_dots(from_values.front()));
  if (!domains) {
    problem = "the From field is not a list of mailboxes";
    return std::nullopt;
  }
  for (const auto& d : *domains) {
    if (d != domains->front()) {
      problem = "the From field names several domains";
      return std::nullopt;
    }
  }
  return in_a_labels(domains->front(), problem);
}

}  // namespace portcullis::checks
