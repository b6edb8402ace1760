// DKIM's canonicalizations (RFC 6376 §3.4) and the choice of header fields
// a signature covers (§5.4): what the signer and the verifier hash.
// Pure: bytes in, bytes out. (Both are ours, not OpenDKIM's: OpenDKIM
// parses every key anew, private keys for each message it signs and public
// keys for each signature it verifies, which under OpenSSL 3 costs more
// than the signature itself; and it leaks Ed25519 signing keys.)
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::checks {

enum class dkim_canonicalization { simple, relaxed };

// A header field (name, colon, value, folding, final CRLF) in relaxed form:
// the name lower-cased, the value unfolded, runs of WSP as one SP, no WSP
// around the colon or at the end; "name:value\r\n".
std::string relaxed_header(std::string_view field);

// A header field in the canonicalization `c`: "simple" is the field as it
// came (with a final CRLF), "relaxed" is relaxed_header.
std::string canonical_header(std::string_view field, dkim_canonicalization c);

// A DKIM-Signature field as its own signature covers it (§3.7): the b=
// value taken out with the whitespace around it, all else as it came, no
// final CRLF; then canonicalized without the CRLF the canonicalization adds.
std::string unsigned_signature_field(std::string_view field, dkim_canonicalization c);

// The body canonicalized (§3.4.3, §3.4.4), fed in any pieces: no empty
// lines at the end, a final CRLF unless empty. Simple: as it came, and an
// empty body is one CRLF. Relaxed: runs of WSP as one SP, no WSP at line
// ends, and an empty body stays empty. Output goes to `out`, appended;
// callers hash and clear it as they go.
class canonical_body {
 public:
  explicit canonical_body(dkim_canonicalization c) : relaxed_(c == dkim_canonicalization::relaxed) {}
  void feed(std::string_view bytes, std::string& out);
  void finish(std::string& out);

 private:
  bool relaxed_;
  std::size_t empty_lines_ = 0;  // held back: they count only if content follows
  bool wsp_ = false;             // relaxed: a run of WSP held back, a space if content follows on the line
  bool content_ = false;         // the line has content
  bool any_ = false;             // the body has content
};

// The h= list (lower-case names, §3.5) for a message with these header
// fields: each wanted name once per field of that name, and the oversigned
// ones once more (a field of that name added later breaks the signature).
std::vector<std::string> signed_field_names(const std::vector<std::string>& fields,
                                            const std::vector<std::string_view>& wanted,
                                            const std::vector<std::string_view>& oversigned);

// The fields as the signature hashes them (§5.4.2): for each name of `h`,
// the last field of that name not yet taken, canonicalized; nothing for a
// name whose fields are all taken (oversigning).
std::string signed_fields(const std::vector<std::string>& fields, const std::vector<std::string>& h,
                          dkim_canonicalization c);
// The same, each canonical field handed to `out` in turn (a verifier hashes
// them as they come, with no copy of them all).
void for_each_signed_field(const std::vector<std::string>& fields, const std::vector<std::string>& h,
                           dkim_canonicalization c, const std::function<void(std::string_view)>& out);

}  // namespace portcullis::checks
