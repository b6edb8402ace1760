// Sockets opened close-on-exec (kept apart from network.hpp: the pure
// parsers there are built into the fuzzers, this coroutine is not).
#pragma once

#include "asio.hpp"

namespace portcullis {

// Every socket the daemon opens is close-on-exec, made so by the call that
// makes it (SOCK_CLOEXEC, accept4), not by a later fcntl: a policy's child
// (os.system, subprocess with close_fds=False), started by another thread at
// any moment, must not inherit a listening port (it would keep the port
// after the daemon stopped and, under SO_REUSEPORT, take its connections), a
// client or an upstream connection. Asio's own open() and accept() do not.
boost::system::error_code open_close_on_exec(tcp::acceptor& acceptor, const tcp& protocol);
boost::system::error_code open_close_on_exec(tcp::socket& socket, const tcp& protocol);
// The next connection on `acceptor`, accepted close-on-exec into `into` (closed
// before); `peer` set from accept itself. Errors as async_accept's.
awaitable<boost::system::error_code> accept_close_on_exec(tcp::acceptor& acceptor, tcp::socket& into, tcp::endpoint& peer);

}  // namespace portcullis
