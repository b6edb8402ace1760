// DNS answers from a fixed table, for the fuzz targets of the checks that
// take a TXT lookup function (DKIM, ARC): names not in it do not exist.
#pragma once

#include <map>
#include <string>

#include "dns/answer.hpp"
#include "smtp/text.hpp"

namespace portcullis::fuzz {

inline dns::answer txt(std::string value) {
  dns::answer a;
  a.what = dns::answer::status::ok;
  a.records.push_back({std::move(value)});
  return a;
}

inline dns::answer timeout() {
  dns::answer a;
  a.what = dns::answer::status::timeout;
  return a;
}

inline dns::answer lookup_in(const std::map<std::string, dns::answer>& table, const std::string& name) {
  if (auto found = table.find(smtp::to_lower(name)); found != table.end()) return found->second;
  dns::answer a;
  a.what = dns::answer::status::nxdomain;
  return a;
}

}  // namespace portcullis::fuzz
