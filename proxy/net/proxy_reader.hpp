// The PROXY protocol header (HAProxy's v1 or v2) that a trusted load
// balancer sends before anything else, read off a connection: peeked, never
// read past (what follows may be a TLS ClientHello, which TLS must read
// itself), and taken off once whole. The session reads it before its
// greeting; a connection refused on an implicit-TLS port, before the
// handshake that carries its 421.
#pragma once

#include <chrono>
#include <string>

#include "asio.hpp"
#include "net/line_stream.hpp"
#include "smtp/proxy_header.hpp"

namespace portcullis {

struct proxy_header_read {
  enum class outcome { read, ended, invalid, woken };
  outcome what = outcome::ended;
  smtp::proxy_header header;  // (read)
  std::string problem;        // what the log says, when not read
};

// The header, waited for until `deadline` (a partial one is looked at again
// every 20 ms); `woken`: the stream's wake() (the daemon is stopping).
awaitable<proxy_header_read> read_proxy_header(line_stream& in, std::chrono::steady_clock::time_point deadline);

}  // namespace portcullis
