// `_portcullis_core`'s DNS functions, behind `portcullis.dns` (pc.dns): the
// daemon's own resolver (the one the checks use, so one nameserver, one
// timeout, one cache), or in plain Python one made on first use.
//
// An async lookup's answer must reach an asyncio loop without the resolver
// thread ever taking the GIL (a thread holding the GIL may be waiting for the
// resolver to stop): answers wait in a queue and an eventfd tells the loops
// that watch it (portcullis/dns.py) to take them.
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <mutex>
#include <stdexcept>

#include "bindings/core.hpp"
#include "dns/resolver.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

namespace {

struct dns_state {
  std::mutex mutex;
  std::shared_ptr<dns::resolver> resolver;  // the daemon's, or one made on first use
  dns::resolver_options options;            // for the one made on first use
  struct ready_answer {
    std::uint64_t token;
    dns::rr_type type;
    dns::answer answer;
  };
  std::vector<ready_answer> ready;
  int wakeup_fd = -1;
  // An async lookup holds its resolver until answered (a reload that
  // replaces it must not answer the lookup "stopped"), and gives it back
  // here: the resolver's own thread must not drop the last reference (its
  // destructor joins that thread). Dropped by the next dns_take or lookup.
  std::vector<std::shared_ptr<dns::resolver>> released;
};

dns_state& state() {
  static auto* s = new dns_state;  // never freed: answers may arrive while the interpreter ends
  return *s;
}

// (Under the mutex.)
int wakeup_fd(dns_state& s) {
  if (s.wakeup_fd < 0) s.wakeup_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s.wakeup_fd < 0) throw std::runtime_error("eventfd failed");
  return s.wakeup_fd;
}

// (Not under the mutex: the last reference to a resolver ends its thread.)
void drop_released() {
  std::vector<std::shared_ptr<dns::resolver>> released;
  auto& s = state();
  {
    std::lock_guard lock(s.mutex);
    released.swap(s.released);
  }
}

std::shared_ptr<dns::resolver> current_resolver() {
  drop_released();
  auto& s = state();
  std::lock_guard lock(s.mutex);
  if (!s.resolver) s.resolver = std::make_shared<dns::resolver>(s.options);
  return s.resolver;
}

dns::rr_type type_named(const std::string& name) {
  auto t = dns::rr_type_named(name);
  if (!t) throw py::value_error("unsupported record type " + name + " (A, AAAA, MX, TXT or PTR)");
  return *t;
}

// (status, records, ttl, error): records are str, MX ones (preference, host).
py::tuple as_python(const dns::answer& a, dns::rr_type type) {
  py::list records;
  for (const auto& r : a.records) {
    // TXT is bytes on the wire: undecodable bytes survive as surrogates.
    py::str value = py::reinterpret_steal<py::str>(
        PyUnicode_DecodeUTF8(r.value.data(), static_cast<Py_ssize_t>(r.value.size()), "surrogateescape"));
    if (type == dns::rr_type::mx) {
      records.append(py::make_tuple(r.preference, value));
    } else {
      records.append(value);
    }
  }
  return py::make_tuple(std::string(dns::to_string(a.what)), records, a.ttl, a.error);
}

}  // namespace

void set_resolver(std::shared_ptr<dns::resolver> resolver) {
  std::shared_ptr<dns::resolver> old;
  {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    old = std::exchange(s.resolver, std::move(resolver));
  }
  // `old` ends here, outside the lock (its lookups still running are answered into the queue).
}

void set_resolver_options(const dns::resolver_options& options) {
  std::shared_ptr<dns::resolver> old;
  {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    s.options = options;
    // The same [dns] (every reload of a setup where only pc.dns asks): the
    // resolver stays, and its cache with it.
    if (s.resolver && s.resolver->options() == options) return;
    old = std::move(s.resolver);  // the next lookup makes one with these options
  }
  // `old` ends here, outside the lock, unless lookups still hold it: they are answered by it.
}

