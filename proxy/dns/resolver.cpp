#include "dns/resolver.hpp"

#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unbound.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <future>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "metrics/metrics.hpp"
#include "smtp/text.hpp"

namespace portcullis::dns {

namespace {

constexpr int class_in = 1;
constexpr int rcode_nxdomain = 3;
constexpr std::uint16_t type_soa = 6;

// The longest any answer is kept, and a negative one (NXDOMAIN, NODATA):
// unbound's own defaults (cache-max-ttl, cache-max-negative-ttl), set here
// for its cache too, so that both caches agree and a record published
// after a negative answer is seen within the hour.
constexpr std::uint32_t max_ttl = 86400;
constexpr std::uint32_t max_negative_ttl = 3600;

// Zones unbound answers itself by default (RFC 6761, RFC 6303, AS112). A
// stub resolver asks its nameserver about every name: tests serve `.test`
// and documentation networks, and an operator's nameserver may serve
// reverse zones of private networks. `unblock-lan-zones` covers RFC 1918.
// Loopback's (below) go to [dns] nameserver when one is set: a PTR of
// 127.0.0.1 was unbound's "localhost" whatever it served. Without one they
// stay unbound's (and /etc/hosts'), as a system resolver answers them,
// never a wait on a nameserver that may not answer.
constexpr std::array loopback_zones{
    "localhost.", "127.in-addr.arpa.", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa."};
constexpr std::array own_zones{
    "test.", "invalid.", "onion.", "home.arpa.", "resolver.arpa.", "service.arpa.",
    "0.in-addr.arpa.", "254.169.in-addr.arpa.", "2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.",
    "113.0.203.in-addr.arpa.", "255.255.255.255.in-addr.arpa.",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.", "a.e.f.ip6.arpa.", "b.e.f.ip6.arpa.",
    "8.b.d.0.1.0.0.2.ip6.arpa."};

// "192.0.2.1:53" / "[2001:db8::1]:53" / "192.0.2.1" -> unbound's "ADDR@PORT".
std::string unbound_address(const std::string& endpoint) {
  std::string host = endpoint, port = "53";
  if (!endpoint.empty() && endpoint.front() == '[') {
    const auto close = endpoint.find(']');
    if (close == std::string::npos) throw std::runtime_error("bad nameserver " + endpoint);
    host = endpoint.substr(1, close - 1);
    if (close + 1 < endpoint.size() && endpoint[close + 1] == ':') port = endpoint.substr(close + 2);
  } else if (const auto colon = endpoint.rfind(':'); colon != std::string::npos &&
                                                     endpoint.find(':') == colon) {
    host = endpoint.substr(0, colon);
    port = endpoint.substr(colon + 1);
  }
  return host + "@" + port;
}

unsigned outgoing_range() {
  rlimit files{};
  const rlim_t allowed = ::getrlimit(RLIMIT_NOFILE, &files) == 0 ? files.rlim_cur : 1024;
  return static_cast<unsigned>(std::clamp<rlim_t>(allowed / 4, 64, 1024));
}

// unbound reads its settings as a config file; ub_ctx_set_option cannot set
// local-zone. The file lives in memory and is gone once read.
void configure(ub_ctx* ctx, const resolver_options& o) {
  std::string text = "server:\n";
  text += "  module-config: \"iterator\"\n";       // no DNSSEC validation: no trust anchor to validate with
  text += "  do-not-query-localhost: no\n";        // the nameserver may well be on 127.0.0.1
  text += "  infra-keep-probing: yes\n";           // a nameserver that timed out once is asked again
  // Queries out at once. Names the nameserver answers late or never (a zone
  // whose own servers are dead: a sender picks them, for SPF, DKIM, DMARC)
  // keep their query out past our timeout; with unbound's few ports, 20 of
  // them at once left every other lookup waiting for one, unsent, for
  // minutes. A quarter of the descriptors this process may open, at most 1024.
  text += "  outgoing-range: " + std::to_string(outgoing_range()) + "\n";
  // The nameserver's silence is forgotten at once: after an outage lookups
  // failed (SERVFAIL, unsent) for a minute and more once it answered again.
  text += "  infra-host-ttl: 2\n";
  text += "  unblock-lan-zones: yes\n  insecure-lan-zones: yes\n";
  text += "  cache-max-ttl: " + std::to_string(max_ttl) + "\n";
  text += "  cache-max-negative-ttl: " + std::to_string(max_negative_ttl) + "\n";
  const auto ask_the_nameserver = [&text](const char* zone) { text += std::string("  local-zone: \"") + zone + "\" nodefault\n"; };
  for (const char* zone : own_zones) ask_the_nameserver(zone);
  if (!o.nameserver.empty())
    for (const char* zone : loopback_zones) ask_the_nameserver(zone);
  const auto bytes = std::max<std::size_t>(o.cache_bytes - o.cache_bytes / 8, 64 * 1024);  // (an eighth: answer_memo)
  text += "  rrset-cache-size: " + std::to_string(bytes / 2) + "\n";
  text += "  msg-cache-size: " + std::to_string(bytes / 2) + "\n";
  const int fd = ::memfd_create("portcullis-unbound.conf", MFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot configure the resolver: memfd_create failed");
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const int rc = written ? ub_ctx_config(ctx, path.c_str()) : -1;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(std::string("cannot configure the resolver: ") + (written ? ub_strerror(rc) : "write failed"));
}

void check(int rc, const char* what) {
  if (rc != 0) throw std::runtime_error(std::string(what) + ": " + ub_strerror(rc));
}

// A domain name in uncompressed wire format (libunbound hands rdata names
// uncompressed) as text without the final dot; nullopt if malformed.
std::optional<std::string> wire_name(const unsigned char* p, std::size_t n) {
  std::string out;
  std::size_t i = 0;
  while (i < n) {
    const std::size_t len = p[i++];
    if (len == 0) return out.empty() ? std::optional<std::string>(".") : std::optional<std::string>(out);
    if (len > 63 || i + len > n) return std::nullopt;  // (a compression pointer lands here too)
    if (!out.empty()) out += '.';
    out.append(reinterpret_cast<const char*>(p + i), len);
    i += len;
  }
  return std::nullopt;
}

std::optional<record> decode(rr_type type, const unsigned char* p, std::size_t n) {
  record r;
  char text[INET6_ADDRSTRLEN];
  switch (type) {
    case rr_type::a:
      if (n != 4 || !::inet_ntop(AF_INET, p, text, sizeof text)) return std::nullopt;
      r.value = text;
      return r;
    case rr_type::aaaa:
      if (n != 16 || !::inet_ntop(AF_INET6, p, text, sizeof text)) return std::nullopt;
      r.value = text;
      return r;
    case rr_type::mx: {
      if (n < 3) return std::nullopt;
      r.preference = static_cast<std::uint16_t>(p[0] << 8 | p[1]);
      auto host = wire_name(p + 2, n - 2);
      if (!host) return std::nullopt;
      r.value = std::move(*host);
      return r;
    }
    case rr_type::ptr: {
      auto host = wire_name(p, n);
      if (!host) return std::nullopt;
      r.value = std::move(*host);
      return r;
    }
    case rr_type::txt:
      for (std::size_t i = 0; i < n;) {
        const std::size_t len = p[i++];
        if (i + len > n) return std::nullopt;
        r.value.append(reinterpret_cast<const char*>(p + i), len);
        i += len;
      }
      return r;
  }
  return std::nullopt;
}

constexpr std::size_t past_end = std::string::npos;

// Past a domain name in wire format (compression pointers allowed, RFC 1035
// §4.1.4) at `at`; past_end if it runs past the end.
std::size_t skip_name(const unsigned char* p, std::size_t n, std::size_t at) {
  while (at < n) {
    const unsigned len = p[at];
    if (len == 0) return at + 1;
    if ((len & 0xC0) == 0xC0) return at + 2 <= n ? at + 2 : past_end;
    if ((len & 0xC0) != 0) return past_end;
    at += 1 + len;
  }
  return past_end;
}

std::uint16_t u16(const unsigned char* p) { return static_cast<std::uint16_t>(p[0] << 8 | p[1]); }

// Whether the reply (header, question, answer, authority: RFC 1035 §4.1)
// carries an SOA in its authority section: what makes a negative answer
// cacheable (RFC 2308 §5). A reply that does not parse has none.
bool has_authority_soa(const void* packet, int length) {
  if (packet == nullptr || length < 12) return false;
  const auto* p = static_cast<const unsigned char*>(packet);
  const auto n = static_cast<std::size_t>(length);
  const unsigned questions = u16(p + 4), answers = u16(p + 6), authorities = u16(p + 8);
  std::size_t at = 12;
  for (unsigned i = 0; i < questions; ++i) {
    at = skip_name(p, n, at);
    if (at == past_end || at + 4 > n) return false;
    at += 4;  // type, class
  }
  for (unsigned i = 0; i < answers + authorities; ++i) {
    at = skip_name(p, n, at);
    if (at == past_end || at + 10 > n) return false;
    const std::uint16_t type = u16(p + at);
    const std::size_t rdata = u16(p + at + 8);
    if (i >= answers && type == type_soa) return true;
    at += 10 + rdata;
  }
  return false;
}

// An answer, and whether a cache may keep it.
struct outcome {
  answer a;
  bool cacheable = true;
};

// The TTL of a negative answer (NXDOMAIN, NODATA): its SOA's, at most an
// hour. Without an SOA it is not to be cached (RFC 2308 §5): libunbound
// reports a TTL of 32768 s for it and keeps it 5 s; the TTL given on is 0.
void negative(outcome& out, std::uint32_t ttl, const ub_result& res) {
  out.cacheable = has_authority_soa(res.answer_packet, res.answer_len);
  out.a.ttl = out.cacheable ? std::min(ttl, max_negative_ttl) : 0;
}

outcome answer_of(rr_type type, const ub_result& res) {
  outcome out;
  answer& a = out.a;
  const auto ttl = static_cast<std::uint32_t>(std::max(res.ttl, 0));
  if (res.rcode == rcode_nxdomain || res.nxdomain) {
    a.what = answer::status::nxdomain;
    negative(out, ttl, res);
    return out;
  }
  if (res.rcode != 0) {
    a.error = "rcode " + std::to_string(res.rcode) + (res.rcode == 2 ? " (SERVFAIL)" : res.rcode == 5 ? " (REFUSED)" : "");
    return out;
  }
  a.what = answer::status::ok;
  a.ttl = std::min(ttl, max_ttl);
  if (!res.havedata) {
    negative(out, ttl, res);  // NODATA (RFC 2308 §2.2)
    return out;
  }
  for (int i = 0; res.data[i] != nullptr; ++i) {
    auto r = decode(type, reinterpret_cast<const unsigned char*>(res.data[i]), static_cast<std::size_t>(res.len[i]));
    if (r) a.records.push_back(std::move(*r));
  }
  if (type == rr_type::mx) {
    std::stable_sort(a.records.begin(), a.records.end(),
                     [](const record& x, const record& y) { return x.preference < y.preference; });
  }
  return out;
}

}  // namespace

std::string_view to_string(rr_type t) {
  switch (t) {
    case rr_type::a: return "A";
    case rr_type::ptr: return "PTR";
    case rr_type::mx: return "MX";
    case rr_type::txt: return "TXT";
    case rr_type::aaaa: return "AAAA";
  }
  return "?";
}

std::optional<rr_type> rr_type_named(std::string_view name) {
  for (rr_type t : {rr_type::a, rr_type::aaaa, rr_type::mx, rr_type::txt, rr_type::ptr})
    if (smtp::equals_nocase(to_string(t), name)) return t;
  return std::nullopt;
}

std::string_view to_string(answer::status s) {
  switch (s) {
    case answer::status::ok: return "ok";
    case answer::status::nxdomain: return "nxdomain";
    case answer::status::timeout: return "timeout";
    case answer::status::failure: return "failure";
  }
  return "?";
}

bool valid_query_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
    } else if (++label > 63 || c == '\0' || c == '\\') {
      // (libunbound reads "\." and "\000" as escapes: the name asked would not
      // be the one measured here, nor the one the policy wrote)
      return false;
    }
  }
  return label > 0;
}

