#include "smtp/mail_options.hpp"

#include <algorithm>
#include <charconv>
#include <string>

#include "smtp/text.hpp"

namespace portcullis::smtp {

namespace {
// RFC 1870 §3: size-value = 1*20DIGIT.
constexpr std::size_t max_size_digits = 20;

reply bad(std::string text) { return {501, "5.5.4", std::move(text)}; }
}  // namespace

std::variant<mail_options, reply> parse_mail_params(const std::vector<esmtp_param>& params,
                                                    const mail_param_rules& rules) {
  mail_options options;
  std::vector<std::string> seen;
  for (const auto& p : params) {
    if (!rules.esmtp) return reply{555, "5.5.4", "ESMTP parameters need EHLO"};
    if (std::find(seen.begin(), seen.end(), p.keyword) != seen.end()) return bad("Duplicate parameter " + p.keyword);
    seen.push_back(p.keyword);
    if (p.keyword == "SIZE") {  // RFC 1870 §6
      // Twenty digits may overflow 64 bits, and are then simply too big.
      const bool digits = !p.value.empty() && p.value.size() <= max_size_digits &&
                          p.value.find_first_not_of("0123456789") == std::string::npos;
      if (!digits) return bad("Bad SIZE value");
      std::uint64_t size = 0;
      const auto [end, ec] = std::from_chars(p.value.data(), p.value.data() + p.value.size(), size);
      if (ec == std::errc::result_out_of_range || size > rules.max_message_size)
        return reply{552, "5.3.4", "Message size exceeds fixed maximum message size"};
      options.size = size;
    } else if (p.keyword == "BODY") {  // RFC 6152 §2
      if (equals_nocase(p.value, "8BITMIME"))
        options.body_8bit = true;
      else if (!equals_nocase(p.value, "7BIT"))
        return bad("BODY must be 7BIT or 8BITMIME");
    } else if (p.keyword == "SMTPUTF8") {  // RFC 6531 §3.4
      if (p.has_value) return bad("SMTPUTF8 takes no value");
      options.smtputf8 = true;
    } else if (p.keyword == "AUTH" && rules.auth_offered) {
      // RFC 4954 §5: accepted and not passed on: the upstream learns who
      // authenticated through XCLIENT.
      if (!p.has_value) return bad("AUTH needs a value");
    } else {
      return unsupported_parameter(p.keyword);
    }
  }
  return options;
}

reply unsupported_parameter(std::string_view keyword) {
  // The keyword is the client's, of any length: cut, so the line stays within 512 octets (RFC 5321 §4.5.3.1.5).
  constexpr std::size_t shown = 64;
  return reply{555, "5.5.4",
               "Unsupported parameter " + std::string(keyword.substr(0, shown)) + (keyword.size() > shown ? "..." : "")};
}

}  // namespace portcullis::smtp
