// What the worker processes (server.workers) share lives in anonymous
// shared mappings (MAP_SHARED|MAP_ANONYMOUS) made before fork and inherited
// by every worker; with one process they are simply private memory. Each is
// guarded by one process-shared *robust* mutex: a worker killed while
// holding it leaves it to the next locker (EOWNERDEAD), so the tables built
// on these keep every update a single consistent store.
#pragma once

#include <pthread.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <system_error>

namespace portcullis {

// `bytes` of zero-filled memory shared with the processes forked after it;
// each process unmaps its own view when the object goes.
class shared_mapping {
 public:
  shared_mapping(std::size_t bytes, const char* what) : bytes_(bytes) {
    // No reserve: a table is sized for its most (pc.store's largest is
    // gigabytes) but its pages are made only as slots are used, so the
    // kernel's overcommit heuristic must not refuse it on a small machine.
    map_ = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map_ == MAP_FAILED) throw std::system_error(errno, std::generic_category(), std::string(what) + " mmap");
  }
  ~shared_mapping() { munmap(map_, bytes_); }
  shared_mapping(const shared_mapping&) = delete;
  shared_mapping& operator=(const shared_mapping&) = delete;
  std::uint8_t* data() const { return static_cast<std::uint8_t*>(map_); }

 private:
  std::size_t bytes_;
  void* map_ = nullptr;
};

// A mutex in shared memory that any process may lock, and that outlives a
// holder that died (the next locker gets it, consistent again).
inline void init_robust_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
}

class robust_lock {
 public:
  robust_lock(pthread_mutex_t* m, const char* what) : m_(m) {
    const int rc = pthread_mutex_lock(m_);
    // Its owner died holding it: each table's updates leave it usable at every
    // store (shared_kv::write; the client table's entries are written the same way).
    if (rc == EOWNERDEAD) pthread_mutex_consistent(m_);
    else if (rc != 0) throw std::system_error(rc, std::generic_category(), std::string(what) + " lock");
  }
  ~robust_lock() { pthread_mutex_unlock(m_); }
  robust_lock(const robust_lock&) = delete;
  robust_lock& operator=(const robust_lock&) = delete;

 private:
  pthread_mutex_t* m_;
};

inline std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

inline std::uint64_t mix64(std::uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Drawn once per table, so that a client cannot pick keys that collide.
inline std::uint64_t random_seed() {
  std::random_device rd;
  return (std::uint64_t{rd()} << 32) ^ rd();
}

}  // namespace portcullis
