// pc.store's memory backend (python/portcullis/store.py): the process's
// shared_kv, which the daemon's workers share. Errors are Python's: a key or
// value too long is ValueError, a full table or a value that is not an
// integer (incr) RuntimeError / ValueError with what went wrong.
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>

#include "bindings/core.hpp"
#include "store/shared_kv.hpp"

namespace py = pybind11;

namespace portcullis::bindings {

namespace {

std::optional<shared_kv::clock::duration> ttl_of(std::optional<double> seconds) {
  if (!seconds) return std::nullopt;
  if (!std::isfinite(*seconds) || *seconds <= 0 || *seconds > 1e9) throw py::value_error("ttl: want seconds above 0");
  return std::chrono::duration_cast<shared_kv::clock::duration>(std::chrono::duration<double>(*seconds));
}

void raise_for(shared_kv::status s, std::string_view key) {
  switch (s) {
    case shared_kv::status::ok:
      return;
    case shared_kv::status::too_long:
      throw py::value_error("pc.store: an empty key, a key over " + std::to_string(shared_kv_max_key) +
                            " bytes or a value over " + std::to_string(shared_kv_max_value) + " bytes");
    case shared_kv::status::full:
      throw std::runtime_error("pc.store: the memory store is full ([store] memory_entries)");
    case shared_kv::status::not_integer:
      throw py::value_error("pc.store: " + std::string(key.substr(0, 100)) + " does not hold an integer");
    case shared_kv::status::overflow:
      throw py::value_error("pc.store: " + std::string(key.substr(0, 100)) + " would overflow 64 bits");
  }
}

}  // namespace

void define_store(py::module_& m) {
  m.def(
      "store_get",
      [](std::string_view key) -> std::optional<std::string> { return process_kv().get(key); },
      py::arg("key"), "The value at key (str), or None.");
  m.def(
      "store_set",
      [](std::string_view key, std::string_view value, std::optional<double> ttl) {
        raise_for(process_kv().set(key, value, ttl_of(ttl)), key);
      },
      py::arg("key"), py::arg("value"), py::arg("ttl") = py::none(), "Sets key to value, for ttl seconds (None: no limit).");
  m.def(
      "store_incr",
      [](std::string_view key, std::int64_t by, std::optional<double> ttl) {
        std::int64_t result = 0;
        raise_for(process_kv().incr(key, by, ttl_of(ttl), result), key);
        return result;
      },
      py::arg("key"), py::arg("by") = 1, py::arg("ttl") = py::none(),
      "Adds by to the integer at key (a new key starts at 0 and gets ttl) and returns it.");
  m.def(
      "store_delete", [](std::string_view key) { return process_kv().erase(key); }, py::arg("key"),
      "Deletes key; whether it was there.");
}

}  // namespace portcullis::bindings
