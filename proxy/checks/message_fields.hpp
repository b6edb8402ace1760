// Header fields of a stored message, as the checks read them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/message_store.hpp"

namespace portcullis::checks {

// The unfolded values of every field called `name` (any case), in order.
// Reads only the header section. Throws std::runtime_error when a spilled
// message cannot be read.
std::vector<std::string> header_values(const message_store& message, std::string_view name);

// The author's domain (RFC 7489 §3.1, §6.6.1) from the From fields' values:
// one From field whose mailboxes are all of one domain, lower-cased (an
// address literal included); else nullopt and why in `problem`.
std::optional<std::string> author_domain(const std::vector<std::string>& from_values, std::string& problem);

}  // namespace portcullis::checks
