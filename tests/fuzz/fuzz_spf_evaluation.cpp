// libFuzzer target: SPF evaluation whole, on hostile DNS answers. The daemon's
// own path: spf_checker::check_now -> our record validator (spf_record) ->
// libspf2 -> our DNS layer (spf_dns_layer), with the DNS answers drawn from
// the input instead of the resolver. Whatever the bytes: no crash, no
// sanitizer report, a valid result, no more lookups than the RFC 7208 §4.6.4
// limits allow, and the same result when checked again.
//
// The input is text, one item a line (seeds in corpus/spf_evaluation):
//   client 192.0.2.1            the client's address (v4, v6, IPv4-mapped)
//   helo mail.example.test      the HELO name
//   from user@example.test      the sender ("from" alone or "from <>": the null sender)
//   NAME TYPE VALUE             one record of the answer for NAME/TYPE (A, AAAA, MX, PTR, TXT)
//   NAME TYPE !STATUS           the answer's status: !nxdomain, !nodata, !timeout, !failure
// NAME "*" answers every name the table lacks; a name with no answer is
// NXDOMAIN. VALUE takes the escapes \\ \n \0 \xHH; other bytes are as given.
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "checks/spf_checker.hpp"
#include "dns/resolver.hpp"
#include "fuzz_check.hpp"
#include "smtp/text.hpp"

using namespace portcullis;

namespace {

using kind = checks::spf_result::kind;

// Small, so that inputs reach them; the bound below follows from them.
checks::spf_limits limits() {
  checks::spf_limits l;
  l.dns_terms = 4;
  l.void_lookups = 2;
  l.mx_hosts = 3;
  l.budget = std::chrono::milliseconds(3000);
  return l;
}

// Every lookup our layer can pass to the DNS in one check (spf_dns_layer.cpp):
// the checked domain's record; then each DNS term counted against dns_terms
// (include and redirect fetch a record, a/mx/ptr/exists and a %{p} one
// lookup), each mx or ptr followed by at most mx_hosts address lookups that
// are not terms; and an exp= lookup each time a record's evaluation ends
// (the checked domain's and every include's).
std::size_t max_lookups(const checks::spf_limits& l) {
  const std::size_t terms = l.dns_terms;
  const std::size_t records = 1 + terms;
  return 1 + terms * (1 + l.mx_hosts) + records;
}

std::string unescaped(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    if (c == 'n') {
      out += '\n';
    } else if (c == '0') {
      out += '\0';
    } else if (c == 'x' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string name_key(std::string_view s) {
  std::string out = smtp::to_lower(s);
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

struct scenario {
  std::string client = "192.0.2.1";
  std::string helo = "mail.example.test";
  smtp::address sender{"user", "example.test"};
  std::map<std::pair<std::string, dns::rr_type>, dns::answer> answers;
};

void add(scenario& s, std::string_view line) {
  const auto word = [&line]() {
    const auto space = line.find(' ');
    std::string_view w = line.substr(0, space);
    line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    return w;
  };
  const std::string_view first = word();
  if (first == "client") {
    s.client = std::string(line);
    return;
  }
  if (first == "helo") {
    s.helo = unescaped(line);
    return;
  }
  if (first == "from") {
    const std::string text = unescaped(line);
    const auto at = text.rfind('@');
    if (text.empty() || text == "<>") s.sender = {};
    else if (at == std::string::npos) s.sender = {"", text};
    else s.sender = {text.substr(0, at), text.substr(at + 1)};
    return;
  }
  const std::string_view type_name = word();
  const auto type = dns::rr_type_named(type_name);
  if (!type) return;
  auto& answer = s.answers[{name_key(unescaped(first)), *type}];
  if (line == "!nxdomain") answer.what = dns::answer::status::nxdomain;
  else if (line == "!timeout") answer.what = dns::answer::status::timeout;
  else if (line == "!failure") answer.what = dns::answer::status::failure;
  else if (line == "!nodata") answer.what = dns::answer::status::ok;
  else {
    answer.what = dns::answer::status::ok;
    answer.records.push_back({unescaped(line), static_cast<std::uint16_t>(answer.records.size())});
    return;
  }
  answer.records.clear();
}

scenario parse(std::string_view bytes) {
  scenario s;
  while (!bytes.empty()) {
    const auto end = bytes.find('\n');
    add(s, bytes.substr(0, end));
    bytes = end == std::string_view::npos ? std::string_view() : bytes.substr(end + 1);
  }
  return s;
}

// The resolver's behaviour for a name that cannot exist, then the table.
dns::answer answer_from(const scenario& s, const std::string& name, dns::rr_type type) {
  dns::answer nx;
  nx.what = dns::answer::status::nxdomain;
  if (!dns::valid_query_name(name)) return nx;
  if (auto found = s.answers.find({name_key(name), type}); found != s.answers.end()) return found->second;
  if (auto any = s.answers.find({"*", type}); any != s.answers.end()) return any->second;
  return nx;
}

// An explanation may show the time (%{t}, RFC 7208 §7.3): long runs of digits are not compared.
std::string without_time(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t digits = 0;
    while (i + digits < text.size() && std::isdigit(static_cast<unsigned char>(text[i + digits]))) ++digits;
    if (digits >= 8) out += 'T';
    else out.append(text, i, digits ? digits : 1);
    i += digits ? digits : 1;
  }
  return out;
}

bool valid(kind k) {
  switch (k) {
    case kind::none:
    case kind::neutral:
    case kind::pass:
    case kind::fail:
    case kind::softfail:
    case kind::temperror:
    case kind::permerror: return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const scenario s = parse(std::string_view(reinterpret_cast<const char*>(data), size));
  boost::system::error_code ec;
  auto client = asio::ip::make_address(s.client, ec);
  if (ec) client = asio::ip::make_address("192.0.2.1");

  std::size_t lookups = 0;
  const checks::spf_checker checker(
      [&](const std::string& name, dns::rr_type type, std::chrono::steady_clock::time_point) {
        ++lookups;
        return answer_from(s, name, type);
      },
      "mx.receiver.test", {}, limits());

  const auto first = checker.check_now(client, s.helo, s.sender);
  FUZZ_CHECK(valid(first.result));
  if (lookups > max_lookups(limits())) {
    std::fprintf(stderr, "%zu lookups, more than %zu\n", lookups, max_lookups(limits()));
    FUZZ_CHECK(lookups <= max_lookups(limits()));
  }
  FUZZ_CHECK(first.result == kind::fail || first.explanation.empty());
  FUZZ_CHECK(first.explanation.size() <= 200);

  const std::size_t seen = lookups;
  lookups = 0;
  const auto again = checker.check_now(client, s.helo, s.sender);
  // A check that ran out of time may stop elsewhere the second time.
  const auto late = [](const checks::spf_result& r) { return r.problem.find("took longer") != std::string::npos; };
  if (!late(first) && !late(again)) {
    FUZZ_CHECK(again.result == first.result);
    FUZZ_CHECK(again.problem == first.problem);
    FUZZ_CHECK(without_time(again.explanation) == without_time(first.explanation));
    FUZZ_CHECK(lookups == seen);
  }
  return 0;
}
