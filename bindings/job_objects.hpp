// `_core.JobObjects`: the policy API's objects a job is bound to (its
// session's Connection and the engine's _Session, its Transaction with its
// sender Address and recipients' AddressList, the recipient of on_rcpt, the
// lazy Message of on_data), made in C with no
// Python frame. The stage runner makes some at every transaction stage, and
// each Python helper call it made cost more than the hook it served; the
// engine's Python path (`_StageRun`) uses the same methods, so there is one
// way to make them.
//
// They are made as private constructors make them (no __init__: the daemon
// parsed and checked the addresses), slot by slot; tests/python/
// test_job_objects.py compares every slot with the public constructors', so
// a slot added in Python and forgotten here fails there.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <vector>

#include "bindings/py_ref.hpp"
#include "store/message_store.hpp"

namespace portcullis::bindings {

class job_objects {
 public:
  // The classes of `portcullis` (Connection, Transaction, Address,
  // AddressList, Message), the engine's _Session, and the check results'
  // (made only when the daemon sent one).
  job_objects(pybind11::object connection, pybind11::object session, pybind11::object transaction,
              pybind11::object address, pybind11::object address_list, pybind11::object message,
              pybind11::object spf_result, pybind11::object dkim_signature, pybind11::object dmarc_result,
              pybind11::object arc_result);

  // A Connection from the daemon's view of it (a connection_tuple).
  pybind11::object connection(pybind11::handle view) const;
  // The Connection brought up to the daemon's view (all but the id; its data kept).
  void update_connection(pybind11::handle conn, pybind11::handle view) const;
  // A _Session bound to `engine`, its Connection made from `view`.
  pybind11::object session(pybind11::handle engine, pybind11::handle view) const;

  // An Address from (local part, domain) and its parameters, taken as they are.
  pybind11::object address(pybind11::handle parts, pybind11::handle params) const;
  // An AddressList of (local part, domain) pairs, each with no parameters.
  pybind11::object address_list(pybind11::handle parts) const;
  // session.tx made, or brought up to date, from the daemon's envelope (an
  // envelope_tuple), which is the truth: rewrites it did not apply are gone.
  // Sets session.tx and session.before (tx's sender and recipients as made,
  // for rewrites) and returns tx.
  // `renew`: a new object even for the same transaction (the one the session
  // has stays with a hook abandoned at its deadline, whose writes must go
  // nowhere), with its data, dkim_sign and arc_seal.
  pybind11::object transaction_of(pybind11::handle session, pybind11::handle envelope, bool renew = false) const;
  // session.tx given the recipients of `parts` (an envelope's (local part,
  // domain) pairs) from `from` on, which the daemon took since tx was made
  // as it sent it: tx keeps its sender and first recipients (Addresses are
  // immutable), its AddressList is made again, and session.before follows.
  // What transaction_of would make of the longer envelope, for less.
  void add_recipients(pybind11::handle session, pybind11::handle tx, pybind11::handle parts, Py_ssize_t from) const;
  // Message._lazy: read from `loader()` when a hook first looks at it.
  pybind11::object lazy_message(pybind11::handle loader, bool smtputf8, pybind11::handle head_whole,
                                pybind11::handle head_loader) const;
  // The same, its loader reading `stored` (None when there is none).
  pybind11::object lazy_message(std::shared_ptr<const message_store> stored, bool smtputf8,
                                pybind11::handle head_whole) const;

 private:
  // A check result's class (a frozen dataclass with slots), made from the
  // daemon's tuple of its fields as its __init__ makes it, but with no
  // Python frame: each field's slot written as object.__setattr__ writes it
  // (the generated __init__ spends a Python call on each field, and this
  // runs for every job of a checked transaction). Any other class (a test's
  // stand-in), or a tuple of another length, is called: cls(*values).
  class result_class {
   public:
    explicit result_class(pybind11::object cls);
    pybind11::object make(pybind11::handle values) const;

   private:
    py_ref cls_;
    std::vector<Py_ssize_t> slots_;  // each field's offset in an instance, in __init__'s order; empty: call
  };

  py_ref connection_, session_, transaction_, address_, address_list_, message_;
  result_class spf_result_, dkim_signature_, dmarc_result_, arc_result_;
};

}  // namespace portcullis::bindings
