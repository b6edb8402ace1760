#include "session/client_table.hpp"

#include <cstring>
#include <stdexcept>

#include "store/shared_memory.hpp"

namespace portcullis {

namespace {

constexpr std::size_t npos = static_cast<std::size_t>(-1);

std::int64_t to_ms(client_table::clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::int64_t to_ms(client_table::clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// IPv4 as its IPv4-mapped IPv6 form (::ffff:a.b.c.d), so that a client seen
// both ways is one client.
void key_of(const asio::ip::address& a, std::uint8_t (&key)[16]) {
  const auto v6 = a.is_v4() ? asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4()) : a.to_v6();
  const auto bytes = v6.to_bytes();
  std::memcpy(key, bytes.data(), sizeof key);
}


}  // namespace

struct client_table::header {
  pthread_mutex_t mutex;
  std::atomic<std::uint64_t> sessions;
  std::uint64_t session_seed;
  std::uint64_t hash_seed;
};

struct client_table::worker_slot {
  std::uint64_t connections;  // open on this worker (under the lock)
  std::atomic<std::uint32_t> ready;
  std::atomic<std::uint32_t> reloads;  // never reset: the supervisor compares it with what it saw before a SIGHUP
  std::atomic<std::uint32_t> refused_reloads;  // of those, refused (the worker kept its configuration)
};

struct client_table::entry {
  std::int64_t failures_expire_ms;              // no failure counts from then on
  std::int64_t slice_last_ms[failure_slices];   // the latest failure in each slice; 0: none
  std::uint32_t slice_failures[failure_slices];
  std::uint8_t key[16];
  std::uint8_t used;  // 0: never used (a search ends here); 1: an address; 2: being written (a worker died there)
};

class client_table::lock : public robust_lock {
 public:
  // (A dead worker's connections are the supervisor's to clear.)
  explicit lock(pthread_mutex_t* m) : robust_lock(m, "client table") {}
};

client_table::client_table(unsigned workers, std::size_t capacity)
    : workers_(workers), slots_(capacity * client_table_slots_per_address) {
  if (workers == 0 || capacity == 0) throw std::invalid_argument("client_table: no workers or no capacity");
  const std::size_t slots_at = align_up(sizeof(header), alignof(std::max_align_t));
  const std::size_t entries_at = align_up(slots_at + workers * sizeof(worker_slot), alignof(std::max_align_t));
  const std::size_t counts_at = align_up(entries_at + slots_ * sizeof(entry), alignof(std::max_align_t));
  bytes_ = counts_at + std::size_t{workers} * slots_ * sizeof(std::uint32_t);
  // Zero-filled by the kernel: every slot starts unused, every count at 0.
  map_ = std::make_unique<shared_mapping>(bytes_, "client table");
  auto* base = map_->data();
  header_ = new (base) header;
  worker_slots_ = reinterpret_cast<worker_slot*>(base + slots_at);
  entries_ = reinterpret_cast<entry*>(base + entries_at);
  counts_ = reinterpret_cast<std::uint32_t*>(base + counts_at);
  init_robust_mutex(&header_->mutex);
  header_->session_seed = random_seed();
  header_->hash_seed = random_seed();
}

// Each process unmaps its own view; the mutex is left alone (another process may hold it).
client_table::~client_table() = default;

std::uint32_t& client_table::count(unsigned worker, std::size_t slot) const {
  return counts_[std::size_t{worker} * slots_ + slot];
}

std::size_t client_table::open_connections(std::size_t slot) const {
  std::size_t n = 0;
  for (unsigned w = 0; w < workers_; ++w) n += count(w, slot);
  return n;
}

std::size_t client_table::find(const std::uint8_t (&key)[16], bool create, std::int64_t now_ms) {
  std::uint64_t a, b;
  std::memcpy(&a, key, 8);
  std::memcpy(&b, key + 8, 8);
  const std::size_t home = mix64(mix64(a ^ header_->hash_seed) ^ b) % slots_;
  std::size_t free_slot = npos, evictable = npos;
  for (std::size_t i = 0; i < client_table_probe && i < slots_; ++i) {
    const std::size_t s = (home + i) % slots_;
    entry& e = entries_[s];
    if (e.used == 1 && std::memcmp(e.key, key, sizeof key) == 0) return s;
    // A slot never used ends the search: a slot, once used, stays so (it is
    // taken over, not freed), and an address takes the first it may have.
    if (!e.used) {
      if (create && free_slot == npos) free_slot = s;
      break;
    }
    if (!create || free_slot != npos) continue;
    const bool connected = open_connections(s) > 0;
    if (!connected && (e.used == 2 || e.failures_expire_ms <= now_ms)) {
      free_slot = s;
    } else if (!connected && (evictable == npos || e.failures_expire_ms < entries_[evictable].failures_expire_ms)) {
      evictable = s;  // only failed logins on record: the first to go when there is no room
    }
  }
  if (!create) return npos;
  const std::size_t s = free_slot != npos ? free_slot : evictable;
  if (s == npos) return npos;
  entry& e = entries_[s];
  e.used = 2;  // being written: in the search's way still (a worker dying here must not cut a chain), no match
  e.failures_expire_ms = 0;
  std::memset(e.slice_last_ms, 0, sizeof e.slice_last_ms);
  std::memset(e.slice_failures, 0, sizeof e.slice_failures);
  std::memcpy(e.key, key, sizeof key);
  e.used = 1;
  return s;
}

client_table::admission client_table::admit(unsigned worker, const asio::ip::address& client,
                                            std::size_t per_client_limit, std::size_t total_limit) {
  std::uint8_t key[16];
  key_of(client, key);
  lock l(&header_->mutex);
  std::size_t total = 0;
  for (unsigned w = 0; w < workers_; ++w) total += worker_slots_[w].connections;
  if (total >= total_limit) return admission::too_many_connections;
  const std::size_t s = find(key, true, to_ms(clock::now()));
  if (s == npos) return admission::table_full;
  if (open_connections(s) >= per_client_limit) return admission::too_many_from_client;
  ++count(worker, s);
  ++worker_slots_[worker].connections;
  return admission::admitted;
}

void client_table::release(unsigned worker, const asio::ip::address& client) {
  std::uint8_t key[16];
  key_of(client, key);
  lock l(&header_->mutex);
  const std::size_t s = find(key, false, 0);
  if (s != npos && count(worker, s) > 0) --count(worker, s);
  if (worker_slots_[worker].connections > 0) --worker_slots_[worker].connections;
}

std::size_t client_table::connections(const asio::ip::address& client) {
  std::uint8_t key[16];
  key_of(client, key);
  lock l(&header_->mutex);
  const std::size_t s = find(key, false, 0);
  return s == npos ? 0 : open_connections(s);
}

std::size_t client_table::connections() {
  lock l(&header_->mutex);
  std::size_t total = 0;
  for (unsigned w = 0; w < workers_; ++w) total += worker_slots_[w].connections;
  return total;
}

std::size_t client_table::failures_within(const entry& e, std::int64_t now_ms, std::int64_t window_ms) {
  std::size_t n = 0;
  // A slice counts whole while its latest failure is within the window.
  for (std::size_t i = 0; i < failure_slices; ++i)
    if (e.slice_last_ms[i] != 0 && e.slice_last_ms[i] > now_ms - window_ms) n += e.slice_failures[i];
  return n;
}

failure_reservation client_table::add_failure(entry& e, std::int64_t now_ms, std::int64_t window_ms) {
  window_ms = std::max<std::int64_t>(1, window_ms);
  // Rounded up, so that (slices - 1) slices cover the window: the slice
  // reused for `now` held failures older than the window.
  const std::int64_t slice_ms = (window_ms + failure_slices - 2) / (failure_slices - 1);
  const auto slice = static_cast<std::size_t>(now_ms / slice_ms % failure_slices);
  if (e.slice_last_ms[slice] == 0 || e.slice_last_ms[slice] / slice_ms != now_ms / slice_ms) e.slice_failures[slice] = 0;
  e.slice_last_ms[slice] = std::max<std::int64_t>(now_ms, 1);
  ++e.slice_failures[slice];
  e.failures_expire_ms = std::max(e.failures_expire_ms, now_ms + window_ms + slice_ms);
  return failure_reservation{slice, now_ms / slice_ms, slice_ms};
}

void client_table::record_failure(const asio::ip::address& client, clock::duration window, clock::time_point now) {
  std::uint8_t key[16];
  key_of(client, key);
  const std::int64_t now_ms = to_ms(now);
  lock l(&header_->mutex);
  const std::size_t s = find(key, true, now_ms);
  if (s == npos) return;  // full of connected clients (see the top of client_table.hpp)
  add_failure(entries_[s], now_ms, to_ms(window));
}

bool client_table::over_failure_limit(const asio::ip::address& client, std::size_t limit, clock::duration window,
                                      clock::time_point now) {
  std::uint8_t key[16];
  key_of(client, key);
  const std::int64_t now_ms = to_ms(now), window_ms = to_ms(window);
  lock l(&header_->mutex);
  const std::size_t s = find(key, false, now_ms);
  if (s == npos) return false;
  return failures_within(entries_[s], now_ms, window_ms) >= limit;
}

std::optional<failure_reservation> client_table::reserve_failure(const asio::ip::address& client, std::size_t limit,
                                                                 clock::duration window, clock::time_point now) {
  std::uint8_t key[16];
  key_of(client, key);
  const std::int64_t now_ms = to_ms(now), window_ms = to_ms(window);
  lock l(&header_->mutex);
  const std::size_t s = find(key, true, now_ms);
  if (s == npos) return failure_reservation{};  // full of connected clients: not counted, as record_failure
  if (failures_within(entries_[s], now_ms, window_ms) >= limit) return std::nullopt;
  return add_failure(entries_[s], now_ms, window_ms);
}

void client_table::cancel_failure(const asio::ip::address& client, const failure_reservation& r) {
  if (r.slice >= failure_slices || r.slice_ms <= 0) return;
  std::uint8_t key[16];
  key_of(client, key);
  lock l(&header_->mutex);
  const std::size_t s = find(key, false, 0);
  if (s == npos) return;  // gone (evicted): nothing of it left to take back
  entry& e = entries_[s];
  // Only while the slice still counts the time it was reserved in (a slice
  // reused since has been zeroed: the reserved failure is gone already).
  if (e.slice_last_ms[r.slice] == 0 || e.slice_last_ms[r.slice] / r.slice_ms != r.slice_number) return;
  if (e.slice_failures[r.slice] > 0) --e.slice_failures[r.slice];
}

void client_table::forget_worker(unsigned worker) {
  lock l(&header_->mutex);
  std::memset(&count(worker, 0), 0, slots_ * sizeof(std::uint32_t));
  worker_slots_[worker].connections = 0;
  worker_slots_[worker].ready.store(0);
}

void client_table::set_ready(unsigned worker) { worker_slots_[worker].ready.store(1); }

bool client_table::ready(unsigned worker) const { return worker_slots_[worker].ready.load() != 0; }

void client_table::count_reload(unsigned worker, bool accepted) {
  // Refusals first: the supervisor reads them once it sees `reloads` move.
  if (!accepted) worker_slots_[worker].refused_reloads.fetch_add(1);
  worker_slots_[worker].reloads.fetch_add(1);
}

std::uint32_t client_table::reloads(unsigned worker) const { return worker_slots_[worker].reloads.load(); }

std::uint32_t client_table::refused_reloads(unsigned worker) const {
  return worker_slots_[worker].refused_reloads.load();
}

std::uint64_t client_table::next_session_number() { return header_->sessions.fetch_add(1) + 1; }

std::uint64_t client_table::session_seed() const { return header_->session_seed; }

}  // namespace portcullis
