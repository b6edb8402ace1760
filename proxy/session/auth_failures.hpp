// Failed AUTH attempts per client address over a sliding window: what stops
// a password-guessing client that opens a new connection after each 421.
#pragma once

#include <chrono>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>

#include "asio.hpp"

namespace portcullis {

class auth_failures {
 public:
  using clock = std::chrono::steady_clock;

  void record(const asio::ip::address& client, clock::duration window, clock::time_point now = clock::now()) {
    std::lock_guard lock(mutex_);
    failures_[client].push_back(now);
    // Now and then, forget addresses that failed once and never came back.
    if (++records_ % sweep_every == 0) {
      for (auto it = failures_.begin(); it != failures_.end();) {
        auto& times = it->second;
        while (!times.empty() && times.front() < now - window) times.pop_front();
        it = times.empty() ? failures_.erase(it) : std::next(it);
      }
    }
  }

  // Has this client failed `limit` times within `window`? (Old entries go.)
  bool over_limit(const asio::ip::address& client, std::size_t limit, clock::duration window,
                  clock::time_point now = clock::now()) {
    std::lock_guard lock(mutex_);
    auto it = failures_.find(client);
    if (it == failures_.end()) return false;
    auto& times = it->second;
    while (!times.empty() && times.front() < now - window) times.pop_front();
    if (times.empty()) {
      failures_.erase(it);
      return false;
    }
    return times.size() >= limit;
  }

 private:
  static constexpr std::size_t sweep_every = 1024;
  std::mutex mutex_;
  std::size_t records_ = 0;
  std::map<asio::ip::address, std::deque<clock::time_point>> failures_;
};

}  // namespace portcullis
