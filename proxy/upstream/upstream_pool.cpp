#include "upstream/upstream_pool.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace portcullis {

namespace {
constexpr std::chrono::seconds quit_timeout{5};          // we do not wait long to say goodbye
constexpr std::size_t max_quit_reply = 4096;             // the longest line we read of a QUIT's reply
// For the upstream's close_notify after its 221 (it sends it at once): short,
// so that a goodbye fits in close_all's wait at shutdown.
constexpr std::chrono::seconds goodbye_drain{1};
constexpr std::chrono::milliseconds min_reap_period{100};
constexpr std::chrono::milliseconds max_reap_period{1000};  // an idle connection outlives its timeout by at most this
constexpr std::chrono::milliseconds close_all_poll{20};
}  // namespace

upstream_pool::upstream_pool(asio::io_context& io) : io_(io), strand_(asio::make_strand(io)), reaper_timer_(strand_) {}

upstream_pool::~upstream_pool() {
  for (auto& c : idle_) c.stream->close();
}

bool upstream_pool::current(const upstream_config& u) const {
  return cfg_ && !closed_ && cfg_->upstream.scheme != upstream_config::kind::maildir && cfg_->upstream.pool_size > 0 &&
         (&u == &cfg_->upstream || u == cfg_->upstream);
}

void upstream_pool::configure(std::shared_ptr<const config> cfg) {
  std::vector<pooled_connection> gone;
  {
    std::lock_guard lock(mutex_);
    const bool same = cfg_ && cfg_->upstream == cfg->upstream;
    cfg_ = std::move(cfg);
    if (!same) gone.swap(idle_);
  }
  if (!gone.empty()) spdlog::info("upstream pool: [upstream] changed; closing {} idle connection(s)", gone.size());
  retire(std::move(gone), true);
}

bool upstream_pool::keeps(const upstream_config& u) const {
  std::lock_guard lock(mutex_);
  return current(u);
}

std::size_t upstream_pool::idle() const {
  std::lock_guard lock(mutex_);
  return idle_.size();
}

std::optional<pooled_connection> upstream_pool::take(const upstream_config& u, asio::any_io_executor ex,
                                                     std::size_t* dropped) {
  for (;;) {
    std::optional<pooled_connection> c;
    {
      std::lock_guard lock(mutex_);
      if (!current(u) || idle_.empty()) return std::nullopt;
      c.emplace(std::move(idle_.back()));
      idle_.pop_back();
    }
    // One look (a non-blocking peek): the upstream closed it while idle, or
    // said something unasked (its idle-timeout 421). Either way it is done.
    if (c->stream->peer_gone()) {
      if (dropped) ++*dropped;
      c->stream->close();
      continue;
    }
    c->stream->rebind(std::move(ex));
    return c;
  }
}

std::optional<pooled_connection> upstream_pool::give_back(const upstream_config& u, pooled_connection c) {
  {
    std::lock_guard lock(mutex_);
    if (!current(u) || idle_.size() >= cfg_->upstream.pool_size) return c;
    c.idle_since = std::chrono::steady_clock::now();
    idle_.push_back(std::move(c));
  }
  if (!reaping_.exchange(true)) asio::co_spawn(strand_, reap(), asio::detached);
  return std::nullopt;
}

void upstream_pool::retire(std::vector<pooled_connection> gone, bool polite) {
  for (auto& c : gone) {
    if (!polite) {
      c.stream->close();
      continue;
    }
    ++quitting_;
    asio::co_spawn(strand_, quit(std::move(c)), asio::detached);
  }
}

awaitable<void> say_goodbye(line_stream& stream) {
  const bool written = co_await stream.write(std::string_view("QUIT\r\n"), quit_timeout);
  if (written) {
    auto reply = co_await stream.read_line(max_quit_reply, quit_timeout);
    (void)reply;
    co_await stream.close_after_drain(goodbye_drain);
  }
  stream.close();
}

awaitable<void> upstream_pool::quit(pooled_connection c) {
  c.stream->rebind(strand_);
  co_await say_goodbye(*c.stream);
  --quitting_;
}

awaitable<void> upstream_pool::reap() {
  for (;;) {
    std::chrono::milliseconds period = max_reap_period;
    {
      std::lock_guard lock(mutex_);
      if (closed_) break;
      if (cfg_) period = std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(cfg_->upstream.pool_idle_timeout) / 4,
                                    min_reap_period, max_reap_period);
    }
    reaper_timer_.expires_after(period);
    boost::system::error_code ec;
    co_await reaper_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::vector<pooled_connection> expired, gone;
    bool done = false;
    {
      std::lock_guard lock(mutex_);
      if (closed_) break;
      const auto now = std::chrono::steady_clock::now();
      const auto limit = cfg_ ? cfg_->upstream.pool_idle_timeout : std::chrono::seconds(0);
      // Into a new vector, not compacted in place: moving a connection onto
      // itself (the first ones kept) emptied its EHLO extensions.
      std::vector<pooled_connection> kept;
      for (auto& c : idle_) {
        if (now - c.idle_since >= limit)
          expired.push_back(std::move(c));
        else if (c.stream->peer_gone())
          gone.push_back(std::move(c));  // closed by the upstream: no QUIT to send
        else
          kept.push_back(std::move(c));
      }
      idle_.swap(kept);
      // Nothing left to watch: the next give_back starts a reaper again (decided under the lock it pushes under).
      if (idle_.empty()) {
        reaping_ = false;
        done = true;
      }
    }
    if (!expired.empty()) spdlog::debug("upstream pool: closing {} connection(s) idle for upstream.pool_idle_timeout", expired.size());
    if (!gone.empty())
      spdlog::info("upstream pool: {} kept connection(s) closed by the upstream while idle (or it spoke unasked); dropped", gone.size());
    retire(std::move(expired), true);
    retire(std::move(gone), false);
    if (done) co_return;
  }
  reaping_ = false;
}

awaitable<void> upstream_pool::close_all() {
  std::vector<pooled_connection> all;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    all.swap(idle_);
  }
  if (!all.empty()) spdlog::info("upstream pool: closing {} idle connection(s)", all.size());
  retire(std::move(all), true);
  asio::post(strand_, [this] { reaper_timer_.cancel(); });
  asio::steady_timer wait(io_);
  const auto deadline = std::chrono::steady_clock::now() + quit_timeout + max_reap_period;
  while ((quitting_ > 0 || reaping_) && std::chrono::steady_clock::now() < deadline) {
    wait.expires_after(close_all_poll);
    co_await wait.async_wait(asio::use_awaitable);
  }
}

}  // namespace portcullis
