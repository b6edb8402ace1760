// A log line as one JSON object ([log] format = "json"), for log stores.
// Pure: the parts of a record in, one line of JSON out.
//
// The daemon's lines read "SESSION: event"; an event made of `key=value`
// words (the transaction summary, the check results) has those as fields
// too, so a log store can filter on `verdict` or `queue_id` without parsing
// text. The whole event stays in "msg" as well: nothing is lost when a line
// is not all key=value (the words after the first that is not stay in "msg"
// only). Text that is not UTF-8 (a client's HELO) is written with U+FFFD in
// place of its bad bytes: the line is always valid JSON.
#pragma once

#include <nlohmann/json.hpp>

#include <cctype>
#include <string>
#include <string_view>

namespace portcullis {

namespace log_json_detail {

// A session id (12 hex digits, server.cpp) or "policy" (a pc.log line outside a session).
inline bool is_session_id(std::string_view s) {
  if (s == "policy") return true;
  if (s.size() != 12) return false;
  for (const unsigned char c : s)
    if (!std::isxdigit(c)) return false;
  return true;
}

inline bool is_key(std::string_view s) {
  if (s.empty() || !std::islower(static_cast<unsigned char>(s[0]))) return false;
  for (const unsigned char c : s)
    if (!std::islower(c) && !std::isdigit(c) && c != '_' && c != '.') return false;
  return true;
}

// The leading key=value words of an event: a value is a word, or "quoted"
// (the upstream's reply, which holds spaces). A path (from=<...>) is a word
// like any other: the daemon writes client text in a field with its spaces,
// quotes and angle brackets escaped (log.hpp log_word), so nothing a client
// sends can end a value early and be taken for a field of its own. Stops
// at the first word that is not key=value, or at a key already taken (never overwrites time, level, ...).
inline void add_fields(nlohmann::json& out, std::string_view event) {
  while (!event.empty()) {
    const auto eq = event.find('=');
    const auto space = event.find(' ');
    if (eq == std::string_view::npos || (space != std::string_view::npos && space < eq)) return;
    const std::string key(event.substr(0, eq));
    if (!is_key(key) || out.contains(key)) return;
    std::string_view rest = event.substr(eq + 1);
    std::string_view value;
    if (!rest.empty() && rest[0] == '"') {
      // An inner quote (an upstream's reply may hold one) ends the fields: none is better than a wrong one.
      const auto close = rest.find('"', 1);
      if (close == std::string_view::npos) return;
      if (close + 1 < rest.size() && rest[close + 1] != ' ') return;
      value = rest.substr(1, close - 1);
      rest = rest.substr(close + 1);
    } else {
      const auto end = rest.find(' ');
      value = rest.substr(0, end);
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    }
    out[key] = std::string(value);
    event = rest.empty() ? rest : rest.substr(1);
  }
}

}  // namespace log_json_detail

// Where the session stands (log.hpp's log_context, as plain views here).
struct json_log_context {
  std::string_view client, stage, tx;
};

// {"time": ..., "level": ..., "pid": ..., "session": ..., "msg": ..., fields...,
//  "client": ..., "stage": ..., "tx": ...}
// `message` is the line's text after the level ("SESSION: event" or an event
// of the daemon itself); `pid` 0 leaves it out; the context's fields are
// added where the event did not give them and they are known.
inline std::string json_log_record(std::string_view time, std::string_view level, long pid, std::string_view message,
                                   const json_log_context& context = {}) {
  nlohmann::json out = nlohmann::json::object();
  out["time"] = std::string(time);
  out["level"] = std::string(level);
  if (pid != 0) out["pid"] = pid;
  std::string_view event = message;
  if (const auto colon = message.find(": "); colon != std::string_view::npos &&
                                             log_json_detail::is_session_id(message.substr(0, colon))) {
    out["session"] = std::string(message.substr(0, colon));
    event = message.substr(colon + 2);
  }
  out["msg"] = std::string(event);
  log_json_detail::add_fields(out, event);
  for (const auto& [key, value] : {std::pair{"client", context.client}, {"stage", context.stage}, {"tx", context.tx}})
    if (!value.empty() && !out.contains(key)) out[key] = std::string(value);
  // ASCII only (\uXXXX): U+2028, U+2029 and the C1 controls break lines for Unicode-aware readers.
  return out.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

}  // namespace portcullis