// Answers still within their TTL, served on the asking thread. libunbound
// has them cached too, but reaching its cache takes three threads (the
// caller's, ours, unbound's) and their wake-ups: 0.15 ms of CPU a message
// in the full-stack bench, where SPF, DKIM and DMARC ask the same few
// names over and over. Bounded in bytes; when full it starts over.
class answer_memo {
 public:
  explicit answer_memo(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  std::optional<answer> get(std::string_view name, rr_type type) {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mutex_);
    const auto found = entries_.find(key(name, type));
    if (found == entries_.end() || found->second.expires <= now) return std::nullopt;
    answer a = found->second.a;
    // What is left of the TTL, as a cache hands it on (RFC 1035 §4.1.3).
    a.ttl = static_cast<std::uint32_t>(std::chrono::ceil<std::chrono::seconds>(found->second.expires - now).count());
    return a;
  }

  // Answers that name something or that nothing exists (RFC 2308), for their
  // TTL (the caller leaves out what may not be cached).
  void put(std::string_view name, rr_type type, const answer& a) {
    if ((a.what != answer::status::ok && a.what != answer::status::nxdomain) || a.ttl == 0) return;
    std::size_t bytes = 2 * name.size() + 128;
    for (const auto& r : a.records) bytes += r.value.size() + sizeof r;
    if (bytes > max_bytes_ / 16) return;
    const auto expires = std::chrono::steady_clock::now() + std::chrono::seconds(a.ttl);
    std::lock_guard lock(mutex_);
    if (bytes_ + bytes > max_bytes_) {
      entries_.clear();
      bytes_ = 0;
    }
    auto [it, added] = entries_.try_emplace(key(name, type));
    if (!added) bytes_ -= it->second.bytes;
    it->second = entry{a, expires, bytes};
    bytes_ += bytes;
  }

