// Failed AUTH attempts per client address over a sliding window: what stops
// a password-guessing client that opens a new connection after each 421.
// Kept in the client_table every worker shares (so the limit holds across
// worker processes); a table of its own until the server shares its table.
#pragma once

#include <memory>
#include <optional>

#include "asio.hpp"
#include "session/client_table.hpp"

namespace portcullis {

class auth_failures {
 public:
  using clock = client_table::clock;

  auth_failures() : own_(std::make_unique<client_table>(1)), table_(own_.get()) {}

  // From now on, count in `shared` (the server's, made before the workers forked).
  void share(client_table& shared) {
    table_ = &shared;
    own_.reset();
  }

  void record(const asio::ip::address& client, clock::duration window, clock::time_point now = clock::now()) {
    table_->record_failure(client, window, now);
  }

  // A login about to be checked, counted as failed now (atomically with the
  // limit's check, across workers); nullopt when the client is over `limit`.
  std::optional<failure_reservation> reserve(const asio::ip::address& client, std::size_t limit,
                                             clock::duration window, clock::time_point now = clock::now()) {
    return table_->reserve_failure(client, limit, window, now);
  }
  // The reserved login did not fail after all.
  void cancel(const asio::ip::address& client, const failure_reservation& r) { table_->cancel_failure(client, r); }

  // Has this client failed `limit` times within `window`?
  bool over_limit(const asio::ip::address& client, std::size_t limit, clock::duration window,
                  clock::time_point now = clock::now()) {
    return table_->over_failure_limit(client, limit, window, now);
  }

 private:
  std::unique_ptr<client_table> own_;
  client_table* table_;
};

}  // namespace portcullis
