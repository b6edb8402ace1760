// One place that pulls in Asio the way this project uses it (C++20
// coroutines, awaitable operators). g++ 12 needs <utility> before Asio's
// coroutine headers.
#pragma once

#include <utility>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

namespace portcullis {
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;
}  // namespace portcullis
