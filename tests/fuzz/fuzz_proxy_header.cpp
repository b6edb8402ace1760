// libFuzzer target: the bytes a connection starts with into
// parse_proxy_header (PROXY protocol v1/v2).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "smtp/proxy_header.hpp"

using namespace portcullis::smtp;

namespace {

proxy_parse parse_copy(std::string_view bytes, proxy_header& out) {
  // A heap copy of exactly these bytes: a read past them is an ASan report.
  const std::vector<char> exact(bytes.begin(), bytes.end());
  return parse_proxy_header(std::string_view(exact.data(), exact.size()), out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  proxy_header h;
  h.source_ip = "stale";
  const proxy_parse result = parse_proxy_header(in, h);

  if (result == proxy_parse::done) {
    FUZZ_CHECK(h.version == 1 || h.version == 2);
    FUZZ_CHECK(h.length > 0 && h.length <= in.size());
    FUZZ_CHECK(h.length <= (h.version == 1 ? proxy_v1_max_length : proxy_v2_max_length));
    FUZZ_CHECK(h.problem.empty());
    if (h.local_or_unknown) {
      FUZZ_CHECK(h.source_ip.empty() && h.dest_ip.empty() && h.source_port == 0 && h.dest_port == 0);
    } else {
      FUZZ_CHECK(!h.source_ip.empty() && !h.dest_ip.empty());
    }
    if (h.version == 1) FUZZ_CHECK(in.substr(h.length - 2, 2) == "\r\n");

    // The header alone parses to the same header, and what follows it never matters.
    proxy_header again;
    FUZZ_CHECK(parse_copy(in.substr(0, h.length), again) == proxy_parse::done);
    FUZZ_CHECK(again == h);
    // Any shorter cut asks for more: the caller can never stop too early.
    for (std::size_t k = 0; k < h.length; ++k) {
      proxy_header cut;
      FUZZ_CHECK(parse_copy(in.substr(0, k), cut) == proxy_parse::need_more);
    }
    // The addresses are canonical: written back as a v1 line they read the same.
    if (!h.local_or_unknown) {
      const bool ipv6 = h.source_ip.find(':') != std::string::npos;
      FUZZ_CHECK(ipv6 == (h.dest_ip.find(':') != std::string::npos));
      const std::string line = std::string("PROXY ") + (ipv6 ? "TCP6 " : "TCP4 ") + h.source_ip + " " + h.dest_ip + " " +
                               std::to_string(h.source_port) + " " + std::to_string(h.dest_port) + "\r\n";
      proxy_header v1;
      FUZZ_CHECK(parse_copy(line, v1) == proxy_parse::done);
      FUZZ_CHECK(v1.source_ip == h.source_ip && v1.dest_ip == h.dest_ip);
      FUZZ_CHECK(v1.source_port == h.source_port && v1.dest_port == h.dest_port);
    }
  } else if (result == proxy_parse::need_more) {
    FUZZ_CHECK(h == proxy_header{});
    FUZZ_CHECK(in.size() < proxy_v2_max_length);
    if (!in.empty() && in[0] == 'P') FUZZ_CHECK(in.size() < proxy_v1_max_length);
  } else {
    FUZZ_CHECK(!h.problem.empty());
    FUZZ_CHECK(h.length == 0 && h.version == 0 && h.source_ip.empty() && h.dest_ip.empty());
    // Refusal is final: more bytes never make it acceptable.
    for (const std::string_view more : {std::string_view("\r\n"), std::string_view("\0\0\0\0", 4)}) {
      proxy_header longer;
      FUZZ_CHECK(parse_copy(std::string(in) + std::string(more), longer) == proxy_parse::invalid);
    }
  }
  return 0;
}
