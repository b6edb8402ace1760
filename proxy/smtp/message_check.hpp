// Checks of what a policy hands back before it may reach the wire:
// header fields (RFC 5322 §2.2, §3.6.8) and whole messages (RFC 5321 §2.3.8:
// CRLF only). Pure; shared by the daemon and the Python module.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace portcullis::smtp {

// field-name = 1*ftext; ftext = %d33-57 / %d59-126 (printable, no colon)
bool is_valid_header_name(std::string_view name);

// An unfolded value: no CR, LF or NUL (folding is ours to add).
bool is_valid_header_value(std::string_view value);

// The whole message: CRLF line endings only, no NUL, and a header section of
// "name: value" lines (with CRLF+WSP folding) up to the first empty line.
// Returns what is wrong, or nothing.
std::optional<std::string> message_problem(std::string_view message);

// Whether the header section is all fields: from the start, "name:value"
// lines (each ending in CRLF, with no other CR or LF) and their
// continuations, up to an empty line or the end. Fields put on top of such
// a message give what a parse of the whole would (the Python Message's
// shortcut for fields added on top: no parse, no copy of the fields).
bool head_is_whole(std::string_view message);

// Header fields to put on top of a message: at least one, each "name: value"
// (continuations allowed) ending in CRLF, no empty line, no bare CR or LF,
// no NUL. Returns what is wrong, or nothing.
std::optional<std::string> header_fields_problem(std::string_view fields);

}  // namespace portcullis::smtp
