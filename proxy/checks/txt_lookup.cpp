#include "checks/txt_lookup.hpp"

#include <future>

namespace portcullis::checks {

std::map<std::string, dns::answer> look_up_together(const txt_lookup& lookup, const std::set<std::string>& names) {
  std::map<std::string, std::future<dns::answer>> pending;
  for (const auto& name : names) pending.emplace(name, std::async(std::launch::async, lookup, name));
  std::map<std::string, dns::answer> answers;
  for (auto& [name, answer] : pending) answers.emplace(name, answer.get());
  return answers;
}

std::map<std::string, dns::answer> look_up_in_turn(const txt_lookup& lookup, const std::set<std::string>& names) {
  std::map<std::string, dns::answer> answers;
  for (const auto& name : names) answers.emplace(name, lookup(name));
  return answers;
}

}  // namespace portcullis::checks
