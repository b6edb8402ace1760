#include "net/close_on_exec.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace portcullis {

namespace {

boost::system::error_code last_error() { return {errno, boost::system::system_category()}; }

// An acceptor or a socket, opened on a descriptor made close-on-exec from the start.
template <class Socket>
boost::system::error_code open_close_on_exec_as(Socket& s, const tcp& protocol) {
  const int fd = ::socket(protocol.family(), SOCK_STREAM | SOCK_CLOEXEC, protocol.protocol());
  if (fd < 0) return last_error();
  boost::system::error_code ec;
  s.assign(protocol, fd, ec);
  if (ec) ::close(fd);
  return ec;
}

}  // namespace

boost::system::error_code open_close_on_exec(tcp::acceptor& acceptor, const tcp& protocol) {
  return open_close_on_exec_as(acceptor, protocol);
}

boost::system::error_code open_close_on_exec(tcp::socket& socket, const tcp& protocol) {
  return open_close_on_exec_as(socket, protocol);
}

awaitable<boost::system::error_code> accept_close_on_exec(tcp::acceptor& acceptor, tcp::socket& into, tcp::endpoint& peer) {
  boost::system::error_code ec;
  // (Non-blocking, so that a wake-up with nothing to take, EAGAIN, waits again.)
  if (!acceptor.native_non_blocking()) acceptor.native_non_blocking(true, ec);
  if (ec) co_return ec;
  for (;;) {
    co_await acceptor.async_wait(tcp::acceptor::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return ec;
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    const int fd = ::accept4(acceptor.native_handle(), reinterpret_cast<sockaddr*>(&address), &length,
                             SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      const int error = errno;
      // Gone before we took it, or taken already: wait for the next.
      if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR || error == ECONNABORTED) continue;
      co_return boost::system::error_code(error, boost::system::system_category());
    }
    if (into.is_open()) into.close(ec);
    const tcp protocol = address.ss_family == AF_INET6 ? tcp::v6() : tcp::v4();
    into.assign(protocol, fd, ec);
    if (ec) {
      ::close(fd);
      co_return ec;
    }
    std::memcpy(peer.data(), &address, std::min<std::size_t>(length, sizeof(sockaddr_storage)));
    peer.resize(length);
    co_return ec;
  }
}

}  // namespace portcullis