 private:
  struct entry {
    answer a;
    std::chrono::steady_clock::time_point expires;
    std::size_t bytes = 0;
  };
  // Names compare without case (RFC 4343); a final dot names the same.
  static std::string key(std::string_view name, rr_type type) {
    if (name.ends_with('.')) name.remove_suffix(1);
    return std::to_string(static_cast<int>(type)) + ' ' + smtp::to_lower(name);
  }

  const std::size_t max_bytes_;
  std::mutex mutex_;
  std::unordered_map<std::string, entry> entries_;
  std::size_t bytes_ = 0;
};

struct resolver::impl {
  struct pending {
    callback done;
    asio::steady_timer timer;
    int ub_id = 0;
    rr_type type;
    std::string name;
  };

  explicit impl(const resolver_options& o)
      : options(o), timeout(o.timeout), memo(o.cache_bytes / 8), ctx(ub_ctx_create()), watch(io), guard(asio::make_work_guard(io)) {
    if (ctx == nullptr) throw std::runtime_error("cannot create the resolver");
    try {
      configure(ctx, o);
      if (o.nameserver.empty()) {
        check(ub_ctx_resolvconf(ctx, nullptr), "cannot read /etc/resolv.conf");
        check(ub_ctx_hosts(ctx, nullptr), "cannot read /etc/hosts");
      } else {
        check(ub_ctx_set_fwd(ctx, unbound_address(o.nameserver).c_str()), "bad nameserver");
      }
      // unbound's own thread does the network work; its fd says when answers wait for ub_process.
      check(ub_ctx_async(ctx, 1), "cannot start the resolver");
      watch.assign(ub_fd(ctx));
    } catch (...) {
      ub_ctx_delete(ctx);
      throw;
    }
    thread = std::thread([this] {
      pthread_setname_np(pthread_self(), "pc-dns");
      processing = this;
      io.run();
    });
  }

