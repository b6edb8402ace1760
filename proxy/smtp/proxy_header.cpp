#include "smtp/proxy_header.hpp"

#include <arpa/inet.h>

#include <array>
#include <cstring>

#include "smtp/text.hpp"

namespace portcullis::smtp {

namespace {

using namespace std::literals;

constexpr std::string_view v1_prefix = "PROXY ";
constexpr std::string_view v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};  // spec §2.2

// spec §2.2, the 14th byte: address family (high nibble) and transport (low).
constexpr unsigned char v2_unspec = 0x00;
constexpr unsigned char v2_tcp4 = 0x11;
constexpr unsigned char v2_udp4 = 0x12;
constexpr unsigned char v2_tcp6 = 0x21;
constexpr unsigned char v2_udp6 = 0x22;
constexpr unsigned char v2_unix_stream = 0x31;
constexpr unsigned char v2_unix_dgram = 0x32;
constexpr std::size_t v2_tcp4_address_length = 2 * 4 + 2 * 2;
constexpr std::size_t v2_tcp6_address_length = 2 * 16 + 2 * 2;
constexpr std::size_t v2_unix_address_length = 2 * 108;
constexpr unsigned char v2_tlv_crc32c = 0x03;  // spec §2.2.3
constexpr std::size_t v2_tlv_header_length = 3;  // type, 16-bit length

constexpr std::size_t ipv6_text_max = 45;  // INET6_ADDRSTRLEN without its NUL

proxy_parse fail(proxy_header& out, std::string_view why) {
  out = proxy_header{};
  out.problem = why;
  return proxy_parse::invalid;
}

bool is_prefix_of(std::string_view s, std::string_view whole) {
  return s.size() <= whole.size() && whole.substr(0, s.size()) == s;
}

unsigned byte_at(std::string_view s, std::size_t i) { return static_cast<unsigned char>(s[i]); }
unsigned be16_at(std::string_view s, std::size_t i) { return byte_at(s, i) << 8 | byte_at(s, i + 1); }

// spec §2.1: "exactly 4 integers in the range [0..255] inclusive written in
// decimal representation separated by exactly one dot", no leading zeros.
// `partial`: `s` may stop anywhere a longer address could go on.
bool check_ipv4_text(std::string_view s, bool partial) {
  int groups = 1, digits = 0, value = 0;
  for (const char c : s) {
    if (c == '.') {
      if (digits == 0 || groups == 4) return false;
      ++groups;
      digits = value = 0;
      continue;
    }
    if (!is_digit(c)) return false;
    if (digits == 1 && value == 0) return false;  // "01": octal or decimal?
    value = value * 10 + (c - '0');
    ++digits;
    if (value > 255) return false;
  }
  return partial || (groups == 4 && digits > 0);
}

bool could_be_ipv6_text(std::string_view s) {
  if (s.size() > ipv6_text_max) return false;
  for (const char c : s)
    if (!is_digit(c) && !(c >= 'a' && c <= 'f') && !(c >= 'A' && c <= 'F') && c != ':' && c != '.') return false;
  return true;
}

// IPv6 text to inet_ntop's canonical form; empty when not an IPv6 address.
std::string canonical_ipv6(std::string_view s) {
  if (!could_be_ipv6_text(s)) return {};
  char text[ipv6_text_max + 1];
  std::memcpy(text, s.data(), s.size());
  text[s.size()] = '\0';
  unsigned char bytes[16];
  if (inet_pton(AF_INET6, text, bytes) != 1) return {};
  char canonical[INET6_ADDRSTRLEN];
  if (!inet_ntop(AF_INET6, bytes, canonical, sizeof canonical)) return {};
  return canonical;
}

std::string ntop(int family, const void* bytes) {
  char text[INET6_ADDRSTRLEN];
  return inet_ntop(family, bytes, text, sizeof text) ? text : std::string();
}

// spec §2.1: a decimal integer in [0..65535], no leading zeros.
bool check_port_text(std::string_view s, bool partial, std::uint16_t& port) {
  if (s.empty()) return partial;
  if (s.size() > 1 && s[0] == '0') return false;
  unsigned value = 0;
  for (const char c : s) {
    if (!is_digit(c)) return false;
    value = value * 10 + unsigned(c - '0');
    if (value > 65535) return false;
  }
  port = static_cast<std::uint16_t>(value);
  return true;
}

// One v1 line without its CRLF. `complete`: the CRLF was seen (or at least
// its CR), so no field may be cut short.
proxy_parse check_v1_line(std::string_view line, bool complete, proxy_header& out) {
  if (line.size() < v1_prefix.size() || !line.starts_with(v1_prefix)) {
    if (!complete && is_prefix_of(line, v1_prefix)) return proxy_parse::need_more;
    return fail(out, "v1: does not start with \"PROXY \"");
  }
  std::string_view rest = line.substr(v1_prefix.size());
  const std::size_t space = rest.find(' ');
  const std::string_view protocol = rest.substr(0, space);
  if (space == std::string_view::npos && !complete) {
    for (const std::string_view p : {"TCP4"sv, "TCP6"sv, "UNKNOWN"sv})
      if (is_prefix_of(protocol, p)) return proxy_parse::need_more;
    return fail(out, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
  }

  if (protocol == "UNKNOWN") {
    // spec §2.1: "the receiver must ignore anything presented before the
    // CRLF" after UNKNOWN. Ignored, but it must still be text: a NUL or a
    // control byte there is not a proxy talking.
    const std::string_view tail = space == std::string_view::npos ? ""sv : rest.substr(space);
    for (const unsigned char c : tail)
      if (c < 0x20 || c > 0x7e) return fail(out, "v1: UNKNOWN followed by non-printable bytes");
    if (!complete) return proxy_parse::need_more;
    out.version = 1;
    out.local_or_unknown = true;
    return proxy_parse::done;
  }
  bool ipv6;
  if (protocol == "TCP4")
    ipv6 = false;
  else if (protocol == "TCP6")
    ipv6 = true;
  else
    return fail(out, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
  if (space == std::string_view::npos) return fail(out, "v1: no addresses after the protocol");

  // src SP dst SP sport SP dport, single spaces (spec §2.1).
  rest = rest.substr(space + 1);
  std::array<std::string_view, 4> fields;
  std::size_t count = 0;
  for (;;) {
    if (count == fields.size()) return fail(out, "v1: more than four fields after the protocol");
    const std::size_t next = rest.find(' ');
    fields[count++] = rest.substr(0, next);
    if (next == std::string_view::npos) break;
    rest = rest.substr(next + 1);
  }
  for (std::size_t i = 0; i < count; ++i) {
    const bool partial = !complete && i + 1 == count;
    if (fields[i].empty() && !partial) return fail(out, "v1: empty field (two spaces, or a space before CRLF)");
    if (i < 2) {
      if (!ipv6) {
        if (!check_ipv4_text(fields[i], partial)) return fail(out, "v1: bad IPv4 address for TCP4");
        if (!partial) (i == 0 ? out.source_ip : out.dest_ip) = fields[i];
      } else if (partial) {
        if (!could_be_ipv6_text(fields[i])) return fail(out, "v1: bad IPv6 address for TCP6");
      } else {
        std::string canonical = canonical_ipv6(fields[i]);
        if (canonical.empty()) return fail(out, "v1: bad IPv6 address for TCP6");
        (i == 0 ? out.source_ip : out.dest_ip) = std::move(canonical);
      }
    } else if (!check_port_text(fields[i], partial, i == 2 ? out.source_port : out.dest_port)) {
      return fail(out, "v1: bad port (0-65535, no leading zeros)");
    }
  }
  if (!complete) {
    out = proxy_header{};
    return proxy_parse::need_more;
  }
  if (count < fields.size()) return fail(out, "v1: missing address or port");
  out.version = 1;
  return proxy_parse::done;
}

proxy_parse parse_v1(std::string_view in, proxy_header& out) {
  // spec §2.1: "If the CRLF sequence is not found in the first 107
  // characters, the receiver should declare the line invalid", and "must not
  // tolerate a single CR or LF character to end the line".
  const std::string_view window = in.substr(0, proxy_v1_max_length);
  const std::size_t eol = window.find_first_of("\r\n");
  if (eol == std::string_view::npos) {
    if (in.size() >= proxy_v1_max_length) return fail(out, "v1: no CRLF within 107 bytes");
    return check_v1_line(window, false, out);
  }
  if (window[eol] == '\n') return fail(out, "v1: bare LF");
  if (eol + 2 > proxy_v1_max_length) return fail(out, "v1: no CRLF within 107 bytes");
  if (eol + 1 == in.size()) {
    // The line is whole but its LF has not come yet.
    const proxy_parse line = check_v1_line(window.substr(0, eol), true, out);
    if (line != proxy_parse::done) return line;
    out = proxy_header{};
    return proxy_parse::need_more;
  }
  if (in[eol + 1] != '\n') return fail(out, "v1: bare CR");
  const proxy_parse line = check_v1_line(window.substr(0, eol), true, out);
  if (line == proxy_parse::done) out.length = eol + 2;
  return line;
}

// CRC32C (Castagnoli), as in RFC 4960 Appendix B (spec §2.2.3).
constexpr std::array<std::uint32_t, 256> crc32c_table = [] {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
    table[i] = crc;
  }
  return table;
}();

std::uint32_t crc32c_update(std::uint32_t crc, std::string_view bytes) {
  for (const unsigned char b : bytes) crc = crc32c_table[(crc ^ b) & 0xff] ^ (crc >> 8);
  return crc;
}

// The header's CRC32C with the 4 checksum bytes at `value_at` taken as zeros.
std::uint32_t header_crc32c(std::string_view header, std::size_t value_at) {
  std::uint32_t crc = 0xffffffffu;
  crc = crc32c_update(crc, header.substr(0, value_at));
  crc = crc32c_update(crc, std::string_view("\0\0\0\0", 4));
  crc = crc32c_update(crc, header.substr(value_at + 4));
  return ~crc;
}

// The TLVs after the address block (spec §2.2): each type, 16-bit length,
// value, filling the header exactly. Skipped, but a CRC32C is checked.
bool check_v2_tlvs(std::string_view header, std::size_t start, std::string_view& problem) {
  bool crc_seen = false;
  std::size_t pos = start;
  while (pos < header.size()) {
    if (header.size() - pos < v2_tlv_header_length) {
      problem = "v2: truncated TLV";
      return false;
    }
    const unsigned type = byte_at(header, pos);
    const std::size_t value_length = be16_at(header, pos + 1);
    const std::size_t value_at = pos + v2_tlv_header_length;
    if (header.size() - value_at < value_length) {
      problem = "v2: TLV longer than the header";
      return false;
    }
    if (type == v2_tlv_crc32c) {
      if (value_length != 4 || crc_seen) {
        problem = "v2: malformed or repeated CRC32C TLV";
        return false;
      }
      crc_seen = true;
      const std::uint32_t sent = std::uint32_t(be16_at(header, value_at)) << 16 | be16_at(header, value_at + 2);
      if (header_crc32c(header, value_at) != sent) {
        problem = "v2: CRC32C mismatch";
        return false;
      }
    }
    pos = value_at + value_length;
  }
  return true;
}

proxy_parse parse_v2(std::string_view in, proxy_header& out) {
  if (in.size() < v2_signature.size())
    return is_prefix_of(in, v2_signature) ? proxy_parse::need_more : fail(out, "v2: bad signature");
  if (in.substr(0, v2_signature.size()) != v2_signature) return fail(out, "v2: bad signature");
  if (in.size() < 13) return proxy_parse::need_more;
  // spec §2.2: version 2 only; command LOCAL (0) or PROXY (1), "Receivers
  // must drop connections presenting unexpected values here".
  const unsigned version_command = byte_at(in, 12);
  if (version_command >> 4 != 2) return fail(out, "v2: version is not 2");
  const unsigned command = version_command & 0x0f;
  if (command > 1) return fail(out, "v2: command is neither LOCAL nor PROXY");
  const bool local = command == 0;
  if (in.size() < 14) return proxy_parse::need_more;

  const unsigned char family = static_cast<unsigned char>(in[13]);
  std::size_t address_length = 0;
  if (!local) {  // LOCAL: "discard the protocol block including the family which is ignored"
    switch (family) {
      case v2_unspec: address_length = 0; break;
      case v2_tcp4: address_length = v2_tcp4_address_length; break;
      case v2_tcp6: address_length = v2_tcp6_address_length; break;
      case v2_unix_stream: address_length = v2_unix_address_length; break;
      case v2_udp4:
      case v2_udp6:
      case v2_unix_dgram: return fail(out, "v2: datagram transport for an SMTP connection");
      default: return fail(out, "v2: unknown address family or transport");
    }
  }
  if (in.size() < proxy_v2_fixed_length) return proxy_parse::need_more;
  const std::size_t payload = be16_at(in, 14);
  if (payload > proxy_v2_max_payload) return fail(out, "v2: header longer than we accept");
  if (payload < address_length) return fail(out, "v2: length too short for the address family");
  const std::size_t total = proxy_v2_fixed_length + payload;
  if (in.size() < total) return proxy_parse::need_more;

  const std::string_view header = in.substr(0, total);
  out.version = 2;
  out.length = total;
  if (local || family == v2_unspec) {
    // Unspecified addresses: "The receiver should ignore address
    // information", so what follows is not parsed as TLVs either.
    out.local_or_unknown = true;
    return proxy_parse::done;
  }
  std::string_view problem;
  if (!check_v2_tlvs(header, proxy_v2_fixed_length + address_length, problem)) return fail(out, problem);

  const char* address = header.data() + proxy_v2_fixed_length;
  if (family == v2_tcp4) {
    out.source_ip = ntop(AF_INET, address);
    out.dest_ip = ntop(AF_INET, address + 4);
    out.source_port = static_cast<std::uint16_t>(be16_at(header, proxy_v2_fixed_length + 8));
    out.dest_port = static_cast<std::uint16_t>(be16_at(header, proxy_v2_fixed_length + 10));
  } else if (family == v2_tcp6) {
    out.source_ip = ntop(AF_INET6, address);
    out.dest_ip = ntop(AF_INET6, address + 16);
    out.source_port = static_cast<std::uint16_t>(be16_at(header, proxy_v2_fixed_length + 32));
    out.dest_port = static_cast<std::uint16_t>(be16_at(header, proxy_v2_fixed_length + 34));
  } else {
    out.local_or_unknown = true;  // AF_UNIX: no IP to speak of
  }
  return proxy_parse::done;
}

}  // namespace

proxy_parse parse_proxy_header(std::string_view buffered, proxy_header& out) {
  out = proxy_header{};
  if (buffered.empty()) return proxy_parse::need_more;
  // The first byte tells the versions apart: 'P' (v1) or CR (v2, spec §2.2).
  if (buffered[0] == v1_prefix[0]) return parse_v1(buffered, out);
  if (buffered[0] == v2_signature[0]) return parse_v2(buffered, out);
  return fail(out, "neither a PROXY v1 nor a v2 header");
}

}  // namespace portcullis::smtp
