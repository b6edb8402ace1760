#include "upstream/maildir_upstream.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "log.hpp"

namespace portcullis {

namespace {

std::atomic<unsigned long> delivery_counter{0};

struct fd_guard {
  int fd;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

bool sync_dir(const std::filesystem::path& dir) {
  fd_guard d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY)};
  return d.fd >= 0 && ::fsync(d.fd) == 0;
}

// Maildir files use the local line ending (LF), as every delivery agent writes them.
std::string to_lf(std::string_view header, std::string_view message) {
  std::string out;
  out.reserve(header.size() + message.size());
  for (auto part : {header, message}) {
    std::size_t pos = 0;
    for (auto crlf = part.find("\r\n"); crlf != std::string_view::npos; crlf = part.find("\r\n", pos)) {
      out.append(part.substr(pos, crlf - pos));
      out += '\n';
      pos = crlf + 2;
    }
    out.append(part.substr(pos));
  }
  return out;
}

struct delivery_result {
  std::string queue_id;
  std::string error;  // empty on success
};

// Writes one copy per recipient into tmp/, then moves all of them into new/.
// On any failure nothing stays behind: no half-delivered message.
delivery_result deliver(const std::filesystem::path& root, const std::string& hostname, const smtp::address& sender,
                        const std::vector<smtp::address>& recipients, const std::string& content) {
  std::error_code ec;
  for (const char* sub : {"tmp", "new", "cur"}) std::filesystem::create_directories(root / sub, ec);
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const std::string queue_id = "M" + std::to_string(now.tv_nsec / 1000) + "P" + std::to_string(::getpid()) + "Q" +
                               std::to_string(++delivery_counter);
  std::vector<std::string> names;
  auto cleanup = [&](const char* sub) {
    for (const auto& n : names) std::filesystem::remove(root / sub / n, ec);
  };
  for (std::size_t i = 0; i < recipients.size(); ++i) {
    std::string name = std::to_string(now.tv_sec) + "." + queue_id + "R" + std::to_string(i) + "." + hostname;
    const std::string head = "Return-Path: <" + sender.str() + ">\nDelivered-To: " + recipients[i].str() + "\n";
    const auto path = root / "tmp" / name;
    fd_guard f{::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
    if (f.fd < 0) {
      cleanup("tmp");
      return {{}, "open " + path.string() + ": " + std::strerror(errno)};
    }
    names.push_back(name);
    if (!write_all(f.fd, head) || !write_all(f.fd, content) || ::fsync(f.fd) != 0) {
      cleanup("tmp");
      return {{}, "write " + path.string() + ": " + std::strerror(errno)};
    }
  }
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (::rename((root / "tmp" / names[i]).c_str(), (root / "new" / names[i]).c_str()) != 0) {
      const std::string why = std::strerror(errno);
      for (std::size_t k = 0; k < i; ++k) std::filesystem::remove(root / "new" / names[k], ec);
      cleanup("tmp");
      return {{}, "rename into new/: " + why};
    }
  }
  if (!sync_dir(root / "new")) return {{}, "fsync new/: " + std::string(std::strerror(errno))};
  return {queue_id, {}};
}

}  // namespace

maildir_upstream::maildir_upstream(const config& cfg, const session_log& log, asio::any_io_executor,
                                   asio::thread_pool& blocking)
    : root_(cfg.upstream.maildir), hostname_(cfg.server.hostname), log_(log), blocking_(blocking) {}

awaitable<smtp::reply> maildir_upstream::mail(const smtp::address& sender, const mail_options&) {
  sender_ = sender;
  recipients_.clear();
  co_return smtp::reply{250, "2.1.0", "Ok"};
}

awaitable<smtp::reply> maildir_upstream::rcpt(const smtp::address& recipient) {
  recipients_.push_back(recipient);
  co_return smtp::reply{250, "2.1.5", "Ok"};
}

awaitable<smtp::reply> maildir_upstream::data(std::string_view header, std::string_view message) {
  const std::string content = to_lf(header, message);
  auto write_copies = [&]() -> awaitable<delivery_result> {
    co_return deliver(root_, hostname_, sender_, recipients_, content);
  };
  auto result = co_await asio::co_spawn(blocking_, std::move(write_copies), asio::use_awaitable);
  recipients_.clear();
  if (!result.error.empty()) {
    log_.error("maildir: {}", result.error);
    co_return smtp::reply{451, "4.3.0", "Local delivery failed, try again later"};
  }
  co_return smtp::reply{250, "2.0.0", "Ok: queued as " + result.queue_id};
}

awaitable<void> maildir_upstream::reset() {
  recipients_.clear();
  co_return;
}

}  // namespace portcullis
