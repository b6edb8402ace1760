// The header section of a message as the checks read it (RFC 5322 §2.2):
// its fields one by one, as received, from a message fed in pieces; and the
// domains of the mailboxes a From field names (RFC 5322 §3.4, what DMARC
// takes for the author's domain, RFC 7489 §3.1). Pure: bytes in, values out.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::smtp {

// Splits a header section, fed in any pieces, into its fields: each exactly
// as received (name, colon, value, folding, final CRLF), handed over once
// complete. Lines that are not fields (no colon) are handed over as well;
// readers judge them.
class header_reader {
 public:
  // Feeds the next bytes; calls on_field(std::string_view) for each field
  // they complete. Returns how many of them belong to the header section:
  // once it has ended (the empty line, included), the rest is body, and
  // later calls return 0.
  template <class OnField>
  std::size_t feed(std::string_view bytes, OnField&& on_field) {
    std::size_t i = 0;
    while (!done_ && i < bytes.size()) {
      const auto newline = bytes.find('\n', i);
      const auto end = newline == std::string_view::npos ? bytes.size() : newline + 1;
      line_.append(bytes.substr(i, end - i));
      i = end;
      if (newline == std::string_view::npos) break;  // the line goes on in the next piece
      if (line_ == "\r\n" || line_ == "\n") {         // the empty line: the body follows
        flush(on_field);
        done_ = true;
      } else if (line_.front() == ' ' || line_.front() == '\t') {
        field_ += line_;  // folded (RFC 5322 §2.2.3)
      } else {
        flush(on_field);
        field_.swap(line_);
      }
      line_.clear();
    }
    return i;
  }

  // The message ended: a header section without an empty line (and without
  // a body) ends here; its last field is handed over, with a CRLF added if
  // the message ended in the middle of its line.
  template <class OnField>
  void finish(OnField&& on_field) {
    if (done_) return;
    if (!line_.empty()) {
      line_ += "\r\n";
      if (line_.front() == ' ' || line_.front() == '\t') {
        field_ += line_;
      } else {
        flush(on_field);
        field_.swap(line_);
      }
      line_.clear();
    }
    flush(on_field);
    done_ = true;
  }

  bool done() const { return done_; }

 private:
  template <class OnField>
  void flush(OnField& on_field) {
    if (!field_.empty()) on_field(std::string_view(field_));
    field_.clear();
  }

  std::string field_;  // the field being read
  std::string line_;   // the line being read
  bool done_ = false;
};

// A field's name (before the colon, trailing WSP dropped: RFC 5322 §4.5.3);
// empty for a line that is no field.
std::string_view header_field_name(std::string_view field);
// A field's value: after the colon, unfolded (CRLFs removed, RFC 5322 §2.2.3).
std::string header_field_value(std::string_view field);

// The domain of each mailbox of a From field's value (RFC 5322 §3.6.2
// mailbox-list, with display names, comments, quoted strings, groups and
// domain literals), lower-cased, in order. Nullopt when the value is no
// mailbox list or a mailbox has no domain.
std::optional<std::vector<std::string>> mailbox_domains(std::string_view value);

}  // namespace portcullis::smtp
