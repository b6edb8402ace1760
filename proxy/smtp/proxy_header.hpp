// The HAProxy PROXY protocol header (v1 text, v2 binary) that a trusted load
// balancer sends before the first SMTP byte, carrying the real client address.
// Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt ("spec §x"
// below).
//
// Pure: bytes in, values out. The caller buffers what the peer sent and calls
// parse_proxy_header after every read until it returns done or invalid; the
// header's bytes are then consumed and never seen by the SMTP parser. Strict on
// purpose: any deviation is `invalid` and the connection is to be dropped
// (spec §2.1: "Any sequence which does not exactly match the protocol must be
// discarded and cause the receiver to abort the connection").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace portcullis::smtp {

// v1: the longest line a receiver must support, CRLF included (spec §2.1,
// "PROXY UNKNOWN" with two full IPv6 addresses and ports).
inline constexpr std::size_t proxy_v1_max_length = 107;
// v2: 12-byte signature, version/command, family/transport, 2-byte length.
inline constexpr std::size_t proxy_v2_fixed_length = 16;
// v2: the most address + TLV bytes we accept after the fixed part. The
// largest address block (AF_UNIX) is 216; the rest leaves room for the usual
// TLVs (ALPN, authority, SSL, unique id, cloud endpoint ids). Not from the
// spec: a bound so a peer cannot make us buffer up to 64 KiB.
inline constexpr std::size_t proxy_v2_max_payload = 1024;
inline constexpr std::size_t proxy_v2_max_length = proxy_v2_fixed_length + proxy_v2_max_payload;

enum class proxy_parse {
  need_more,  // the bytes so far are a proper prefix of a header we could accept: read more
  done,       // `out` holds the header; its first `out.length` bytes are to be consumed
  invalid,    // not a PROXY header, or a broken one: drop the connection
};

struct proxy_header {
  std::size_t length = 0;  // header bytes, CRLF / TLVs included; what follows is SMTP
  int version = 0;         // 1 or 2
  // v1 "UNKNOWN", v2 LOCAL, v2 PROXY with AF_UNSPEC or AF_UNIX: the header
  // carries no usable address, use the connection's own endpoints (spec §2.1,
  // §2.2). Addresses and ports are then empty / 0.
  bool local_or_unknown = false;
  // Numeric text: IPv4 dotted quad, IPv6 in inet_ntop's canonical form (so a
  // v1 "TCP6 0:0::1" and a v2 ::1 both read "::1"). An IPv4-mapped IPv6
  // address stays "::ffff:a.b.c.d": unmapping is the caller's choice.
  std::string source_ip, dest_ip;
  std::uint16_t source_port = 0, dest_port = 0;
  // Why the header is invalid, for the log (static text, never peer bytes);
  // empty unless parse_proxy_header returned invalid.
  std::string_view problem;

  bool operator==(const proxy_header&) const = default;
};

// `buffered`: every byte received on the connection so far (at least the
// first ones; more is fine, only the header is looked at). Resets `out` and
// fills it. Decides as early as the bytes allow: anything that starts neither
// with "PROXY " nor with the v2 signature is invalid as soon as one byte
// differs, so SMTP from a client that should have come through the proxy is
// refused at once. need_more never reaches past proxy_v1_max_length (v1) or
// 16 + the announced length (v2, at most proxy_v2_max_length).
//
// v1 (spec §2.1): "PROXY TCP4|TCP6 src dst sport dport\r\n" with single
//   spaces, addresses of the announced family (IPv4 without leading zeros),
//   ports 0-65535 without leading zeros; or "PROXY UNKNOWN" followed by CRLF
//   or by a space and printable ASCII up to the CRLF (ignored, §2.1). A bare
//   CR or LF anywhere is invalid.
// v2 (spec §2.2): signature, version 2, command LOCAL (everything after the
//   fixed part ignored, as the spec demands) or PROXY with TCP over IPv4
//   (0x11), TCP over IPv6 (0x21), UNSPEC (0x00) or UNIX stream (0x31). UDP and
//   UNIX datagram cannot carry SMTP and are refused (the spec lets a receiver
//   refuse the UNSPEC fallback it would imply). After the address block the
//   bytes must be well-formed TLVs (§2.2.x), skipped, except that a CRC32C
//   TLV is verified (§2.2.3: "the receiver MUST treat the TCP connection
//   providing the header as invalid" on a mismatch).
proxy_parse parse_proxy_header(std::string_view buffered, proxy_header& out);

}  // namespace portcullis::smtp
