#include "checks/message_fields.hpp"

#include <stdexcept>

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

std::optional<std::string> author_domain(const std::vector<std::string>& from_values, std::string& problem) {
  if (from_values.size() != 1) {
    problem = from_values.empty() ? "no From field" : std::to_string(from_values.size()) + " From fields";
    return std::nullopt;
  }
  const auto domains = smtp::mailbox_domains(from_values.front());
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
  return domains->front();
}

}  // namespace portcullis::checks
