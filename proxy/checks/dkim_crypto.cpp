#include "checks/dkim_crypto.hpp"

#include <algorithm>
#include <stdexcept>

#include "smtp/message_header.hpp"

namespace portcullis::checks {

const EVP_MD* sha256() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (md == nullptr) throw std::runtime_error("OpenSSL has no SHA-256");
  return md;
}

std::string sha256_of(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &n, sha256(), nullptr) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 failed");
  return std::string(reinterpret_cast<const char*>(digest), n);
}

sha256_hasher::sha256_hasher() {
  if (EVP_DigestInit_ex(hash_.ctx, sha256(), nullptr) != 1) throw std::runtime_error("OpenSSL: SHA-256 failed");
}

sha256_hasher::sha256_hasher(const sha256_hasher& other) {
  if (EVP_MD_CTX_copy_ex(hash_.ctx, other.hash_.ctx) != 1) throw std::runtime_error("OpenSSL: SHA-256 failed");
}

void sha256_hasher::update(std::string_view bytes) {
  if (!bytes.empty() && EVP_DigestUpdate(hash_.ctx, bytes.data(), bytes.size()) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 failed");
}

std::string sha256_hasher::digest() const {
  md_context copy;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_MD_CTX_copy_ex(copy.ctx, hash_.ctx) != 1 || EVP_DigestFinal_ex(copy.ctx, digest, &n) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 failed");
  return std::string(reinterpret_cast<const char*>(digest), n);
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  const int written = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                      reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(written));
  return out;
}

std::string base64_decode(std::string_view text) {
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return {};
  // (EVP_DecodeBlock counts the padding as zero bytes.)
  const auto pad =
      static_cast<std::size_t>(std::count(text.end() - std::min<std::size_t>(text.size(), 2), text.end(), '='));
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

body_hasher::body_hasher(dkim_canonicalization canon, std::optional<std::uint64_t> limit)
    : canon_(canon), limit_(limit), body_(canon) {
  if (EVP_DigestInit_ex(hash_.ctx, sha256(), nullptr) != 1) throw std::runtime_error("OpenSSL: SHA-256 failed");
}

void body_hasher::feed(std::string_view bytes) {
  // At most a CRLF more than came in, but for empty lines held back from the
  // last chunk: one allocation where growing by doubling made ten a message.
  canonical_.reserve(bytes.size() + 2);
  body_.feed(bytes, canonical_);
  take();
}

void body_hasher::finish() {
  body_.finish(canonical_);
  take();
  unsigned int n = 0;
  digest_.resize(EVP_MAX_MD_SIZE);
  if (EVP_DigestFinal_ex(hash_.ctx, reinterpret_cast<unsigned char*>(digest_.data()), &n) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 failed");
  digest_.resize(n);
}

void body_hasher::take() {
  std::size_t n = canonical_.size();
  if (limit_) n = static_cast<std::size_t>(std::min<std::uint64_t>(n, *limit_ - std::min(*limit_, length_)));
  if (n > 0 && EVP_DigestUpdate(hash_.ctx, canonical_.data(), n) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 failed");
  length_ += canonical_.size();
  canonical_.clear();
}

std::optional<std::vector<std::string>> read_for_signatures(const message_store& message, std::string_view prefix,
                                                            std::size_t max_header, const body_wanted& wanted) {
  std::vector<std::string> fields;
  smtp::header_reader header;
  const auto on_field = [&](std::string_view f) { fields.emplace_back(f); };
  if (prefix.size() > max_header) return std::nullopt;
  if (!prefix.empty()) header.feed(prefix, on_field);
  std::size_t read = prefix.size();  // of the header section
  std::vector<body_hasher*> hashers;
  bool asked = false;
  message_store::reader in(message);
  for (auto chunk = in.next(); !chunk.empty(); chunk = in.next()) {
    std::size_t used = 0;
    if (!header.done()) {
      // Never more than max_header bytes to the reader, which holds a field until it ends.
      const auto piece = chunk.substr(0, max_header - read);
      used = header.feed(piece, on_field);
      read += used;
      if (!header.done()) {
        if (read >= max_header && !(piece.size() == chunk.size() && in.at_end())) return std::nullopt;
        continue;
      }
    }
    if (!asked) {
      asked = true;
      hashers = wanted(fields);
      if (hashers.empty()) break;  // nothing wants the body
    }
    for (auto* h : hashers) h->feed(chunk.substr(used));
  }
  if (in.failed()) throw std::runtime_error("the message could not be read: " + in.error());
  if (!asked) {  // a message of header fields only
    header.finish(on_field);
    hashers = wanted(fields);
  }
  for (auto* h : hashers) h->finish();
  return fields;
}

}  // namespace portcullis::checks
