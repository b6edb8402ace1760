// One place that pulls in Asio the way this project uses it (C++20
// coroutines, awaitable operators). g++ 12 needs <utility> before Asio's
// coroutine headers.
#pragma once

#include <utility>

// g++ 12 miscompiles some co_await expressions (seen here as SIGSEGV/SIGILL):
// inside && / || / ?:, inside if-conditions, and with temporaries alive
// across the suspension. House rule: every co_await is a statement of its
// own whose result goes into a named local; arguments are named locals too.

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

namespace portcullis {
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;
}  // namespace portcullis
