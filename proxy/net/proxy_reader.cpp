#include "net/proxy_reader.hpp"

namespace portcullis {

namespace {
constexpr std::chrono::milliseconds partial_header_pause{20};  // between peeks at a partial header
}

awaitable<proxy_header_read> read_proxy_header(line_stream& in, std::chrono::steady_clock::time_point deadline) {
  using outcome = proxy_header_read::outcome;
  proxy_header_read out;
  const auto stop = [&out](outcome what, std::string why) {
    out.what = what;
    out.problem = std::move(why);
    return std::move(out);
  };
  std::size_t seen = 0;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    std::string_view peeked;
    if (left.count() > 0) {
      auto got = co_await in.peek(smtp::proxy_v2_max_length, left);
      peeked = got;
    }
    if (peeked.empty()) {
      if (in.last_status() == line_stream::status::woken) co_return stop(outcome::woken, "stopping: no PROXY header yet");
      co_return stop(outcome::ended, "no PROXY header before the connection ended or timed out");
    }
    const auto parsed = smtp::parse_proxy_header(peeked, out.header);
    if (parsed == smtp::proxy_parse::invalid) {
      std::string why = "invalid PROXY header (";  // (appended: g++ 12 warns, wrongly, at "..." + std::string)
      why += out.header.problem.empty() ? std::string_view("malformed") : std::string_view(out.header.problem);
      why += ")";
      co_return stop(outcome::invalid, std::move(why));
    }
    if (parsed == smtp::proxy_parse::done) break;
    if (peeked.size() == seen) {
      // The rest of the header has not arrived: the socket stays readable, so wait a moment
      // (unless the peer has shut its side: the rest never comes).
      if (in.peer_finished_sending()) co_return stop(outcome::ended, "the connection ended within the PROXY header");
      asio::steady_timer pause(in.socket().get_executor(), partial_header_pause);
      co_await pause.async_wait(asio::use_awaitable);
    }
    seen = peeked.size();
  }
  if (!in.skip_peeked(out.header.length))
    co_return stop(outcome::ended, "lost the connection while reading the PROXY header");
  out.what = outcome::read;
  co_return out;
}

}  // namespace portcullis
