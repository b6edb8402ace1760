// The TXT lookups the checks make: through our resolver, blocking (a table
// in the tests).
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>

#include "dns/answer.hpp"

namespace portcullis::checks {

// One name.
using txt_lookup = std::function<dns::answer(const std::string& name)>;

// Several names a check needs at once (the keys of a message's signatures,
// the policies of its author domains), each through `lookup`: their answers, by name.
using txt_lookups =
    std::function<std::map<std::string, dns::answer>(const txt_lookup& lookup, const std::set<std::string>& names)>;

// Each on a thread of its own: the wait is the slowest lookup's, not their sum.
std::map<std::string, dns::answer> look_up_together(const txt_lookup& lookup, const std::set<std::string>& names);

// One after the other, on the calling thread.
std::map<std::string, dns::answer> look_up_in_turn(const txt_lookup& lookup, const std::set<std::string>& names);

}  // namespace portcullis::checks
