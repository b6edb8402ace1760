// What a DNS lookup answers, as plain values: the resolver's answers, and
// what the checks that read them take (so those need no Asio). Pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace portcullis::dns {

// The record types the checks and the policies look up.
enum class rr_type : std::uint16_t { a = 1, ptr = 12, mx = 15, txt = 16, aaaa = 28 };

struct record {
  // A/AAAA: the address as text; MX and PTR: the host name (no final dot);
  // TXT: the record's character-strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
  std::string value;
  std::uint16_t preference = 0;  // MX
};

struct answer {
  enum class status {
    ok,        // records (empty: the name exists without records of the type, NODATA)
    nxdomain,  // the name does not exist (or is not a valid domain name)
    timeout,   // no answer within the timeout
    failure,   // SERVFAIL, REFUSED, an unusable answer, the resolver stopping
  };
  status what = status::failure;
  std::vector<record> records;
  std::uint32_t ttl = 0;
  std::string error;  // timeout and failure: what happened, for logs

  bool ok() const { return what == status::ok; }
  // RFC 7208 §4.6.4: an answer that names nothing (NODATA or NXDOMAIN).
  bool is_void() const { return what == status::nxdomain || (what == status::ok && records.empty()); }
};

}  // namespace portcullis::dns
