#include "checks/arc_sealer.hpp"

#include <ctime>
#include <exception>

#include "checks/arc_sets.hpp"
#include "checks/dkim_canon.hpp"
#include "checks/dkim_crypto.hpp"
#include "checks/message_fields.hpp"
#include "checks/off_thread.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

// The value of our own Authentication-Results (it starts with our
// authserv-id), as it is written: what our ARC-Authentication-Results says.
std::optional<std::string_view> our_results(const std::vector<std::string>& fields, std::string_view authserv_id) {
  for (const auto& f : fields) {
    if (!smtp::equals_nocase(smtp::header_field_name(f), "Authentication-Results")) continue;
    std::string_view value(f);
    value.remove_prefix(value.find(':') + 1);
    while (!value.empty() && smtp::is_wsp(value.front())) value.remove_prefix(1);
    if (value.starts_with(authserv_id) &&
        (value.size() == authserv_id.size() || value[authserv_id.size()] == ';' || smtp::is_wsp(value[authserv_id.size()])))
      return value;  // (with its final CRLF)
  }
  return std::nullopt;
}

}  // namespace

arc_sealer::arc_sealer(const arc_seal_config& settings, std::string authserv_id)
    : settings_(settings), authserv_id_(std::move(authserv_id)),
      key_(read_signing_key(settings.key_file, "arc_seal", true)) {}

arc_sealer::~arc_sealer() { pool_.join(); }

awaitable<dkim_signing> arc_sealer::seal(const std::string& prefix, const message_ptr& message,
                                         const std::optional<arc_result>& chain) {
  const auto work = [this, prefix, message, chain] {
    dkim_signing s;
    s.domain = settings_.domain;
    s.selectors = {settings_.selector};
    try {
      s.field = seal_now(prefix, *message, chain, s.why_not);
    } catch (const std::exception& e) {
      s.error = e.what();
    }
    return s;
  };
  auto result = co_await off_thread<dkim_signing>(pool_, "pc-seal", work);
  co_return result;
}

std::string arc_sealer::seal_now(std::string_view prefix, const message_store& message,
                                 const std::optional<arc_result>& checked, std::string& why_not,
                                 std::optional<std::int64_t> now) const {
  body_hasher body(dkim_canonicalization::relaxed, std::nullopt);
  const auto read = read_for_signatures(message, prefix, max_checked_header,
                                        [&body](const auto&) { return std::vector{&body}; });
  if (!read) {  // (its chain was not validated either: the same bound, the same reason)
    why_not = "its header section is larger than " + std::to_string(max_checked_header / 1024) + " KiB";
    return "";
  }
  const auto& fields = *read;
  const auto chain = find_arc_chain(fields);
  // §5.1.1: cv= is the chain's validation on arrival; a chain that ended in
  // failure, or that has no room, is not continued.
  if (!checked) {
    why_not = "the chain it came with was not validated ([checks] arc)";
    return "";
  }
  if (chain.ended) {
    why_not = "the chain it came with ended in failure";
    return "";
  }
  const unsigned instance = chain.newest + 1;
  if (instance > max_arc_instance) {
    why_not = "the chain it came with has " + std::to_string(max_arc_instance) + " sets already";
    return "";
  }
  const bool failed = checked->result == arc_result::kind::fail;
  if (!failed && instance != checked->instances + 1) {
    why_not = "the chain changed since it was validated";  // (a policy's edit)
    return "";
  }
  const auto results = our_results(fields, authserv_id_);
  if (!results) {
    why_not = "no Authentication-Results of ours to carry";
    return "";
  }

  const std::string i = "i=" + std::to_string(instance) + "; ";
  const std::string t = std::to_string(now.value_or(std::time(nullptr)));
  const std::string ids = "d=" + settings_.domain + "; s=" + settings_.selector + "; t=" + t;
  const auto sign = [this](const std::string& data) { return folded_signature(key_, data); };

  std::string aar = "ARC-Authentication-Results: " + i + std::string(*results);
  // The message signature (§4.1.2): DKIM's, over what our DKIM signature covers.
  const auto h = fields_to_sign(fields);
  std::string ams = "ARC-Message-Signature: " + i + "a=rsa-sha256; c=relaxed/relaxed; " + ids + ";\r\n\th=" + h_tag_value(h) +
                    ";\r\n\tbh=" + base64_encode(body.digest()) + ";\r\n\tb=";
  ams += sign(signed_fields(fields, h, dkim_canonicalization::relaxed) +
              unsigned_signature_field(ams, dkim_canonicalization::relaxed));

  // The seal (§4.1.3, §5.1.2): over every set, or over ours alone when the chain failed.
  std::string as = "ARC-Seal: " + i + "cv=" + std::string(to_string(checked->result)) + "; a=rsa-sha256; " + ids +
                   ";\r\n\tb=";
  auto sets = failed ? std::vector<arc_set_fields>{} : arc_set_fields_of(fields, chain.sets);
  sets.push_back({aar, ams, as});
  as += sign(arc_seal_data(sets));
  return as + ams + aar;
}

}  // namespace portcullis::checks
