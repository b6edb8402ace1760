#include "upstream/maildir_delivery.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>

namespace portcullis::maildir {

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

}  // namespace

bool sync_directory(const std::filesystem::path& dir) {
  fd_guard d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  return d.fd >= 0 && ::fsync(d.fd) == 0;
}

std::string delivery_headers(const smtp::address& sender, const std::vector<smtp::address>& recipients) {
  std::string out = "Return-Path: <" + sender.str() + ">\n";
  std::set<std::string> seen;
  for (const auto& r : recipients) {
    std::string address = r.str();
    if (!seen.insert(address).second) continue;
    out += "Delivered-To: " + address + "\n";
  }
  return out;
}

void lf_converter::feed(std::string_view in, std::string& out) {
  if (in.empty()) return;
  if (pending_cr_) {
    if (in.front() != '\n') out += '\r';
    pending_cr_ = false;
  }
  std::size_t pos = 0;
  for (auto crlf = in.find("\r\n"); crlf != std::string_view::npos; crlf = in.find("\r\n", pos)) {
    out.append(in.substr(pos, crlf - pos));
    out += '\n';
    pos = crlf + 2;
  }
  if (in.back() == '\r' && pos < in.size()) {
    out.append(in.substr(pos, in.size() - 1 - pos));
    pending_cr_ = true;
  } else {
    out.append(in.substr(pos));
  }
}

void lf_converter::finish(std::string& out) {
  if (pending_cr_) out += '\r';
  pending_cr_ = false;
}

std::string to_lf(std::string_view header, std::string_view message) {
  std::string out;
  out.reserve(header.size() + message.size());
  lf_converter c;
  c.feed(header, out);
  c.finish(out);
  c.feed(message, out);
  c.finish(out);
  return out;
}

delivery deliver(const std::filesystem::path& root, const std::string& hostname, const smtp::address& sender,
                 const std::vector<smtp::address>& recipients, std::string_view header,
                 const message_store& message, directory_sync sync) {
  // A Maildir is its owner's alone (Postfix's local(8), maildirmake: 0700):
  // what is made of it here is made so (0755 let every local user list the
  // mail's arrival times); what exists stays as its owner set it.
  // (maildir:/x/Maildir/ names /x/Maildir: its "parent" must not be made first.)
  std::error_code ec;
  auto dir = root.lexically_normal();
  if (!dir.has_filename() && dir.has_parent_path()) dir = dir.parent_path();
  if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path(), ec);
  ::mkdir(dir.c_str(), 0700);
  for (const char* sub : {"tmp", "new", "cur"}) ::mkdir((dir / sub).c_str(), 0700);
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  // Unique per host (Maildir: time.unique.host): microseconds, pid, a counter.
  // (Appended piece by piece: "M" + std::string trips g++ 12's -Wrestrict, GCC bug 105651.)
  std::string queue_id = "M";
  queue_id += std::to_string(now.tv_nsec / 1000);
  queue_id += 'P';
  queue_id += std::to_string(::getpid());
  queue_id += 'Q';
  queue_id += std::to_string(++delivery_counter);
  const std::string name = std::to_string(now.tv_sec) + "." + queue_id + "." + hostname;
  const auto tmp = root / "tmp" / name;
  const auto dest = root / "new" / name;
  {
    fd_guard f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
    if (f.fd < 0) return {{}, "open " + tmp.string() + ": " + std::strerror(errno), {}};
    std::string out = delivery_headers(sender, recipients);
    lf_converter lf;
    lf.feed(header, out);
    lf.finish(out);
    // The message in chunks, converted as it goes: never a whole copy of it.
    message_store::reader in(message);
    bool written = true;
    for (auto chunk = in.next(); written && !chunk.empty(); chunk = in.next()) {
      lf.feed(chunk, out);
      written = write_all(f.fd, out);
      out.clear();
    }
    lf.finish(out);
    written = written && write_all(f.fd, out);
    if (!written || in.failed() || ::fsync(f.fd) != 0) {
      const std::string why = in.failed() ? in.error() : std::strerror(errno);
      std::filesystem::remove(tmp, ec);
      return {{}, "write " + tmp.string() + ": " + why, {}};
    }
  }
  if (::rename(tmp.c_str(), dest.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::filesystem::remove(tmp, ec);
    return {{}, "rename into new/: " + why, {}};
  }
  // From here on the message is in the mailbox: a reader sees it. Only
  // whether its name survives a crash is uncertain, and a 451 would make the
  // client deliver it a second time.
  if (!sync(root / "new")) return {queue_id, {}, "fsync " + (root / "new").string() + ": " + std::strerror(errno)};
  return {queue_id, {}, {}};
}

}  // namespace portcullis::maildir
