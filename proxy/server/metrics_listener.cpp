#include "server/metrics_listener.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>

#include "log.hpp"
#include "net/close_on_exec.hpp"
#include "net/network.hpp"

namespace portcullis {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

// The path a request target names: without its query (Prometheus may add
// parameters), and without the scheme and host of the absolute form
// ("http://host:9100/metrics"), which a server must accept (RFC 9112 §3.2.2)
// and a proxy in front of the listener may send.
std::string_view path_of(std::string_view target) {
  target = target.substr(0, target.find('?'));
  const auto scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos || target.starts_with('/')) return target;
  const auto path = target.find('/', scheme_end + 3);
  return path == std::string_view::npos ? std::string_view("/") : target.substr(path);
}

constexpr std::chrono::seconds request_timeout{10};  // for the whole exchange
constexpr std::chrono::seconds header_timeout{2};    // for the request to arrive
constexpr std::size_t max_request_header = 8192;
// Connections at once, so that idle ones cannot take the worker's file
// descriptors from its SMTP clients. Past it, the oldest still silent gives
// way to the new one (a scraper asks at once): connections that say nothing
// cannot keep Prometheus or a health check out.
constexpr unsigned max_connections = 16;
// A flood of connections past max_connections is told once in this long
// (with how many since), not once per connection.
constexpr std::chrono::seconds crowded_log_interval{10};

}  // namespace

metrics_listener::metrics_listener(tcp::acceptor bound, handler answer)
    : acceptor_(std::move(bound)), answer_(std::move(answer)) {
  acceptor_.listen();
}

void metrics_listener::start() {
  asio::co_spawn(asio::make_strand(acceptor_.get_executor()), accept_loop(), asio::detached);
}

void metrics_listener::close() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
}

awaitable<void> metrics_listener::accept_loop() {
  for (;;) {
    tcp::socket socket(asio::make_strand(acceptor_.get_executor()));
    tcp::endpoint peer;
    const auto ec = co_await accept_close_on_exec(acceptor_, socket, peer);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
      spdlog::warn("metrics: accept: {}", ec.message());
      asio::steady_timer pause(acceptor_.get_executor(), std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::use_awaitable);
      continue;
    }
    {
      std::lock_guard lock(connections_->mutex);
      if (connections_->open >= max_connections) {
        const auto oldest = std::find_if(connections_->silent.begin(), connections_->silent.end(),
                                         [](const auto& w) { return !w.evicted; });
        if (oldest == connections_->silent.end()) {
          crowded("one more is closed");
          continue;  // (closed with the socket)
        }
        oldest->evicted = true;  // closed on its own strand; its coroutine leaves the list
        oldest->close();
        crowded("the oldest that has said nothing is closed");
      }
      ++connections_->open;
    }
    asio::co_spawn(socket.get_executor(), serve(std::move(socket)), [c = connections_](std::exception_ptr) {
      std::lock_guard lock(c->mutex);
      --c->open;
    });
  }
}

// (Under connections_->mutex.)
void metrics_listener::crowded(std::string_view what) {
  auto& c = *connections_;
  ++c.crowded_since_told;
  const auto now = std::chrono::steady_clock::now();
  if (c.crowded_told != std::chrono::steady_clock::time_point{} && now - c.crowded_told < crowded_log_interval) return;
  if (c.crowded_since_told > 1)
    spdlog::warn("metrics: {} connections open; {} ({} such connections since the last line)", max_connections, what,
                 c.crowded_since_told);
  else
    spdlog::warn("metrics: {} connections open; {}", max_connections, what);
  c.crowded_told = now;
  c.crowded_since_told = 0;
}

awaitable<void> metrics_listener::serve(tcp::socket accepted) {
  // Until its whole request has come, the stream is on the list of those the next
  // connection may close (on this strand: the read below then ends).
  const auto shared = std::make_shared<beast::tcp_stream>(std::move(accepted));
  auto& stream = *shared;
  std::list<connections::waiting>::iterator listed;
  {
    std::lock_guard lock(connections_->mutex);
    listed = connections_->silent.insert(connections_->silent.end(), {[shared] {
      asio::post(shared->get_executor(), [shared] { shared->close(); });
    }});
  }
  const auto unlist = [&, c = connections_] {
    std::lock_guard lock(c->mutex);
    c->silent.erase(listed);
  };
  beast::flat_buffer buffer(max_request_header);
  http::request_parser<http::empty_body> parser;
  parser.header_limit(max_request_header);
  stream.expires_after(header_timeout);
  boost::system::error_code ec;
  // The header first: another method is answered 405 whatever its body.
  // The header is the whole request: no body is ever read. Another method is
  // answered 405 whatever its body; a GET or HEAD that announces one, 400
  // (a body there has no meaning, RFC 9110 §9.3.1, and waiting for it would
  // let a client hold the connection for request_timeout).
  co_await http::async_read_header(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  unlist();
  stream.expires_after(request_timeout);  // (for the answer's write)
  const auto method = ec ? http::verb::unknown : parser.get().method();
  const bool head = method == http::verb::head, asked = method == http::verb::get || head;
  const bool with_body = !ec && (parser.chunked() || parser.content_length().value_or(0) > 0);
  http::response<http::string_body> res;
  if (ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout) co_return;  // nothing asked
    res.result(http::status::bad_request);
    res.body() = "bad request\n";
  } else if (asked && with_body) {
    res.version(parser.get().version());
    res.result(http::status::bad_request);
    res.body() = "a GET or HEAD carries no body\n";
  } else {
    const auto& req = parser.get();
    res.version(req.version());
    if (!asked) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET, HEAD");
      res.body() = "only GET\n";
    } else {
      auto a = answer_(path_of(std::string_view(req.target().data(), req.target().size())));
      res.result(a.status);
      res.set(http::field::content_type, a.content_type);
      res.body() = std::move(a.body);
    }
  }
  res.set(http::field::server, "portcullis");
  res.keep_alive(false);
  res.prepare_payload();
  if (head) {
    // The length a GET would have (RFC 9110 §9.3.2), and no body.
    const auto length = res.body().size();
    res.body().clear();
    res.set(http::field::content_length, std::to_string(length));
  }
  co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
}

}  // namespace portcullis
