// The DATA decoder (RFC 5321 §4.1.1.4, §4.5.2): finds the end of the message,
// removes dot-stuffing and enforces strict CRLF.
//
// The only end of data is CRLF "." CRLF. A bare CR or LF, or a NUL, anywhere
// in the message marks it broken but decoding goes on to the real end, so the
// client and the proxy stay in step: that is what makes every SMTP smuggling
// ending ("\n.\n", "\r.\r", "\r\n.\r", "\r\n\0.\r\n", ...) harmless — the
// message is refused whole and nothing of it goes upstream.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::smtp {

// Where the decoder puts the message: a string, or a message_store (the
// session's), without an intermediate copy.
class byte_sink {
 public:
  virtual void write(std::string_view bytes) = 0;

 protected:
  ~byte_sink() = default;
};

class dot_decoder {
 public:
  enum class fault { none, bare_line_ending, nul, too_big };

  // `max_size`: message bytes (after unstuffing) kept before `too_big`.
  explicit dot_decoder(std::size_t max_size) : max_size_(max_size) {}

  // Consumes bytes up to and including the terminating CRLF.CRLF, appends the
  // message (unstuffed, with its CRLFs) to `out` while no fault is seen, and
  // returns how many bytes of `in` it consumed. Bytes after the end belong to
  // the next command (pipelining) and are left alone.
  std::size_t feed(std::string_view in, byte_sink& out);
  std::size_t feed(std::string_view in, std::string& out);

  bool done() const { return state_ == state::done; }
  fault failure() const { return fault_; }
  std::size_t size() const { return size_; }  // message octets seen, kept or not

 private:
  enum class state { line_start, mid_line, cr, dot, dot_cr, done };
  void fail(fault f) {
    if (fault_ == fault::none) fault_ = f;
  }
  void emit(byte_sink& out, std::string_view bytes);

  std::size_t max_size_;
  std::size_t size_ = 0;
  state state_ = state::line_start;
  fault fault_ = fault::none;
};

// Dot-stuffing for the wire (RFC 5321 §4.5.2): the pieces, in order, that
// send `message` followed by the end-of-data line. Pieces point into
// `message` or into static storage: no copy of the body is made. A message
// not ending in CRLF gets one. `message` must use CRLF line endings only.
std::vector<std::string_view> dot_stuffed_pieces(std::string_view message);

// The same for a message that comes in chunks (read from a message_store):
// the state that crosses a chunk boundary (a CRLF cut in two, a line that
// starts in the next chunk) is kept here.
class dot_stuffer {
 public:
  // Appends the wire form of the message's next `chunk` to `pieces`: slices of
  // `chunk` (valid as long as it is) and static dots.
  void stuff(std::string_view chunk, std::vector<std::string_view>& pieces);
  // The end of the message: a CRLF if it did not end with one, then ".\r\n".
  void finish(std::vector<std::string_view>& pieces);

 private:
  bool line_start_ = true;  // the next byte starts a line
  bool empty_ = true;
  char last_ = 0;           // the last byte of the previous chunk
};

}  // namespace portcullis::smtp
