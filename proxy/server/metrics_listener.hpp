// [metrics] listen: a small HTTP/1.1 server (Boost.Beast) on the worker's
// io_context, one request per connection: GET /metrics is the Prometheus
// exposition of every worker's totals (they share one table, so any worker
// answers for all), GET /healthz says whether this daemon serves. With
// more than one worker each listens with SO_REUSEPORT, as the SMTP ports do.
#pragma once

#include <atomic>
#include <functional>
#include <string>

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
  awaitable<void> serve(tcp::socket socket);

  tcp::acceptor acceptor_;
  handler answer_;
  // Connections being served; shared with their coroutines, which may end after this object.
  std::shared_ptr<std::atomic<unsigned>> connections_ = std::make_shared<std::atomic<unsigned>>(0);
};

}  // namespace portcullis
