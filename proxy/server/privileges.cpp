#include "server/privileges.hpp"

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

namespace portcullis {

namespace {

// The capability sets as the kernel takes them (glibc has no wrapper; libcap is not worth a dependency).
struct capability_sets {
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
};

bool get_capabilities(capability_sets& c) {
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  return syscall(SYS_capget, &h, c.data) == 0;
}

bool set_capabilities(const capability_sets& c) {
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  return syscall(SYS_capset, &h, c.data) == 0;
}

std::runtime_error failed(const std::string& what) {
  return std::runtime_error(fmt::format("{}: {}", what, std::strerror(errno)));
}

}  // namespace

std::optional<run_as> lookup_user(const std::string& name) {
  passwd pw{}, *found = nullptr;
  std::vector<char> buf(16384);
  if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found) return std::nullopt;
  return run_as{pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir ? pw.pw_dir : "/"};
}

void become_user(const run_as& user, bool keep_bind_capability) {
  if (geteuid() != 0) throw std::runtime_error(fmt::format("becoming user {} needs root (this is uid {})", user.name, geteuid()));
  // The user's own supplementary groups (ssl-cert, say), none of root's.
  if (initgroups(user.name.c_str(), user.gid) != 0) throw failed("initgroups(\"" + user.name + "\")");
  // Capabilities survive setresuid only with KEEPCAPS, and then only in the permitted set.
  if (keep_bind_capability && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) throw failed("prctl(PR_SET_KEEPCAPS)");
  // The group first: once the uid is not 0 the gid can no longer change.
  if (setresgid(user.gid, user.gid, user.gid) != 0) throw failed(fmt::format("setresgid({})", user.gid));
  if (setresuid(user.uid, user.uid, user.uid) != 0) throw failed(fmt::format("setresuid({})", user.uid));
  if (keep_bind_capability) {
    capability_sets c;
    const auto bit = CAP_TO_MASK(CAP_NET_BIND_SERVICE);
    c.data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].permitted = bit;
    c.data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].effective = bit;
    if (!set_capabilities(c)) throw failed("capset(CAP_NET_BIND_SERVICE)");
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
  }
  // Checked, not assumed: a kernel or policy module that let any of it fail silently must not leave root behind.
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 || ru != user.uid || eu != user.uid ||
      su != user.uid || rg != user.gid || eg != user.gid || sg != user.gid)
    throw std::runtime_error(fmt::format("still not user {} (uid {}, gid {}) after setresuid", user.name, user.uid, user.gid));
  if (user.uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
    throw std::runtime_error(fmt::format("user {} could become root again", user.name));
  if (user.gid != 0 && user.uid != 0 && (setgid(0) == 0 || setegid(0) == 0))
    throw std::runtime_error(fmt::format("user {} could take group 0 again", user.name));
  // What su(1) sets: a policy's expanduser() or subprocess finds the user's home, not root's.
  setenv("HOME", user.home.c_str(), 1);
  setenv("USER", user.name.c_str(), 1);
  setenv("LOGNAME", user.name.c_str(), 1);
}

void drop_capabilities() {
  if (geteuid() == 0) return;
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  capability_sets none;
  if (!set_capabilities(none)) throw failed("capset (dropping every capability)");
}

void keep_capabilities_from_children() {
  if (geteuid() == 0) return;
  // Ambient capabilities are what an unprivileged execve passes on.
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  capability_sets c;
  if (!get_capabilities(c)) return;
  for (auto& d : c.data) d.inheritable = 0;
  set_capabilities(c);
}

}  // namespace portcullis
