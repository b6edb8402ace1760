#include "store/message_store.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "smtp/text.hpp"

namespace portcullis {

namespace {

// The first allocation of an in-memory message; it then doubles up to the threshold.
constexpr std::size_t min_memory_capacity = 4 * 1024;
// What a spilled message collects before one write(2): the decoder hands over
// a line at a time, and a system call per line would cost more than the copy.
constexpr std::size_t staging_size = 64 * 1024;

std::string errno_text() { return std::strerror(errno); }

// An unlinked file in `dir`: O_TMPFILE where the file system has it, else
// mkstemp and unlink at once. Nobody else can open it, and it vanishes with
// its last descriptor, crash included.
int open_unlinked(const std::filesystem::path& dir, std::string& error) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
    error = "cannot create a temporary file in " + dir.string() + ": " + errno_text();
    return -1;
  }
  std::string name = (dir / "portcullis-message-XXXXXX").string();
  fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) {
    error = "cannot create a temporary file in " + dir.string() + ": " + errno_text();
    return -1;
  }
  ::unlink(name.c_str());
  return fd;
}

// $TMPDIR or /tmp, looked up once (a store is made for every message).
const std::filesystem::path& default_spill_directory() {
  static const std::filesystem::path dir = [] {
    std::error_code ec;
    auto p = std::filesystem::temp_directory_path(ec);
    return ec ? std::filesystem::path("/tmp") : p;
  }();
  return dir;
}

}  // namespace

