// libFuzzer target: the header reader and the From field's mailbox domains
// (smtp/message_header). Whatever the message: fed in pieces, the fields and
// the body are the same as fed whole; when the header section ends with an
// empty line, fields + empty line + body give back the message byte for
// byte; every field but a last one cut short ends with LF; every From value
// either is no mailbox list or gives non-empty, lower-case domains; and the
// checks of fields a policy puts on top (smtp/message_check) agree with it.
//
// Input: byte 0 picks the piece size; the rest is the message.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "smtp/message_check.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

using namespace portcullis::smtp;

namespace {

struct reading {
  std::vector<std::string> fields;
  std::string body;
  bool done = false;
};

reading read(std::string_view message, std::size_t piece) {
  reading r;
  header_reader h;
  const auto on_field = [&](std::string_view f) { r.fields.emplace_back(f); };
  for (std::size_t i = 0; i < message.size(); i += piece) {
    const auto chunk = message.substr(i, piece);
    r.body += chunk.substr(h.feed(chunk, on_field));
  }
  r.done = h.done();
  h.finish(on_field);
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view message(reinterpret_cast<const char*>(data + 1), size - 1);

  const auto whole = read(message, message.size() + 1);
  const auto pieces = read(message, piece);
  FUZZ_CHECK(whole.fields == pieces.fields);
  FUZZ_CHECK(whole.body == pieces.body);
  FUZZ_CHECK(whole.done == pieces.done);

  std::string joined;
  for (const auto& f : whole.fields) {
    FUZZ_CHECK(!f.empty());
    joined += f;
  }
  if (whole.done) {
    // The empty line is CRLF or a lone LF; everything else comes back as it was.
    const std::string crlf = joined + "\r\n" + whole.body, lf = joined + "\n" + whole.body;
    FUZZ_CHECK(crlf == message || lf == message);
    for (const auto& f : whole.fields) FUZZ_CHECK(f.back() == '\n');
  } else {
    FUZZ_CHECK(whole.body.empty());
  }

  // The checks of fields a policy puts on top (smtp/message_check): valid
  // fields are a whole header section themselves, and one more field on top
  // of a message changes nothing about whether its own is whole (but for a
  // message that starts with a continuation, which the field then continues).
  if (!header_fields_problem(message)) {
    FUZZ_CHECK(head_is_whole(message));
    FUZZ_CHECK(!message_problem(message));
  }
  const std::string on_top = "X-Fuzz: 1\r\n" + std::string(message);
  FUZZ_CHECK(!header_fields_problem("X-Fuzz: 1\r\n"));
  if (message.empty() || (message.front() != ' ' && message.front() != '\t'))
    FUZZ_CHECK(head_is_whole(on_top) == head_is_whole(message));

  for (const auto& f : whole.fields) {
    if (!equals_nocase(header_field_name(f), "From")) continue;
    const auto value = header_field_value(f);
    FUZZ_CHECK(value.find('\n') == std::string::npos && value.find('\r') == std::string::npos);
    if (const auto domains = mailbox_domains(value)) {
      FUZZ_CHECK(!domains->empty());
      for (const auto& d : *domains) {
        FUZZ_CHECK(!d.empty());
        FUZZ_CHECK(d == to_lower(d));
      }
    }
  }
  return 0;
}
