// A policy job's state as the Python objects the engine compares and builds
// from (bindings/protocol.cpp): what `_core.Job.state()` returns, part by part,
// for the stage runner (bindings/stage_runner.cpp), which reads jobs in C++.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

#include "policy/policy_job.hpp"

namespace portcullis::bindings {

// {keyword: value or None}
pybind11::dict params_dict(const std::vector<smtp::esmtp_param>& params);
// (local part, domain)
pybind11::tuple address_parts(const smtp::address& a);
// The stage's name, interned.
const pybind11::str& stage_str(policy_stage s);
// (id, client_ip, client_port, helo, tls, tls_version, tls_cipher, auth_user), None for what is unset.
pybind11::tuple connection_tuple(const policy_job& j);
// None outside a transaction, else (tx id, sender, sender_params, recipients, smtputf8, body_8bit, spf, dkim, dmarc, arc).
pybind11::object envelope_tuple(const policy_job& j);
// The stored message as bytes, read into the bytes object itself (one copy; a
// spilled one from its file). Throws std::runtime_error on a read error.
pybind11::bytes message_bytes(const message_store& m);

}  // namespace portcullis::bindings
