#include "checks/message_fields.hpp"

#include <stdexcept>

#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

std::vector<std::string> header_values(const message_store& message, std::string_view name) {
  std::vector<std::string> out;
  smtp::header_reader header;
  const auto on_field = [&](std::string_view field) {
    if (smtp::equals_nocase(smtp::header_field_name(field), name)) out.push_back(smtp::header_field_value(field));
  };
  message_store::reader in(message);
  for (auto chunk = in.next(); !chunk.empty() && !header.done(); chunk = in.next()) header.feed(chunk, on_field);
  if (in.failed()) throw std::runtime_error("the message could not be read: " + in.error());
  header.finish(on_field);
  return out;
}

}  // namespace portcullis::checks