namespace {
thread_local double hook_deadline = 0;  // 0: none (time.monotonic()'s seconds)

std::chrono::steady_clock::time_point lookup_deadline() {
  if (hook_deadline <= 0) return std::chrono::steady_clock::time_point::max();
  // (steady_clock is CLOCK_MONOTONIC, as time.monotonic() is)
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(hook_deadline)));
}
}  // namespace

hook_deadline_scope::hook_deadline_scope(double deadline) : previous_(std::exchange(hook_deadline, deadline)) {}
hook_deadline_scope::~hook_deadline_scope() { hook_deadline = previous_; }

void define_dns(py::module_& m) {
  m.def(
      "dns_configure",
      [](const std::string& nameserver, double timeout) {
        dns::resolver_options o;
        o.nameserver = nameserver;
        o.timeout = std::chrono::milliseconds(static_cast<long long>(timeout * 1000));
        auto fresh = std::make_shared<dns::resolver>(o);  // throws on a bad nameserver
        py::gil_scoped_release unlocked;
        {
          auto& s = state();
          std::lock_guard lock(s.mutex);
          s.options = o;
        }
        set_resolver(std::move(fresh));
      },
      py::arg("nameserver") = "", py::arg("timeout") = 5.0,
      "Outside the daemon: the nameserver ('IP:PORT', '' for /etc/resolv.conf) and timeout (s) pc.dns uses.");

  m.def(
      "dns_lookup_sync",
      [](const std::string& name, const std::string& type_name) {
        const auto type = type_named(type_name);
        dns::answer a;
        {
          auto r = current_resolver();
          const auto deadline = lookup_deadline();
          py::gil_scoped_release unlocked;  // other threads run Python meanwhile
          a = r->lookup_sync(name, type, deadline);
        }
        return as_python(a, type);
      },
      py::arg("name"), py::arg("type"),
      "Blocks until the answer, or the deadline of the plain hook that asks: (status, records, ttl, error).");

  m.def(
      "call_with_deadline",
      [](double deadline, py::handle function, py::handle args) {
        hook_deadline_scope limit(deadline);
        const auto result = PyObject_Call(function.ptr(), args.ptr(), nullptr);
        if (result == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(result);
      },
      py::arg("deadline"), py::arg("function"), py::arg("args"),
      "function(*args) as a plain hook whose deadline is `deadline` (time.monotonic()'s seconds).");

  m.def(
      "dns_lookup",
      [](const std::string& name, const std::string& type_name, std::uint64_t token) {
        const auto type = type_named(type_name);
        {
          auto& s = state();
          std::lock_guard lock(s.mutex);
          wakeup_fd(s);
        }
        auto resolver = current_resolver();
        auto* asked = resolver.get();
        asked->lookup(name, type, [token, type, held = std::move(resolver)](dns::answer a) mutable {
          auto& s = state();
          std::lock_guard lock(s.mutex);
          s.ready.push_back({token, type, std::move(a)});
          s.released.push_back(std::move(held));
          const std::uint64_t one = 1;
          [[maybe_unused]] auto n = ::write(s.wakeup_fd, &one, sizeof one);
        });
      },
      py::arg("name"), py::arg("type"), py::arg("token"),
      "Starts a lookup; its answer comes from dns_take(), with the token, once dns_wakeup_fd() is readable.");

  m.def("dns_wakeup_fd", [] {
    auto& s = state();
    std::lock_guard lock(s.mutex);
    return wakeup_fd(s);
  });

  m.def(
      "dns_take",
      [] {
        std::vector<dns_state::ready_answer> taken;
        {
          auto& s = state();
          std::lock_guard lock(s.mutex);
          taken.swap(s.ready);
        }
        {
          py::gil_scoped_release unlocked;  // (a resolver released for good joins its thread)
          drop_released();
        }
        py::list out;
        for (const auto& r : taken) out.append(py::make_tuple(r.token, as_python(r.answer, r.type)));
        return out;
      },
      "The answers of dns_lookup() ready since the last call: [(token, (status, records, ttl, error)), ...].");
}

}  // namespace portcullis::bindings
