// Header fields of a stored message, as the checks read them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "store/message_store.hpp"

namespace portcullis::checks {

// The unfolded values of every field called `name` (any case), in order.
// Reads only the header section. Throws std::runtime_error when a spilled
// message cannot be read.
std::vector<std::string> header_values(const message_store& message, std::string_view name);

}  // namespace portcullis::checks