bool message_memory::try_take(std::size_t n) {
  std::size_t used = in_use_.load(std::memory_order_relaxed);
  do {
    if (n > limit() || used > limit() - n) return false;
  } while (!in_use_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
  return true;
}

message_store::message_store(std::shared_ptr<message_memory> memory, spill_settings settings)
    : memory_(std::move(memory)), settings_(std::move(settings)) {
  if (settings_.directory.empty()) settings_.directory = default_spill_directory();
}

message_store::~message_store() {
  release_memory();
  if (fd_ >= 0) ::close(fd_);
}

std::shared_ptr<const message_store> message_store::wrap(std::shared_ptr<const std::string> message) {
  std::shared_ptr<message_store> s(new message_store());
  s->size_ = message->size();
  s->wrapped_ = std::move(message);
  s->sealed_ = true;
  return s;
}

std::shared_ptr<const message_store> message_store::with_prefix(std::string prefix,
                                                                std::shared_ptr<const message_store> rest,
                                                                std::size_t rest_from) {
  if (rest_from > rest->size()) throw std::invalid_argument("message_store::with_prefix: past the end");
  std::shared_ptr<message_store> s(new message_store());
  s->size_ = prefix.size() + rest->size() - rest_from;
  s->prefix_ = std::move(prefix);
  s->rest_ = std::move(rest);
  s->rest_from_ = rest_from;
  s->sealed_ = true;
  return s;
}

void message_store::release_memory() {
  buf_.reset();
  if (capacity_ && memory_) memory_->give_back(capacity_);
  capacity_ = 0;
}

void message_store::fail(std::string why) {
  if (error_.empty()) error_ = std::move(why);
  release_memory();
  staging_.reset();
  pending_ = 0;
}

std::string_view message_store::memory_view() const {
  if (wrapped_) return *wrapped_;
  return {buf_.get(), size_};
}

bool message_store::grow(std::size_t need) {
  if (need <= capacity_) return true;
  if (need > settings_.memory_threshold) return false;
  const std::size_t want =
      std::min(std::max({need, capacity_ * 2, min_memory_capacity}), settings_.memory_threshold);
  // The budget is taken before the allocation, for the whole allocation.
  if (!memory_ || !memory_->try_take(want - capacity_)) return false;
  auto bigger = std::make_unique_for_overwrite<char[]>(want);
  if (size_) std::memcpy(bigger.get(), buf_.get(), size_);
  buf_ = std::move(bigger);
  capacity_ = want;
  return true;
}

bool message_store::write_file(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write the temporary file in " + settings_.directory.string() + ": " + errno_text());
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

bool message_store::spill(spill_reason why) {
  std::string error;
  fd_ = open_unlinked(settings_.directory, error);
  if (fd_ < 0) {
    fail(std::move(error));
    return false;
  }
  reason_ = why;
  if (!write_file({buf_.get(), size_})) return false;
  release_memory();
  staging_ = std::make_unique_for_overwrite<char[]>(staging_size);
  return true;
}

bool message_store::flush() {
  if (!pending_) return true;
  const bool ok = write_file({staging_.get(), pending_});
  pending_ = 0;
  return ok;
}

bool message_store::append(std::string_view bytes) {
  if (failed()) return false;
  if (sealed_) return false;  // read-only now: readers on other threads may be at it
  if (bytes.empty()) return true;
  if (fd_ < 0) {
    if (grow(size_ + bytes.size())) {
      std::memcpy(buf_.get() + size_, bytes.data(), bytes.size());
      size_ += bytes.size();
      return true;
    }
    const auto why = size_ + bytes.size() > settings_.memory_threshold ? spill_reason::threshold : spill_reason::budget;
    if (!spill(why)) return false;
  }
  size_ += bytes.size();
  if (pending_ + bytes.size() > staging_size && !flush()) return false;
  if (bytes.size() >= staging_size) return write_file(bytes);
  std::memcpy(staging_.get() + pending_, bytes.data(), bytes.size());
  pending_ += bytes.size();
  return true;
}

bool message_store::seal() {
  if (!sealed_ && fd_ >= 0 && !failed()) flush();
  staging_.reset();
  sealed_ = true;
  return !failed();
}

message_store::reader::reader(const message_store& m, std::size_t chunk, std::size_t from)
    : m_(m), offset_(from), chunk_(std::max<std::size_t>(chunk, 1)) {}

std::string_view message_store::reader::next() {
  if (failed() || offset_ >= m_.size_) return {};
  if (m_.failed() || !m_.sealed_) {
    error_ = m_.failed() ? m_.error_ : "the message is not complete";
    return {};
  }
  if (m_.rest_) {
    // The prefix as a view, then the rest (from rest_from_) as its own reader gives it.
    if (offset_ < m_.prefix_.size()) {
      const auto from = offset_;
      offset_ = m_.prefix_.size();
      return std::string_view(m_.prefix_).substr(from);
    }
    if (!rest_) rest_ = std::make_unique<reader>(*m_.rest_, chunk_, m_.rest_from_ + (offset_ - m_.prefix_.size()));
    const auto chunk = rest_->next();
    if (rest_->failed()) error_ = rest_->error();
    if (chunk.empty() && !failed()) error_ = "the message is shorter than its size";
    offset_ += chunk.size();
    return chunk;
  }
  if (m_.fd_ < 0) {
    // In memory: all of it at once, as a view (no copy).
    const auto from = offset_;
    offset_ = m_.size_;
    return m_.memory_view().substr(from);
  }
  if (!buf_) buf_ = std::make_unique_for_overwrite<char[]>(chunk_);
  const std::size_t want = std::min(chunk_, m_.size_ - offset_);
  for (;;) {
    const ssize_t n = ::pread(m_.fd_, buf_.get(), want, static_cast<off_t>(offset_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = "cannot read the temporary file: " + (n < 0 ? errno_text() : std::string("it is shorter than the message"));
      return {};
    }
    offset_ += static_cast<std::size_t>(n);
    return {buf_.get(), static_cast<std::size_t>(n)};
  }
}

std::string message_store::read_all() const {
  std::string out;
  out.resize(size_);
  read_into(out.data());
  return out;
}

void message_store::read_into(char* to) const {
  std::size_t at = 0;
  reader r(*this);
  for (auto chunk = r.next(); !chunk.empty(); chunk = r.next()) {
    if (chunk.size() > size_ - at) throw std::runtime_error("the message is longer than its size");
    std::memcpy(to + at, chunk.data(), chunk.size());
    at += chunk.size();
  }
  if (r.failed()) throw std::runtime_error(r.error());
  if (at != size_) throw std::runtime_error("the message is shorter than its size");
}

std::optional<std::string> message_store::read_head(std::size_t limit) const {
  std::string out;
  out.reserve(std::min(size_, limit));
  reader r(*this, 64 * 1024);
  for (auto chunk = r.next(); !chunk.empty() && out.size() < limit; chunk = r.next()) {
    const std::size_t from = out.size() < 3 ? 0 : out.size() - 3;  // (an empty line across two chunks)
    out.append(chunk.substr(0, limit - out.size()));
    if (out.starts_with("\r\n")) return out.substr(0, 2);
    if (const auto end = out.find("\r\n\r\n", from); end != std::string::npos) {
      out.resize(end + 4);
      return out;
    }
  }
  if (r.failed()) throw std::runtime_error(r.error());
  return std::nullopt;
}

std::size_t message_store::head_size(std::size_t limit) const {
  const auto head = read_head(limit);
  return head ? head->size() : std::string::npos;
}

bool all_ascii(const message_store& m) {
  message_store::reader in(m);
  for (auto chunk = in.next(); !chunk.empty(); chunk = in.next())
    if (!smtp::is_ascii(chunk)) return false;
  return true;
}

}  // namespace portcullis
