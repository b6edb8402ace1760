// DNS answers from a table, for the checks that take a TXT lookup function
// (DKIM, ARC), and the CRLF lines of mail from the LF lines a test file keeps.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "checks/dkim_keys.hpp"

namespace portcullis::checks {

// LF lines (as kept in a test file) to the CRLF lines of mail (CRLFs stay).
inline std::string crlf(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\n' && (out.empty() || out.back() != '\r')) out += '\r';
    out += c;
  }
  return out;
}

// Names not in the table do not exist (NXDOMAIN).
struct table {
  std::map<std::string, dns::answer> answers;
  void txt(const std::string& name, const std::string& value) {
    dns::answer a;
    a.what = dns::answer::status::ok;
    a.records.push_back({value});
    answers[name] = a;
  }
  void trouble(const std::string& name, dns::answer::status what) {
    dns::answer a;
    a.what = what;
    answers[name] = a;
  }
  txt_lookup lookup() {
    return [this](const std::string& name) {
      if (auto found = answers.find(name); found != answers.end()) return found->second;
      dns::answer a;
      a.what = dns::answer::status::nxdomain;
      return a;
    };
  }
};

}  // namespace portcullis::checks
