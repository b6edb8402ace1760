// The one owner of a message's bytes, from the DATA decoder to the upstream
// writer, the policy and the Maildir writer.
//
// A message is held in memory while it is small (server.message_memory_threshold)
// and while every session's in-memory messages together stay within one
// budget (server.message_memory_budget, a message_memory shared by all
// sessions); past either it spills to an unlinked temporary file in
// server.message_spill_dir, so that a 50 MiB message costs a file, not RSS.
//
// Written once, by one session, then sealed: after seal() the store never
// changes, and any thread may read it at the same time (pread, no shared file
// offset). Its memory goes back to the budget when the last owner lets go of
// it (RAII: end of transaction, RSET, a client lost mid-DATA, shutdown, or
// the policy job that held it last).
#pragma once

#include <atomic>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace portcullis {

// The memory budget every session's messages share. Lock-free: sessions on
// several I/O threads take and give back bytes at the same time.
class message_memory {
 public:
  explicit message_memory(std::size_t limit) : limit_(limit) {}
  message_memory(const message_memory&) = delete;
  message_memory& operator=(const message_memory&) = delete;

  // SIGHUP: a new limit; bytes already taken stay taken.
  void set_limit(std::size_t limit) { limit_.store(limit, std::memory_order_relaxed); }
  std::size_t limit() const { return limit_.load(std::memory_order_relaxed); }
  std::size_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

  // Takes `n` bytes if the total stays within the limit.
  bool try_take(std::size_t n);
  void give_back(std::size_t n) { in_use_.fetch_sub(n, std::memory_order_relaxed); }

 private:
  std::atomic<std::size_t> limit_;
  std::atomic<std::size_t> in_use_{0};
};

struct spill_settings {
  std::size_t memory_threshold = 256 * 1024;  // bytes a message may hold in memory
  std::filesystem::path directory;            // empty: the system's (TMPDIR, else /tmp)
};

class message_store {
 public:
  // Why a message went to a file.
  enum class spill_reason { none, threshold, budget };

  message_store(std::shared_ptr<message_memory> memory, spill_settings settings);
  ~message_store();
  message_store(const message_store&) = delete;
  message_store& operator=(const message_store&) = delete;

  // A message already in memory (a policy's edit), as a sealed store: shared,
  // not copied, and not counted in the budget (it exists already).
  static std::shared_ptr<const message_store> wrap(std::shared_ptr<const std::string> message);
  // `prefix` followed by `rest` from its byte `rest_from` on, as one sealed
  // store: `rest` is shared, not copied, however big. Header fields a policy
  // put on top (rest_from 0), or a new header section over the body as
  // received (rest_from: where that body starts): a 50 MiB message with its
  // header edited costs the header.
  static std::shared_ptr<const message_store> with_prefix(std::string prefix,
                                                          std::shared_ptr<const message_store> rest,
                                                          std::size_t rest_from = 0);

  // Writing, before seal(). False once the store failed (the spill file
  // could not be made or written: error() says why); later bytes are dropped.
  bool append(std::string_view bytes);
  // The end of the message: flushes what waits for the file and makes the
  // store read-only. False when the store failed.
  bool seal();

  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  std::size_t size() const { return size_; }
  bool spilled() const { return fd_ >= 0 || (rest_ && rest_->spilled()); }
  spill_reason why_spilled() const { return reason_; }
  // The spill directory in use (for logs).
  const std::filesystem::path& spill_directory() const { return settings_.directory; }

  // Reads the sealed message in order, in chunks, with no copy of an
  // in-memory message (its one chunk is a view of it) and one buffer of
  // `chunk` bytes for a spilled one. Several readers may run at once.
  class reader {
   public:
    static constexpr std::size_t default_chunk = 128 * 1024;
    // From byte `from` of the message on.
    explicit reader(const message_store& m, std::size_t chunk = default_chunk, std::size_t from = 0);
    // The next bytes, valid until the next call; empty at the end or on a
    // read error (failed()).
    std::string_view next();
    // Every byte was returned.
    bool at_end() const { return offset_ >= m_.size_; }
    bool failed() const { return !error_.empty(); }
    const std::string& error() const { return error_; }

   private:
    const message_store& m_;
    std::size_t offset_ = 0;
    std::size_t chunk_;
    std::unique_ptr<char[]> buf_;
    std::unique_ptr<reader> rest_;  // with_prefix(): reading the rest, after the prefix
    std::string error_;
  };

  // The whole message as one string (a copy): for callers that need it whole
  // (the policy engine, until it reads lazily). Throws std::runtime_error on
  // a read error.
  std::string read_all() const;
  // The same into `to`, which holds size() bytes (the policy engine's bytes
  // object, read straight into). Throws std::runtime_error on a read error.
  void read_into(char* to) const;
  // The header section's size: the message up to and including its first
  // empty line (CRLF CRLF, or a CRLF at the very start), when that line ends
  // within the first `limit` bytes; npos else. Reads no further.
  std::size_t head_size(std::size_t limit) const;
  // That header section, read alone; nullopt past `limit` or without an
  // empty line (read the whole message then). Throws std::runtime_error on
  // a read error.
  std::optional<std::string> read_head(std::size_t limit) const;

 private:
  message_store() = default;  // wrap()
  std::string_view memory_view() const;
  bool grow(std::size_t need);  // in memory; false: it must spill
  bool spill(spill_reason why);
  bool write_file(std::string_view bytes);
  bool flush();
  void fail(std::string why);
  void release_memory();

  std::shared_ptr<message_memory> memory_;
  spill_settings settings_;
  // In memory: buf_[0, size_), capacity_ bytes allocated and counted in memory_.
  std::unique_ptr<char[]> buf_;
  std::size_t capacity_ = 0;
  std::shared_ptr<const std::string> wrapped_;  // wrap(): the message is this
  // with_prefix(): the message is prefix_, then rest_.
  std::string prefix_;
  std::shared_ptr<const message_store> rest_;
  std::size_t rest_from_ = 0;
  // Spilled: the file holds [0, size_ - pending_), pending_ bytes wait in staging_.
  int fd_ = -1;
  std::unique_ptr<char[]> staging_;
  std::size_t pending_ = 0;
  std::size_t size_ = 0;
  spill_reason reason_ = spill_reason::none;
  bool sealed_ = false;
  std::string error_;
};

// Whether no byte of the sealed message is 8-bit (RFC 6152: what an upstream
// without 8BITMIME may be sent). A read error finds none: the reader that
// sends the message meets it too, and says so.
bool all_ascii(const message_store& m);

}  // namespace portcullis
