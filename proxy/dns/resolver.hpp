// The daemon's one DNS resolver: SPF, DKIM, DMARC and the policies' pc.dns
// all ask it, so `[dns] nameserver` and `timeout` hold for every lookup and
// one cache serves them all.
//
// libunbound does the work (the protocol, UDP with TCP fallback on
// truncation, EDNS, a cache by TTL bounded in bytes, negative answers
// cached per RFC 2308, not those without an SOA); this class runs it on a thread of its own ("pc-dns"),
// bounds every lookup by the timeout and hands each answer back exactly
// once: to a callback, a coroutine (on the caller's executor) or a blocked
// caller. It is a stub resolver: every name, `.test` and the reverse zones
// of private networks included, is asked of the nameserver.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "asio.hpp"
#include "dns/answer.hpp"

namespace portcullis::dns {

std::string_view to_string(rr_type t);
// "A", "aaaa", "TXT", ...: the type of that name, if it is one of ours.
std::optional<rr_type> rr_type_named(std::string_view name);

std::string_view to_string(answer::status s);

struct resolver_options {
  std::string nameserver;  // "IP:PORT" or "[IPv6]:PORT"; empty: the servers of /etc/resolv.conf
  std::chrono::milliseconds timeout{5000};
  std::size_t cache_bytes = 8 * 1024 * 1024;  // records and answers together (an eighth: fresh answers served at once)

  bool operator==(const resolver_options&) const = default;
};

// A DNS name a lookup may ask for: labels of 1-63 bytes, 253 at most in all
// (RFC 1035 §2.3.4), a final dot allowed, no NUL and no backslash (which
// libunbound would read as an escape). Others are answered NXDOMAIN without
// a query, as the name cannot exist (as a host name).
bool valid_query_name(std::string_view name);

class resolver {
 public:
  using callback = std::function<void(answer)>;

  // Throws std::runtime_error when libunbound refuses the settings.
  explicit resolver(const resolver_options& options);
  // Lookups still running are answered `failure` ("the resolver stopped").
  ~resolver();
  resolver(const resolver&) = delete;
  resolver& operator=(const resolver&) = delete;

  // `done` runs exactly once, within the timeout (plus the time a busy
  // thread takes to notice), on the resolver's thread; or at once, on the
  // caller's, for an answer still within its TTL. It must not block.
  void lookup(std::string name, rr_type type, callback done);

  // Blocks the calling thread until the answer: for libspf2, the DKIM verifier and
  // plain Python hooks, never for an I/O thread. Past `deadline` (a check's
  // time budget) it stops waiting: a timeout.
  answer lookup_sync(std::string name, rr_type type,
                     std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max());

  // The answer at once, with no query, when one is still within its TTL (or
  // the name cannot exist: NXDOMAIN); else nothing. Never waits: for checks
  // tried on an I/O thread (checks/sender_checker.cpp). Not counted in the
  // metrics: the caller counts what it keeps (counted_from_memo).
  std::optional<answer> cached(const std::string& name, rr_type type);
  static void counted_from_memo(rr_type type, answer::status what);

  // The answer, delivered through the token's executor (a coroutine resumes
  // where it awaited).
  template <class CompletionToken>
  auto async_lookup(std::string name, rr_type type, CompletionToken&& token) {
    return asio::async_initiate<CompletionToken, void(answer)>(
        [this](auto handler, std::string n, rr_type t) {
          auto executor = asio::get_associated_executor(handler);
          auto work = asio::make_work_guard(executor);
          // std::function needs a copyable callable: the handler rides in a shared_ptr.
          auto h = std::make_shared<decltype(handler)>(std::move(handler));
          lookup(std::move(n), t, [h, work = std::move(work)](answer a) mutable {
            auto ex = work.get_executor();
            asio::post(ex, [h, a = std::move(a)]() mutable { std::move (*h)(std::move(a)); });
            work.reset();
          });
        },
        token, std::move(name), type);
  }

  std::chrono::milliseconds timeout() const;
  // What it was made with: a reload with the same keeps it (and its cache).
  const resolver_options& options() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// The name the reverse zone has an address at (RFC 1035 §3.5, RFC 3596 §2.5):
// "4.3.2.1.in-addr.arpa", or the 32 nibbles of an IPv6 address under ip6.arpa.
std::string reverse_name(const asio::ip::address& address);

}  // namespace portcullis::dns
