// [metrics] listen: a small HTTP/1.1 server (Boost.Beast) on the worker's
// io_context, one request per connection: GET /metrics is the Prometheus
// exposition of every worker's totals (they share one table, so any worker
// answers for all), GET /healthz says whether this daemon serves. With
// more than one worker each listens with SO_REUSEPORT, as the SMTP ports do.
#pragma once

#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "asio.hpp"

namespace portcullis {

struct http_answer {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class metrics_listener {
 public:
  using handler = std::function<http_answer(std::string_view path)>;
  // Listens on `bound` (bound before the daemon dropped its privileges:
  // bind_listeners) now; throws boost::system::system_error when it cannot.
  metrics_listener(tcp::acceptor bound, handler answer);
  void start();
  void close();

 private:
  awaitable<void> accept_loop();
  awaitable<void> serve(tcp::socket accepted);
  // One connection too many: warned once in a while, not per connection.
  void crowded(std::string_view what);

  // The connections open, those still waiting for their request oldest
  // first; shared with their coroutines, which may end after this object.
  struct connections {
    std::mutex mutex;
    unsigned open = 0;
    struct waiting {
      std::function<void()> close;  // posts the close of its socket to the socket's strand
      bool evicted = false;
    };
    std::list<waiting> silent;
    std::chrono::steady_clock::time_point crowded_told{};  // the last warning of a crowd
    unsigned long crowded_since_told = 0;
  };

  tcp::acceptor acceptor_;
  handler answer_;
  std::shared_ptr<connections> connections_ = std::make_shared<connections>();
};

}  // namespace portcullis
