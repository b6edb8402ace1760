#include "smtp/message_header.hpp"

#include "smtp/text.hpp"

namespace portcullis::smtp {

std::string_view header_field_name(std::string_view field) {
  const auto colon = field.find(':');
  if (colon == std::string_view::npos) return {};
  auto name = field.substr(0, colon);
  while (!name.empty() && is_wsp(name.back())) name.remove_suffix(1);
  return name;
}

std::string header_field_value(std::string_view field) {
  const auto colon = field.find(':');
  if (colon == std::string_view::npos) return {};
  return without_bytes(field.substr(colon + 1), is_line_end);  // unfolded
}

namespace {

// The lexical tokens of RFC 5322 §3.2 that an address list is made of;
// comments and white space (CFWS) are dropped between them.
struct token {
  enum class kind { word, quoted, literal, special } what;
  std::string text;  // word: atext and dots; literal: "[...]"; special: the one character
};

constexpr std::string_view specials = "()<>[]:;@\\,.\"";

bool is_atext(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x80) return true;  // UTF-8 (RFC 6532 §3.2)
  return u > 0x20 && u < 0x7F && specials.find(c) == std::string_view::npos;
}

std::optional<std::vector<token>> tokenize(std::string_view s) {
  std::vector<token> out;
  std::size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (is_fws(c)) {
      ++i;
    } else if (c == '(') {  // a comment, nested (RFC 5322 §3.2.2)
      int depth = 0;
      for (; i < s.size(); ++i) {
        if (s[i] == '\\') {
          ++i;
        } else if (s[i] == '(') {
          ++depth;
        } else if (s[i] == ')' && --depth == 0) {
          break;
        }
      }
      if (i >= s.size()) return std::nullopt;  // unclosed
      ++i;
    } else if (c == '"') {
      std::string text;
      for (++i; i < s.size() && s[i] != '"'; ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) ++i;
        text += s[i];
      }
      if (i >= s.size()) return std::nullopt;
      ++i;
      out.push_back({token::kind::quoted, std::move(text)});
    } else if (c == '[') {
      const auto close = s.find(']', i);
      if (close == std::string_view::npos) return std::nullopt;
      out.push_back({token::kind::literal, std::string(s.substr(i, close + 1 - i))});
      i = close + 1;
    } else if (is_atext(c) || c == '.') {
      std::string text;
      while (i < s.size() && (is_atext(s[i]) || s[i] == '.')) text += s[i++];
      // Dots join atoms into one word (dot-atom, and obs-local-part's words).
      if (!out.empty() && out.back().what == token::kind::word &&
          (out.back().text.back() == '.' || text.front() == '.'))
        out.back().text += text;
      else
        out.push_back({token::kind::word, std::move(text)});
    } else if (std::string_view("<>:;@,").find(c) != std::string_view::npos) {
      out.push_back({token::kind::special, std::string(1, c)});
      ++i;
    } else {
      return std::nullopt;  // ')', ']', '\\' or a control character out of place
    }
  }
  return out;
}

bool is_special(const token& t, char c) { return t.what == token::kind::special && t.text[0] == c; }

bool valid_dot_atom(std::string_view s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  return s.find("..") == std::string_view::npos;
}

// addr-spec from tokens [b, e): local-part "@" domain; the domain, lower-cased.
std::optional<std::string> addr_spec_domain(const std::vector<token>& t, std::size_t b, std::size_t e) {
  if (e - b < 3 || !is_special(t[e - 2], '@')) return std::nullopt;
  for (std::size_t i = b; i < e - 2; ++i)  // local-part: words and quoted strings
    if (t[i].what != token::kind::word && t[i].what != token::kind::quoted) return std::nullopt;
  const token& domain = t[e - 1];
  if (domain.what == token::kind::literal) return to_lower(domain.text);
  if (domain.what != token::kind::word || !valid_dot_atom(domain.text)) return std::nullopt;
  return to_lower(domain.text);
}

// One mailbox from tokens [b, e): name-addr or addr-spec.
std::optional<std::string> mailbox_domain(const std::vector<token>& t, std::size_t b, std::size_t e) {
  std::size_t open = e;
  for (std::size_t i = b; i < e; ++i)
    if (is_special(t[i], '<')) {
      open = i;
      break;
    }
  if (open == e) return addr_spec_domain(t, b, e);
  for (std::size_t i = b; i < open; ++i)  // the display name: words and quoted strings
    if (t[i].what != token::kind::word && t[i].what != token::kind::quoted) return std::nullopt;
  if (!is_special(t[e - 1], '>') || e - 1 <= open) return std::nullopt;
  std::size_t start = open + 1;
  for (std::size_t i = start; i < e - 1; ++i)  // an obsolete route ("@a,@b:") before the address
    if (is_special(t[i], ':')) start = i + 1;
  return addr_spec_domain(t, start, e - 1);
}

}  // namespace

std::optional<std::vector<std::string>> mailbox_domains(std::string_view value) {
  const auto tokens = tokenize(value);
  if (!tokens) return std::nullopt;
  const auto& t = *tokens;
  std::vector<std::string> out;
  bool in_group = false;
  std::size_t b = 0;
  bool in_angle = false;
  const auto take = [&](std::size_t e) {
    if (e == b) return true;  // an empty element (obs-mbox-list)
    auto d = mailbox_domain(t, b, e);
    if (!d) return false;
    out.push_back(std::move(*d));
    return true;
  };
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (is_special(t[i], '<')) in_angle = true;
    if (is_special(t[i], '>')) in_angle = false;
    if (in_angle) continue;
    if (is_special(t[i], ':') && !in_group) {  // "display-name:" opens a group
      for (std::size_t k = b; k < i; ++k)
        if (t[k].what != token::kind::word && t[k].what != token::kind::quoted) return std::nullopt;
      if (i == b) return std::nullopt;
      in_group = true;
      b = i + 1;
    } else if (is_special(t[i], ';') && in_group) {
      if (!take(i)) return std::nullopt;
      in_group = false;
      b = i + 1;
    } else if (is_special(t[i], ',')) {
      if (!take(i)) return std::nullopt;
      b = i + 1;
    }
  }
  if (in_group || in_angle || !take(t.size())) return std::nullopt;
  if (out.empty()) return std::nullopt;
  return out;
}

}  // namespace portcullis::smtp
