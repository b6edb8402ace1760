// server.user: who the daemon runs as once its listeners are bound.
//
// Started as root with server.user set, the daemon binds, then becomes that
// user (its groups, its primary group, its uid) before the interpreter starts
// or any policy, certificate, key or users file is read: those are read as
// the user at start-up exactly as on a SIGHUP reload, so a file the user
// cannot read fails at start, not at the first reload.
//
// With server.workers > 1 the supervisor becomes the user before it forks,
// keeping only CAP_NET_BIND_SERVICE, so that a restarted worker can bind its
// own SO_REUSEPORT sockets again (README "Workers": a dead worker's socket
// closes and the others take its share). Each worker drops that capability
// once bound. Root is never kept: a supervisor that keeps root (Postfix's
// master) would hold far more than the one thing it needs.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

namespace portcullis {

struct run_as {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;  // the user's primary group
  std::string home;
};

// From the passwd database; nullopt when there is no such user.
std::optional<run_as> lookup_user(const std::string& name);

// Becomes `user` for good (supplementary groups, gid, uid: real, effective
// and saved), optionally keeping CAP_NET_BIND_SERVICE, and checks that root
// cannot be regained. Needs root; throws std::runtime_error saying why not.
void become_user(const run_as& user, bool keep_bind_capability);

// Not root: drops every capability (CAP_NET_BIND_SERVICE from the supervisor,
// or the ambient ones systemd gave), so that policies run with none. As
// root (no server.user) there is nothing worth dropping short of the user.
void drop_capabilities();

// Not root: capabilities stay in this process but go to no program it
// executes (a --check-config child, a policy's subprocess).
void keep_capabilities_from_children();

}  // namespace portcullis
