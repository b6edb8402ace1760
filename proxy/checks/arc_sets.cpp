#include "checks/arc_sets.hpp"

#include <optional>

#include "checks/dkim_canon.hpp"
#include "smtp/message_header.hpp"
#include "smtp/text.hpp"

namespace portcullis::checks {

namespace {

enum class arc_field { results, message_signature, seal };
constexpr std::array<std::string_view, 3> arc_field_names = {"ARC-Authentication-Results", "ARC-Message-Signature",
                                                              "ARC-Seal"};

std::optional<arc_field> arc_field_of(std::string_view name) {
  for (std::size_t k = 0; k < arc_field_names.size(); ++k) {
    if (smtp::equals_nocase(name, arc_field_names[k])) return static_cast<arc_field>(k);
  }
  return std::nullopt;
}

}  // namespace

arc_chain find_arc_chain(const std::vector<std::string>& fields) {
  arc_chain chain;
  // Per instance, the field of each kind (none: not seen).
  constexpr std::size_t none = static_cast<std::size_t>(-1);
  std::vector<std::array<std::size_t, 3>> found;
  std::vector<arc_set> sets;
  const auto note = [&chain](std::string problem) {
    if (chain.problem.empty()) chain.problem = std::move(problem);
  };
  for (std::size_t f = 0; f < fields.size(); ++f) {
    const auto kind = arc_field_of(smtp::header_field_name(fields[f]));
    if (!kind) continue;
    chain.any = true;
    const auto name = arc_field_names[static_cast<std::size_t>(*kind)];
    const std::string value = smtp::header_field_value(fields[f]);
    unsigned instance = 0;
    dkim_signature_fields tags;
    if (*kind == arc_field::results) {
      const auto i = arc_results_instance(value);
      if (!i) {
        note(std::string(name) + " without a valid instance (i=)");
        continue;
      }
      instance = *i;
    } else {
      const auto how = *kind == arc_field::seal ? dkim_signature_kind::arc_seal : dkim_signature_kind::arc_message;
      if (auto problem = parse_dkim_signature(value, tags, how); !problem.empty()) note(std::string(name) + ": " + problem);
      if (tags.instance == 0) continue;
      instance = tags.instance;
    }
    if (found.size() < instance) {
      found.resize(instance, {none, none, none});
      sets.resize(instance);
    }
    auto& slot = found[instance - 1][static_cast<std::size_t>(*kind)];
    if (slot != none) note("more than one " + std::string(name) + " for instance " + std::to_string(instance));
    slot = f;
    auto& set = sets[instance - 1];
    if (*kind == arc_field::message_signature) set.message_tags = std::move(tags);
    if (*kind == arc_field::seal) set.seal_tags = std::move(tags);
  }
  chain.newest = static_cast<unsigned>(found.size());
  if (!sets.empty() && sets.back().seal_tags.chain_status == "fail") {
    chain.ended = true;
    note("ARC-Seal[" + std::to_string(sets.size()) + "] reported failure, the chain is terminated");
  }
  for (std::size_t i = 0; i < found.size() && chain.problem.empty(); ++i) {
    for (std::size_t k = 0; k < 3; ++k) {
      if (found[i][k] == none) note("incomplete ARC set for instance " + std::to_string(i + 1));
    }
    sets[i].results = found[i][0];
    sets[i].message_signature = found[i][1];
    sets[i].seal = found[i][2];
    const auto& cv = sets[i].seal_tags.chain_status;
    if (chain.problem.empty() && cv != (i == 0 ? "none" : "pass"))
      note("ARC-Seal[" + std::to_string(i + 1) + "] reported invalid status " + cv);
  }
  if (chain.problem.empty()) chain.sets = std::move(sets);
  return chain;
}

std::vector<arc_set_fields> arc_set_fields_of(const std::vector<std::string>& fields, const std::vector<arc_set>& sets) {
  std::vector<arc_set_fields> out;
  for (const auto& set : sets) out.push_back({fields[set.results], fields[set.message_signature], fields[set.seal]});
  return out;
}

std::string arc_seal_data(const std::vector<arc_set_fields>& sets) {
  std::string data;
  for (std::size_t i = 0; i < sets.size(); ++i) {
    data += relaxed_header(sets[i][0]);
    data += relaxed_header(sets[i][1]);
    data += i + 1 < sets.size() ? relaxed_header(sets[i][2])
                                : unsigned_signature_field(sets[i][2], dkim_canonicalization::relaxed);
  }
  return data;
}

}  // namespace portcullis::checks
