#include "server/server_signals.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <system_error>

namespace portcullis {

namespace {

// The pipe's write end, for the handler (which has no other way in).
std::atomic<int> queue_write_end{-1};

extern "C" void queue_server_signal(int sig) {
  const int saved = errno;  // (the interrupted code may be about to read it)
  const auto byte = static_cast<unsigned char>(sig);
  // Non-blocking: with the pipe full (64 KiB of signals unread) one more is dropped.
  [[maybe_unused]] const auto written = ::write(queue_write_end.load(std::memory_order_relaxed), &byte, 1);
  errno = saved;
}

void set_action(int sig, void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = SA_RESTART;
  sigfillset(&action.sa_mask);
  sigaction(sig, &action, nullptr);
}

asio::posix::stream_descriptor::native_handle_type made_pipe() {
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0)
    throw std::system_error(errno, std::generic_category(), "cannot make the signals' pipe");
  queue_write_end.store(ends[1], std::memory_order_relaxed);
  return ends[0];
}

}  // namespace

server_signal_queue::server_signal_queue(asio::io_context& io) : read_end_(io, made_pipe()) {
  for (const int sig : server_signals) set_action(sig, queue_server_signal);
}

server_signal_queue::~server_signal_queue() {
  // Replaced, not reset first: no instant of the default action. The write
  // end stays open (one descriptor): a handler already running on another
  // thread may still write to it.
  for (const int sig : server_signals) set_action(sig, SIG_IGN);
}

awaitable<int> server_signal_queue::next() {
  const std::size_t n = co_await read_end_.async_read_some(asio::buffer(&caught_, 1), asio::use_awaitable);
  (void)n;
  co_return caught_;
}

}  // namespace portcullis
