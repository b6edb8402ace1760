// Our trace header (RFC 5321 §4.4, RFC 3848 protocol names, RFC 6531 §4.3).
#pragma once

#include <ctime>
#include <string>

#include "state/connection_state.hpp"
#include "state/transaction.hpp"

namespace portcullis {

// "Received: from helo ([ip]) by host (Portcullis) with ESMTP id ...; date\r\n"
std::string received_header(const connection_state& conn, const transaction& tx, const std::string& hostname,
                             std::time_t now);

}  // namespace portcullis