  ~impl() {
    asio::post(io, [this] {
      for (auto& [id, p] : queries) {
        ub_cancel(ctx, p->ub_id);
        p->timer.cancel();
      }
      auto left = std::exchange(queries, {});
      for (auto& [id, p] : left) finish(*p, failed("the resolver stopped"));
      watch.cancel();
      guard.reset();
    });
    thread.join();
    watch.release();  // unbound's fd: ub_ctx_delete closes it
    ub_ctx_delete(ctx);
  }

  static answer failed(std::string why) {
    answer a;
    a.error = std::move(why);
    return a;
  }

  static void finish(pending& p, answer a) {
    try {
      p.done(std::move(a));
    } catch (...) {
      // a callback's failure is its own; the resolver goes on
    }
  }

  // (Resolver thread.)
  void start(std::string name, rr_type type, callback done) {
    if (!valid_query_name(name)) {
      answer a;
      a.what = answer::status::nxdomain;
      done(std::move(a));
      return;
    }
    const std::uint64_t id = next_id++;
    auto p = std::make_unique<pending>(pending{std::move(done), asio::steady_timer(io, timeout), 0, type, name});
    auto* raw = p.get();
    // unbound gets the id, not the pointer: an answer that comes after the timeout finds nothing.
    const int rc = ub_resolve_async(ctx, name.c_str(), static_cast<int>(type), class_in,
                                    reinterpret_cast<void*>(static_cast<std::uintptr_t>(id)), &impl::on_result_thunk,
                                    &raw->ub_id);
    if (rc != 0) {
      finish(*p, failed(std::string("cannot ask: ") + ub_strerror(rc)));
      return;
    }
    raw->timer.async_wait([this, id](const boost::system::error_code& ec) {
      if (ec) return;
      auto it = queries.find(id);
      if (it == queries.end()) return;
      auto p = std::move(it->second);
      queries.erase(it);
      ub_cancel(ctx, p->ub_id);
      answer a;
      a.what = answer::status::timeout;
      a.error = "no answer within " + std::to_string(timeout.count()) + " ms";
      finish(*p, std::move(a));
    });
    queries.emplace(id, std::move(p));
    if (!watching) arm();
  }

