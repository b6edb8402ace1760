// DKIM's "relaxed" canonicalization (RFC 6376 §3.4.2, §3.4.4) and the
// choice of header fields a signature covers (§5.4): what the signer hashes.
// Pure: bytes in, bytes out. (Verification is OpenDKIM's; the signer is
// ours because OpenDKIM reparses the private key for every message, which
// costs more than the signature under OpenSSL 3, and leaks Ed25519 keys.)
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace portcullis::checks {

// A header field (name, colon, value, folding, final CRLF) in relaxed form:
// the name lower-cased, the value unfolded, runs of WSP as one SP, no WSP
// around the colon or at the end; "name:value\r\n".
std::string relaxed_header(std::string_view field);

// The body in relaxed form, fed in any pieces: runs of WSP as one SP, no
// WSP at line ends, no empty lines at the end, a final CRLF unless empty.
// Output goes to `out`, appended; callers hash and clear it as they go.
class relaxed_body {
 public:
  void feed(std::string_view bytes, std::string& out);
  void finish(std::string& out);

 private:
  std::size_t empty_lines_ = 0;  // held back: they count only if content follows
  bool wsp_ = false;             // a run of WSP held back: a space if content follows on the line
  bool content_ = false;         // the line has content
};

// The h= list (lower-case names, §3.5) for a message with these header
// fields: each wanted name once per field of that name, and the oversigned
// ones once more (a field of that name added later breaks the signature).
std::vector<std::string> signed_field_names(const std::vector<std::string>& fields,
                                            const std::vector<std::string_view>& wanted,
                                            const std::vector<std::string_view>& oversigned);

// The fields as the signature hashes them (§5.4.2): for each name of `h`,
// the last field of that name not yet taken, relaxed; nothing for a name
// whose fields are all taken (oversigning).
std::string signed_fields_relaxed(const std::vector<std::string>& fields, const std::vector<std::string>& h);

}  // namespace portcullis::checks
