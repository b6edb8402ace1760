// MAIL FROM parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8,
// RFC 4954 AUTH): what the session checks and the upstream is told.
// Pure: parameters in, options or the reply to refuse them with out.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>
#include <vector>

#include "smtp/address.hpp"
#include "smtp/reply.hpp"

namespace portcullis::smtp {

struct mail_options {
  std::optional<std::uint64_t> size;
  bool body_8bit = false;
  bool smtputf8 = false;
  bool operator==(const mail_options&) const = default;
};

struct mail_param_rules {
  std::uint64_t max_message_size = 0;  // SIZE over it: 552 5.3.4
  bool esmtp = true;                   // EHLO was said: parameters are allowed at all
  bool auth_offered = false;           // AUTH= is part of an extension we offer
};

// The options, or the reply that refuses the parameters.
std::variant<mail_options, reply> parse_mail_params(const std::vector<esmtp_param>& params,
                                                    const mail_param_rules& rules);

// 555 for a MAIL or RCPT parameter we do not take, naming it (cut to 64 characters).
reply unsupported_parameter(std::string_view keyword);

}  // namespace portcullis::smtp
