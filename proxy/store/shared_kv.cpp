#include "store/shared_kv.hpp"

#include <atomic>
#include <charconv>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>

#include "store/shared_memory.hpp"

namespace portcullis {

namespace {

constexpr std::size_t npos = static_cast<std::size_t>(-1);
constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();

std::int64_t to_ms(shared_kv::clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::int64_t expiry_of(std::optional<shared_kv::clock::duration> ttl, std::int64_t now_ms) {
  if (!ttl) return forever;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*ttl).count();
  return now_ms + std::max<std::int64_t>(ms, 1);
}

std::uint64_t hash_of(std::string_view key, std::uint64_t seed) {
  std::uint64_t h = seed;
  std::size_t i = 0;
  for (; i + 8 <= key.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, key.data() + i, 8);
    h = mix64(h ^ word);
  }
  std::uint64_t last = 0;
  std::memcpy(&last, key.data() + i, key.size() - i);
  return mix64(h ^ last ^ (std::uint64_t{key.size()} << 56));  // (the length too: "a" and "a\0" differ)
}

}  // namespace

struct shared_kv::header {
  pthread_mutex_t mutex;
  std::uint64_t hash_seed;
};

struct shared_kv::entry {
  std::int64_t expires_ms;  // 0: free; forever: no time to live
  std::uint16_t key_size;   // 0: never used (a search ends here)
  std::uint16_t value_size;
  char key[shared_kv_max_key];
  char value[shared_kv_max_value];
};

shared_kv::shared_kv(std::size_t capacity) : capacity_(capacity), slots_(capacity * shared_kv_slots_per_key) {
  if (capacity == 0) throw std::invalid_argument("shared_kv: no capacity");
  const std::size_t entries_at = align_up(sizeof(header), alignof(std::max_align_t));
  // Zero-filled by the kernel: every slot starts free; pages are touched only as slots are used.
  map_ = std::make_unique<shared_mapping>(entries_at + slots_ * sizeof(entry), "policy store");
  header_ = new (map_->data()) header;
  entries_ = reinterpret_cast<entry*>(map_->data() + entries_at);
  init_robust_mutex(&header_->mutex);
  header_->hash_seed = random_seed();
}

shared_kv::~shared_kv() = default;

std::size_t shared_kv::find(std::string_view key, bool create, std::int64_t now_ms) {
  const std::size_t home = hash_of(key, header_->hash_seed) % slots_;
  std::size_t free_slot = npos, soonest = npos;
  for (std::size_t i = 0; i < shared_kv_probe && i < slots_; ++i) {
    const std::size_t s = (home + i) % slots_;
    entry& e = entries_[s];
    // A slot never used (no key ever written: keys are never empty) ends the
    // search: a key takes the first free slot of its run, and a slot freed
    // (expired, erased) keeps its key size, so no run is cut.
    if (e.key_size == 0) {
      if (create && free_slot == npos) free_slot = s;
      break;
    }
    const bool live = e.expires_ms > now_ms;
    if (live && e.key_size == key.size() && std::memcmp(e.key, key.data(), key.size()) == 0) return s;
    if (!create) continue;
    if (!live) {
      if (free_slot == npos) free_slot = s;
    } else if (e.expires_ms != forever && (soonest == npos || e.expires_ms < entries_[soonest].expires_ms)) {
      soonest = s;
    }
  }
  return free_slot != npos ? free_slot : soonest;  // (only a key with a time to live gives way)
}

void shared_kv::write(std::size_t slot, std::string_view key, std::string_view value, std::int64_t expires_ms) {
  entry& e = entries_[slot];
  int store = 0;
  // Each store made in the order written (the compiler may neither merge nor
  // move them: a process dying between two must find the slot free or whole).
  const auto stored = [&] {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (after_store_for_tests) after_store_for_tests(++store);
  };
  e.expires_ms = 0;  // free: a slot freed keeps its key size, so no run of the search is cut
  stored();
  e.key_size = static_cast<std::uint16_t>(key.size());
  std::memcpy(e.key, key.data(), key.size());
  stored();
  e.value_size = static_cast<std::uint16_t>(value.size());
  stored();
  std::memcpy(e.value, value.data(), value.size());
  stored();
  e.expires_ms = expires_ms;  // live again, whole
  stored();
}

std::optional<std::string> shared_kv::get(std::string_view key, clock::time_point now) {
  if (key.size() > shared_kv_max_key) return std::nullopt;
  robust_lock l(&header_->mutex, "policy store");
  const std::size_t s = find(key, false, to_ms(now));
  if (s == npos) return std::nullopt;
  return std::string(entries_[s].value, entries_[s].value_size);
}

shared_kv::status shared_kv::set(std::string_view key, std::string_view value, std::optional<clock::duration> ttl,
                                 clock::time_point now) {
  if (key.empty() || key.size() > shared_kv_max_key || value.size() > shared_kv_max_value) return status::too_long;
  const auto now_ms = to_ms(now);
  robust_lock l(&header_->mutex, "policy store");
  const std::size_t s = find(key, true, now_ms);
  if (s == npos) return status::full;
  write(s, key, value, expiry_of(ttl, now_ms));
  return status::ok;
}

shared_kv::status shared_kv::incr(std::string_view key, std::int64_t by, std::optional<clock::duration> ttl,
                                  std::int64_t& result, clock::time_point now) {
  if (key.empty() || key.size() > shared_kv_max_key) return status::too_long;
  const auto now_ms = to_ms(now);
  robust_lock l(&header_->mutex, "policy store");
  std::size_t s = find(key, false, now_ms);
  std::int64_t value = 0;
  if (s != npos) {
    const entry& e = entries_[s];
    const char* end = e.value + e.value_size;
    auto [ptr, ec] = std::from_chars(e.value, end, value);
    if (ec != std::errc() || ptr != end || e.value_size == 0) return status::not_integer;
    // Redis's INCR reads an integer as it would write it (string2ll): no leading
    // zero ("007"), no "-0"; both backends refuse the same values.
    const bool negative = e.value[0] == '-';
    if (e.value[negative] == '0' && e.value_size > 1) return status::not_integer;
  }
  if (__builtin_add_overflow(value, by, &value)) return status::overflow;
  char text[24];
  const auto written = std::to_chars(text, text + sizeof text, value).ptr - text;
  const std::string_view digits(text, static_cast<std::size_t>(written));
  if (s != npos) {
    // In place: its expiry kept, as Redis's INCR keeps it. (Its digits and
    // their length are two stores: written over a live slot, a worker dying
    // between them left 99 + 1 read as "10".)
    write(s, key, digits, entries_[s].expires_ms);
  } else {
    s = find(key, true, now_ms);
    if (s == npos) return status::full;
    write(s, key, digits, expiry_of(ttl, now_ms));
  }
  result = value;
  return status::ok;
}

bool shared_kv::erase(std::string_view key, clock::time_point now) {
  if (key.size() > shared_kv_max_key) return false;
  robust_lock l(&header_->mutex, "policy store");
  const std::size_t s = find(key, false, to_ms(now));
  if (s == npos) return false;
  entries_[s].expires_ms = 0;
  return true;
}

namespace {
std::once_flag process_kv_made;
shared_kv* process_table = nullptr;  // never freed: a policy thread left behind may still use it at exit
}  // namespace

void make_process_kv(std::size_t capacity) {
  std::call_once(process_kv_made, [&] { process_table = new shared_kv(capacity); });
}

shared_kv& process_kv() {
  make_process_kv(shared_kv_default_entries);
  return *process_table;
}

}  // namespace portcullis
