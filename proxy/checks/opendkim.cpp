#include "checks/opendkim.hpp"

#include <stdexcept>
#include <string>

#include "smtp/message_header.hpp"

namespace portcullis::checks {

void feed_message(DKIM* dkim, const message_store& message) {
  // The header fields one by one (each with its folding, without its final
  // CRLF), then the body as it came.
  smtp::header_reader header;
  const auto on_field = [&](std::string_view field) {
    field.remove_suffix(field.ends_with("\r\n") ? 2 : 1);  // (a field handed over ends with its line end)
    dkim_header(dkim, reinterpret_cast<u_char*>(const_cast<char*>(field.data())), field.size());
  };
  message_store::reader in(message);
  for (auto chunk = in.next(); !chunk.empty(); chunk = in.next()) {
    std::size_t used = 0;
    if (!header.done()) {
      used = header.feed(chunk, on_field);
      if (header.done()) dkim_eoh(dkim);
    }
    if (used < chunk.size())
      dkim_body(dkim, reinterpret_cast<u_char*>(const_cast<char*>(chunk.data() + used)), chunk.size() - used);
  }
  if (in.failed()) throw std::runtime_error("the message could not be read: " + in.error());
  if (!header.done()) {  // a message of header fields only
    header.finish(on_field);
    dkim_eoh(dkim);
  }
}

}  // namespace portcullis::checks
