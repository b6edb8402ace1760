#include "checks/idna_domain.hpp"

#include <idn2.h>

#include <algorithm>
#include <cstdlib>

namespace portcullis::checks {

std::optional<std::string> a_label_domain(std::string_view domain) {
  if (std::all_of(domain.begin(), domain.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(domain);
  if (domain.find('\0') != std::string_view::npos) return std::nullopt;
  const std::string input(domain);
  char* output = nullptr;
  const int rc = idn2_to_ascii_8z(input.c_str(), &output, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
  if (rc != IDN2_OK || output == nullptr) {
    idn2_free(output);
    return std::nullopt;
  }
  std::string ascii(output);
  idn2_free(output);
  return ascii;
}

}  // namespace portcullis::checks