  // The fd is watched while lookups run (answers come only for those).
  void arm() {
    watching = true;
    watch.async_wait(asio::posix::descriptor_base::wait_read, [this](const boost::system::error_code& ec) {
      watching = false;
      if (ec) return;
      ub_process(ctx);  // calls on_result for every answer ready
      if (!queries.empty()) arm();
    });
  }

  // ub_process runs on the resolver thread only: the impl it processes for is that thread's.
  static thread_local impl* processing;
  static void on_result_thunk(void* arg, int err, ub_result* result) {
    processing->on_result(static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(arg)), err, result);
  }

  void on_result(std::uint64_t id, int err, ub_result* result) {
    auto it = queries.find(id);
    if (it == queries.end()) {
      if (result) ub_resolve_free(result);
      return;
    }
    auto p = std::move(it->second);
    queries.erase(it);
    p->timer.cancel();
    outcome o = err != 0 || result == nullptr ? outcome{failed(ub_strerror(err)), false} : answer_of(p->type, *result);
    if (result) ub_resolve_free(result);
    // RFC 2308 §5: a negative answer without an SOA is not kept (libunbound keeps none either).
    if (o.cacheable) memo.put(p->name, p->type, o.a);
    finish(*p, std::move(o.a));
  }

  const resolver_options options;
  const std::chrono::milliseconds timeout;
  answer_memo memo;
  ub_ctx* ctx;
  asio::io_context io;
  asio::posix::stream_descriptor watch;
  asio::executor_work_guard<asio::io_context::executor_type> guard;
  std::map<std::uint64_t, std::unique_ptr<pending>> queries;
  std::uint64_t next_id = 1;
  bool watching = false;
  std::thread thread;
};

thread_local resolver::impl* resolver::impl::processing = nullptr;

resolver::resolver(const resolver_options& options) : impl_(std::make_unique<impl>(options)) {}

resolver::~resolver() = default;

std::chrono::milliseconds resolver::timeout() const { return impl_->timeout; }

const resolver_options& resolver::options() const { return impl_->options; }

void resolver::lookup(std::string name, rr_type type, callback done) {
  if (auto known = impl_->memo.get(name, type)) {
    counted_from_memo(type, known->what);
    done(std::move(*known));
    return;
  }
  auto counted = [type, done = std::move(done)](answer a) {
    metrics::count(metrics::family::dns_lookups_total, {to_string(type), to_string(a.what)});
    done(std::move(a));
  };
  asio::post(impl_->io, [p = impl_.get(), name = std::move(name), type, done = std::move(counted)]() mutable {
    p->start(std::move(name), type, std::move(done));
  });
}

std::optional<answer> resolver::cached(const std::string& name, rr_type type) {
  if (!valid_query_name(name)) {
    answer a;
    a.what = answer::status::nxdomain;
    return a;
  }
  return impl_->memo.get(name, type);
}

void resolver::counted_from_memo(rr_type type, answer::status what) {
  metrics::count(metrics::family::dns_lookups_total, {to_string(type), to_string(what)});
  metrics::count(metrics::family::dns_memo_answers_total);
}

std::string reverse_name(const asio::ip::address& address) {
  std::string out;
  if (address.is_v4()) {
    const auto b = address.to_v4().to_bytes();
    for (auto it = b.rbegin(); it != b.rend(); ++it) out.append(std::to_string(*it)).append(".");
    return out + "in-addr.arpa";
  }
  static constexpr char hex[] = "0123456789abcdef";
  const auto b = address.to_v6().to_bytes();
  for (auto it = b.rbegin(); it != b.rend(); ++it) {
    out += hex[*it & 0xF];
    out += '.';
    out += hex[*it >> 4];
    out += '.';
  }
  return out + "ip6.arpa";
}

answer resolver::lookup_sync(std::string name, rr_type type, std::chrono::steady_clock::time_point deadline) {
  auto promise = std::make_shared<std::promise<answer>>();  // (shared: the answer may come after we stopped waiting)
  auto result = promise->get_future();
  lookup(std::move(name), type, [promise](answer a) { promise->set_value(std::move(a)); });
  if (deadline != std::chrono::steady_clock::time_point::max() &&
      result.wait_until(deadline) == std::future_status::timeout) {
    answer late;
    late.what = answer::status::timeout;
    late.error = "the time budget ran out (the check's or the hook's)";
    return late;
  }
  return result.get();
}

}  // namespace portcullis::dns
