// Table tests for parse_proxy_header (HAProxy PROXY protocol v1 and v2): one
// row per header; every valid header is also fed cut at every byte.
#include "smtp/proxy_header.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::smtp {

// Outside the anonymous namespace, so that gtest finds it by ADL.
std::ostream& operator<<(std::ostream& os, proxy_parse p) {
  switch (p) {
    case proxy_parse::need_more: return os << "need_more";
    case proxy_parse::done: return os << "done";
    case proxy_parse::invalid: return os << "invalid";
  }
  return os << "?";
}

namespace {

using namespace std::literals;

// Printable for failure messages: the headers are full of CR, LF and NUL.
std::string show(std::string_view s) {
  std::string out;
  for (const unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// ---- v2 builders -----------------------------------------------------------

const std::string signature("\r\n\r\n\0\r\nQUIT\n", 12);

std::string be16(std::size_t n) { return {static_cast<char>(n >> 8 & 0xff), static_cast<char>(n & 0xff)}; }

std::string v2(unsigned char version_command, unsigned char family, const std::string& body) {
  return signature + static_cast<char>(version_command) + static_cast<char>(family) + be16(body.size()) + body;
}

std::string tlv(unsigned char type, const std::string& value) {
  return static_cast<char>(type) + be16(value.size()) + value;
}

// 192.0.2.1:56324 -> 198.51.100.2:25
const std::string tcp4_block = "\xc0\x00\x02\x01"s + "\xc6\x33\x64\x02"s + be16(56324) + be16(25);
// [2001:db8::1]:1 -> [2001:db8::2]:65535
const std::string tcp6_block = "\x20\x01\x0d\xb8"s + std::string(11, '\0') + "\x01"s + "\x20\x01\x0d\xb8"s +
                               std::string(11, '\0') + "\x02"s + be16(1) + be16(65535);

// A bitwise CRC32C (RFC 4960 Appendix B), independent of the parser's table.
std::uint32_t crc32c(std::string_view bytes) {
  std::uint32_t crc = 0xffffffffu;
  for (const unsigned char b : bytes) {
    crc ^= b;
    for (int i = 0; i < 8; ++i) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// A v2 PROXY header whose last TLV is a CRC32C over the whole header.
std::string with_crc(unsigned char family, const std::string& body, std::uint32_t tweak = 0) {
  std::string h = v2(0x21, family, body + tlv(0x03, std::string(4, '\0')));
  const std::uint32_t crc = crc32c(h) ^ tweak;
  for (int i = 0; i < 4; ++i) h[h.size() - 4 + i] = static_cast<char>(crc >> (24 - 8 * i) & 0xff);
  return h;
}

TEST(ProxyHeader, Crc32cTestVector) { EXPECT_EQ(crc32c("123456789"), 0xE3069283u); }

// ---- valid headers -----------------------------------------------------------

struct valid_case {
  std::string name;
  std::string header;
  int version;
  bool local_or_unknown;
  std::string source_ip, dest_ip;
  std::uint16_t source_port, dest_port;
};

const std::string unknown_longest =  // spec §2.1 worst case: exactly 107 bytes
    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
const std::string tcp6_longest =
    "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";

std::vector<valid_case> valid_cases() {
  const std::string ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  return {
      // v1 (spec §2.1)
      {"v1 tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", 1, false, "192.0.2.1", "198.51.100.2", 56324, 25},
      {"v1 tcp4 extremes", "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", 1, false, "0.0.0.0", "255.255.255.255", 0,
       65535},
      {"v1 tcp4 zero octets", "PROXY TCP4 10.0.0.0 10.0.100.0 10 100\r\n", 1, false, "10.0.0.0", "10.0.100.0", 10, 100},
      {"v1 tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", 1, false, "2001:db8::1", "2001:db8::2", 1, 65535},
      {"v1 tcp6 made canonical", "PROXY TCP6 2001:DB8:0:0:0:0:0:1 0000::0001 0 0\r\n", 1, false, "2001:db8::1", "::1", 0,
       0},
      {"v1 tcp6 v4-mapped", "PROXY TCP6 ::ffff:192.0.2.1 :: 587 465\r\n", 1, false, "::ffff:192.0.2.1", "::", 587, 465},
      {"v1 tcp6 longest", tcp6_longest, 1, false, ff, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535, 65535},
      {"v1 unknown", "PROXY UNKNOWN\r\n", 1, true, "", "", 0, 0},
      {"v1 unknown with addresses", "PROXY UNKNOWN 192.0.2.1 198.51.100.2 56324 25\r\n", 1, true, "", "", 0, 0},
      {"v1 unknown anything printable", "PROXY UNKNOWN  what  ever ~!\r\n", 1, true, "", "", 0, 0},
      {"v1 unknown 107 bytes", unknown_longest, 1, true, "", "", 0, 0},
      // v2 (spec §2.2)
      {"v2 tcp4", v2(0x21, 0x11, tcp4_block), 2, false, "192.0.2.1", "198.51.100.2", 56324, 25},
      {"v2 tcp6", v2(0x21, 0x21, tcp6_block), 2, false, "2001:db8::1", "2001:db8::2", 1, 65535},
      {"v2 tcp4 TLVs skipped",
       v2(0x21, 0x11, tcp4_block + tlv(0x01, "smtp") + tlv(0x04, "") + tlv(0x02, "mx.example") + tlv(0xe0, "x")), 2,
       false, "192.0.2.1", "198.51.100.2", 56324, 25},
      {"v2 tcp4 SSL TLV with sub-TLVs", v2(0x21, 0x11, tcp4_block + tlv(0x20, "\x01\0\0\0\0"s + tlv(0x21, "TLSv1.3"))),
       2, false, "192.0.2.1", "198.51.100.2", 56324, 25},
      {"v2 tcp4 CRC32C", with_crc(0x11, tcp4_block), 2, false, "192.0.2.1", "198.51.100.2", 56324, 25},
      {"v2 tcp6 CRC32C among TLVs", with_crc(0x21, tcp6_block + tlv(0x01, "smtp")), 2, false, "2001:db8::1",
       "2001:db8::2", 1, 65535},
      {"v2 tcp4 largest", v2(0x21, 0x11, tcp4_block + tlv(0x04, std::string(proxy_v2_max_payload - 12 - 3, 'x'))), 2,
       false, "192.0.2.1", "198.51.100.2", 56324, 25},
      {"v2 local", v2(0x20, 0x00, ""), 2, true, "", "", 0, 0},
      {"v2 local with addresses ignored", v2(0x20, 0x11, tcp4_block), 2, true, "", "", 0, 0},
      // "discard the protocol block including the family which is ignored"
      {"v2 local ignores family and body", v2(0x20, 0xff, "junk\0\xff"s), 2, true, "", "", 0, 0},
      {"v2 proxy unspec", v2(0x21, 0x00, ""), 2, true, "", "", 0, 0},
      {"v2 proxy unspec with bytes", v2(0x21, 0x00, "\x01\x02\x03"s), 2, true, "", "", 0, 0},
      {"v2 proxy unix stream", v2(0x21, 0x31, std::string(216, '\0')), 2, true, "", "", 0, 0},
      {"v2 proxy unix stream TLV", v2(0x21, 0x31, std::string(216, 'a') + tlv(0x04, "pad")), 2, true, "", "", 0, 0},
  };
}

TEST(ProxyHeader, ValidHeaders) {
  for (const auto& c : valid_cases()) {
    SCOPED_TRACE(c.name + ": " + show(c.header));
    for (const std::string_view after : {""sv, "EHLO client.example\r\n"sv, "\r\n\r\n\0"sv}) {
      const std::string input = c.header + std::string(after);
      proxy_header h;
      ASSERT_EQ(parse_proxy_header(input, h), proxy_parse::done);
      EXPECT_EQ(h.length, c.header.size());
      EXPECT_EQ(h.version, c.version);
      EXPECT_EQ(h.local_or_unknown, c.local_or_unknown);
      EXPECT_EQ(h.source_ip, c.source_ip);
      EXPECT_EQ(h.dest_ip, c.dest_ip);
      EXPECT_EQ(h.source_port, c.source_port);
      EXPECT_EQ(h.dest_port, c.dest_port);
      EXPECT_TRUE(h.problem.empty());
    }
  }
}

// Cut anywhere before its end, a valid header asks for more and nothing else.
TEST(ProxyHeader, EveryPrefixOfAValidHeaderNeedsMore) {
  for (const auto& c : valid_cases()) {
    for (std::size_t k = 0; k < c.header.size(); ++k) {
      const std::string prefix = c.header.substr(0, k);
      proxy_header h;
      h.version = 9;  // stale contents must be reset
      ASSERT_EQ(parse_proxy_header(prefix, h), proxy_parse::need_more) << c.name << " cut at " << k << ": " << show(prefix);
      EXPECT_EQ(h, proxy_header{});
    }
  }
}

// ---- invalid headers --------------------------------------------------------

struct invalid_case {
  std::string name;
  std::string input;
};

std::string v2_with_byte(std::size_t at, char value) {
  std::string h = v2(0x21, 0x11, tcp4_block);
  h[at] = value;
  return h;
}

std::vector<invalid_case> invalid_cases() {
  std::vector<invalid_case> cases = {
      // Not a PROXY header at all: SMTP or HTTP from a client that skipped the proxy.
      {"smtp", "EHLO client.example\r\n"},
      {"http", "GET / HTTP/1.1\r\n"},
      {"lower case", "proxy TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"PROXY alone", "PROXY\r\n"},
      {"PROXY and space", "PROXY \r\n"},
      {"tab after PROXY", "PROXY\tTCP4 192.0.2.1 198.51.100.2 56324 25\r\n"},
      // Spacing (spec §2.1: "exactly one space")
      {"two spaces after PROXY", "PROXY  TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"two spaces after protocol", "PROXY TCP4  192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"two spaces between ports", "PROXY TCP4 192.0.2.1 198.51.100.2 56324  25\r\n"},
      {"space before CRLF", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 \r\n"},
      {"tab separator", "PROXY TCP4 192.0.2.1\t198.51.100.2 56324 25\r\n"},
      // Protocol
      {"TCP5", "PROXY TCP5 192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"UDP4", "PROXY UDP4 192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"tcp4 lower case", "PROXY tcp4 192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"TCP4 without fields", "PROXY TCP4\r\n"},
      {"UNKNOWNX", "PROXY UNKNOWNX\r\n"},
      {"UNKNOWN then control byte", "PROXY UNKNOWN \x01\r\n"},
      {"UNKNOWN then NUL", "PROXY UNKNOWN \0\r\n"s},
      {"UNKNOWN then 8-bit", "PROXY UNKNOWN \xff\r\n"},
      // Fields
      {"missing dport", "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"},
      {"missing ports", "PROXY TCP4 192.0.2.1 198.51.100.2\r\n"},
      {"extra field", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 x\r\n"},
      // Addresses of the wrong family or badly written
      {"ipv6 in TCP4", "PROXY TCP4 2001:db8::1 198.51.100.2 56324 25\r\n"},
      {"ipv4 in TCP6", "PROXY TCP6 192.0.2.1 2001:db8::2 56324 25\r\n"},
      {"ipv4 dst in TCP6", "PROXY TCP6 2001:db8::1 198.51.100.2 56324 25\r\n"},
      {"ipv4 leading zero", "PROXY TCP4 192.0.2.01 198.51.100.2 56324 25\r\n"},
      {"ipv4 octal-looking", "PROXY TCP4 010.0.0.1 198.51.100.2 56324 25\r\n"},
      {"ipv4 octet too big", "PROXY TCP4 256.0.0.1 198.51.100.2 56324 25\r\n"},
      {"ipv4 three octets", "PROXY TCP4 192.0.2 198.51.100.2 56324 25\r\n"},
      {"ipv4 five octets", "PROXY TCP4 192.0.2.1.5 198.51.100.2 56324 25\r\n"},
      {"ipv4 empty octet", "PROXY TCP4 192..2.1 198.51.100.2 56324 25\r\n"},
      {"ipv4 trailing dot", "PROXY TCP4 192.0.2.1. 198.51.100.2 56324 25\r\n"},
      {"ipv4 hostname", "PROXY TCP4 localhost 198.51.100.2 56324 25\r\n"},
      {"ipv6 two double colons", "PROXY TCP6 2001::db8::1 2001:db8::2 1 2\r\n"},
      {"ipv6 bracketed", "PROXY TCP6 [2001:db8::1] 2001:db8::2 1 2\r\n"},
      {"ipv6 zone", "PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n"},
      {"ipv6 too many groups", "PROXY TCP6 1:2:3:4:5:6:7:8:9 2001:db8::2 1 2\r\n"},
      {"ipv6 group too long", "PROXY TCP6 12345::1 2001:db8::2 1 2\r\n"},
      // Ports
      {"port leading zero", "PROXY TCP4 192.0.2.1 198.51.100.2 056324 25\r\n"},
      {"port 00", "PROXY TCP4 192.0.2.1 198.51.100.2 00 25\r\n"},
      {"port 65536", "PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n"},
      {"port 99999", "PROXY TCP4 192.0.2.1 198.51.100.2 99999 25\r\n"},
      {"port sign", "PROXY TCP4 192.0.2.1 198.51.100.2 +1 25\r\n"},
      {"port negative", "PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n"},
      {"port hex", "PROXY TCP4 192.0.2.1 198.51.100.2 0x19 25\r\n"},
      // Line endings (spec §2.1: no single CR or LF)
      {"bare LF", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\n"},
      {"bare CR", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\rEHLO"},
      {"CR CR LF", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\r\n"},
      {"LF inside", "PROXY TCP4\n192.0.2.1 198.51.100.2 56324 25\r\n"},
      {"NUL inside", "PROXY TCP4 192.0.2.1\0 198.51.100.2 56324 25\r\n"s},
      // Length (spec §2.1: CRLF within the first 107 bytes)
      {"108 bytes", "PROXY UNKNOWN " + std::string(92, 'x') + "\r\n"},
      {"107 bytes without CRLF", "PROXY UNKNOWN " + std::string(93, 'x')},
      // v2 (spec §2.2)
      {"v2 version 1", v2(0x11, 0x11, tcp4_block)},
      {"v2 version 3", v2(0x31, 0x11, tcp4_block)},
      {"v2 version 0", v2(0x01, 0x11, tcp4_block)},
      {"v2 command 2", v2(0x22, 0x11, tcp4_block)},
      {"v2 command 15", v2(0x2f, 0x11, tcp4_block)},
      {"v2 UDP4", v2(0x21, 0x12, tcp4_block)},
      {"v2 UDP6", v2(0x21, 0x22, tcp6_block)},
      {"v2 UNIX dgram", v2(0x21, 0x32, std::string(216, '\0'))},
      {"v2 INET unspecified transport", v2(0x21, 0x10, tcp4_block)},
      {"v2 UNSPEC family stream", v2(0x21, 0x01, "")},
      {"v2 transport 3", v2(0x21, 0x13, tcp4_block)},
      {"v2 family 4", v2(0x21, 0x41, tcp4_block)},
      {"v2 tcp4 block short", v2(0x21, 0x11, tcp4_block.substr(0, 11))},
      {"v2 tcp4 no block", v2(0x21, 0x11, "")},
      {"v2 tcp6 block short", v2(0x21, 0x21, tcp6_block.substr(0, 35))},
      {"v2 tcp6 with a tcp4 block", v2(0x21, 0x21, tcp4_block)},
      {"v2 unix block short", v2(0x21, 0x31, std::string(215, '\0'))},
      {"v2 too long", v2(0x21, 0x11, tcp4_block + tlv(0x04, std::string(proxy_v2_max_payload - 12 - 2, 'x')))},
      {"v2 too long, fixed part only", signature + "\x21\x11"s + be16(proxy_v2_max_payload + 1)},
      {"v2 length 65535", signature + "\x21\x11\xff\xff"s},
      {"v2 truncated TLV header", v2(0x21, 0x11, tcp4_block + "\x04\x00"s)},
      {"v2 TLV one byte", v2(0x21, 0x11, tcp4_block + "\x04"s)},
      {"v2 TLV value past the end", v2(0x21, 0x11, tcp4_block + "\x01\x00\x05smtp"s)},
      {"v2 TLV after a good one", v2(0x21, 0x11, tcp4_block + tlv(0x01, "smtp") + "\x02\x01"s)},
      {"v2 CRC32C wrong", with_crc(0x11, tcp4_block, 1)},
      {"v2 CRC32C wrong bit 31", with_crc(0x21, tcp6_block, 0x80000000u)},
      {"v2 CRC32C 3 bytes", v2(0x21, 0x11, tcp4_block + tlv(0x03, "abc"))},
      {"v2 CRC32C twice", v2(0x21, 0x11, tcp4_block + tlv(0x03, "abcd") + tlv(0x03, "abcd"))},
  };
  // Any one byte of the signature wrong.
  for (std::size_t i = 0; i < 12; ++i)
    cases.push_back({"v2 signature byte " + std::to_string(i), v2_with_byte(i, static_cast<char>(signature[i] ^ 0x20))});
  // A header that is almost right after a CRC32C is added: the CRC covers the addresses.
  std::string tampered = with_crc(0x11, tcp4_block);
  tampered[16] ^= 1;
  cases.push_back({"v2 CRC32C over a changed address", tampered});
  return cases;
}

TEST(ProxyHeader, InvalidHeaders) {
  for (const auto& c : invalid_cases()) {
    proxy_header h;
    h.source_ip = "stale";
    EXPECT_EQ(parse_proxy_header(c.input, h), proxy_parse::invalid) << c.name << ": " << show(c.input);
    EXPECT_FALSE(h.problem.empty()) << c.name;
    EXPECT_EQ(h.length, 0u) << c.name;
    EXPECT_TRUE(h.source_ip.empty()) << c.name;
  }
}

// Refusal is monotonic: once some prefix is invalid, every longer one is;
// before that every prefix asks for more.
TEST(ProxyHeader, InvalidPrefixesStayInvalid) {
  for (const auto& c : invalid_cases()) {
    bool seen_invalid = false;
    for (std::size_t k = 0; k <= c.input.size(); ++k) {
      proxy_header h;
      const proxy_parse r = parse_proxy_header(c.input.substr(0, k), h);
      if (seen_invalid)
        ASSERT_EQ(r, proxy_parse::invalid) << c.name << " cut at " << k;
      else
        ASSERT_NE(r, proxy_parse::done) << c.name << " cut at " << k;
      seen_invalid = r == proxy_parse::invalid;
    }
  }
}

// ---- deciding early -----------------------------------------------------------

struct early_case {
  std::string input;
  proxy_parse want;
};

TEST(ProxyHeader, DecidesAsSoonAsTheBytesAllow) {
  const std::vector<early_case> cases = {
      {"", proxy_parse::need_more},
      {"E", proxy_parse::invalid},  // SMTP: refused on the first byte
      {"\x16", proxy_parse::invalid},  // a TLS ClientHello
      {"P", proxy_parse::need_more},
      {"PROX", proxy_parse::need_more},
      {"PROXX", proxy_parse::invalid},
      {"PROXY", proxy_parse::need_more},
      {"PROXY ", proxy_parse::need_more},
      {"PROXY T", proxy_parse::need_more},
      {"PROXY TCP", proxy_parse::need_more},
      {"PROXY TCP7", proxy_parse::invalid},
      {"PROXY UNK", proxy_parse::need_more},
      {"PROXY UNKNOWN", proxy_parse::need_more},
      {"PROXY UNKNOWN garbage here", proxy_parse::need_more},
      {"PROXY UNKNOWN\r", proxy_parse::need_more},
      {"PROXY UNKNOWN\n", proxy_parse::invalid},
      {"PROXY TCP4 ", proxy_parse::need_more},
      {"PROXY TCP4 1", proxy_parse::need_more},
      {"PROXY TCP4 1.", proxy_parse::need_more},
      {"PROXY TCP4 1.2.3.4", proxy_parse::need_more},
      {"PROXY TCP4 1.2.3.400", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3.4.", proxy_parse::invalid},
      {"PROXY TCP4 01", proxy_parse::invalid},
      {"PROXY TCP4 ::1", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3 ", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 ", proxy_parse::need_more},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 0", proxy_parse::need_more},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 00", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 65536", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", proxy_parse::need_more},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", proxy_parse::need_more},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r", proxy_parse::invalid},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r", proxy_parse::invalid},
      {"PROXY TCP6 2001:db8:", proxy_parse::need_more},
      {"PROXY TCP6 2001:db8:g", proxy_parse::invalid},
      {"PROXY TCP6 1.2.3.4 ", proxy_parse::invalid},
      {"\r", proxy_parse::need_more},
      {"\r\n\r\n", proxy_parse::need_more},
      {"\r\n\r\n\0\r\nQUIT"s, proxy_parse::need_more},
      {"\r\n\r\n\0\r\nQUIT\n"s, proxy_parse::need_more},
      {"\r\nQUIT\r\n", proxy_parse::invalid},
      {"\r\n\r\n\0\r\nQUIT\n\x21"s, proxy_parse::need_more},
      {"\r\n\r\n\0\r\nQUIT\n\x11"s, proxy_parse::invalid},  // version 1 in a v2 header
      {"\r\n\r\n\0\r\nQUIT\n\x21\x11"s, proxy_parse::need_more},
      {"\r\n\r\n\0\r\nQUIT\n\x21\x12"s, proxy_parse::invalid},  // UDP: refused before the length
      {"\r\n\r\n\0\r\nQUIT\n\x20\x12"s, proxy_parse::need_more},  // LOCAL: family ignored
      {"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0b"s, proxy_parse::invalid},  // 11 < 12
      {"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"s, proxy_parse::need_more},
      {"\r\n\r\n\0\r\nQUIT\n\x21\x11\x04\x01"s, proxy_parse::invalid},  // 1025 > the cap
      {"\r\n\r\n\0\r\nQUIT\n\x21\x11\x04\x00"s, proxy_parse::need_more},
  };
  for (const auto& c : cases) {
    proxy_header h;
    EXPECT_EQ(parse_proxy_header(c.input, h), c.want) << show(c.input);
  }
}

TEST(ProxyHeader, NeedMoreNeverPastTheCaps) {
  // v1: 106 bytes of a plausible line ask for more; the 107th must be the LF.
  const std::string line = "PROXY UNKNOWN " + std::string(91, 'x') + "\r";
  ASSERT_EQ(line.size(), proxy_v1_max_length - 1);
  proxy_header h;
  EXPECT_EQ(parse_proxy_header(line, h), proxy_parse::need_more);
  EXPECT_EQ(parse_proxy_header(line + "\n", h), proxy_parse::done);
  EXPECT_EQ(h.length, proxy_v1_max_length);
  const std::string no_cr = "PROXY UNKNOWN " + std::string(92, 'x');
  ASSERT_EQ(no_cr.size(), proxy_v1_max_length - 1);
  EXPECT_EQ(parse_proxy_header(no_cr, h), proxy_parse::need_more);
  EXPECT_EQ(parse_proxy_header(no_cr + "x", h), proxy_parse::invalid);
  EXPECT_EQ(parse_proxy_header(no_cr + "\r", h), proxy_parse::invalid);  // CRLF would end at 108

  // v2: the whole announced length, and not a byte more, is waited for.
  const std::string full = v2(0x21, 0x11, tcp4_block + tlv(0x04, std::string(proxy_v2_max_payload - 15, 'x')));
  ASSERT_EQ(full.size(), proxy_v2_max_length);
  EXPECT_EQ(parse_proxy_header(full.substr(0, full.size() - 1), h), proxy_parse::need_more);
  EXPECT_EQ(parse_proxy_header(full, h), proxy_parse::done);
  EXPECT_EQ(h.length, proxy_v2_max_length);
}

TEST(ProxyHeader, ProblemIsEmptyUnlessInvalid) {
  proxy_header h;
  EXPECT_EQ(parse_proxy_header("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", h), proxy_parse::done);
  EXPECT_TRUE(h.problem.empty());
  EXPECT_EQ(parse_proxy_header("PROXY TCP4", h), proxy_parse::need_more);
  EXPECT_TRUE(h.problem.empty());
  EXPECT_EQ(parse_proxy_header("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", h), proxy_parse::invalid);
  EXPECT_EQ(h.problem, "v1: bare LF");
}

}  // namespace
}  // namespace portcullis::smtp
