// The signer's signatures (folded_signature) against OpenSSL's own: an
// Ed25519 signature is deterministic (RFC 8032 §5.1.6), so libsodium's must
// be OpenSSL's byte for byte; an RSA one must verify with OpenSSL. Also from
// several threads at once, as the pool and the I/O threads sign.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "checks/dkim_crypto.hpp"
#include "checks/dkim_signer.hpp"
#include "checks/dkim_verifier.hpp"
#include "unit/txt_table.hpp"

namespace portcullis::checks {
namespace {

using pkey_ptr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

// A new key of `type` ("ED25519", or "RSA" of 2048 bits), and the PEM file it was written to.
struct key_file {
  pkey_ptr key{nullptr, EVP_PKEY_free};
  std::filesystem::path path;
  explicit key_file(const char* type) {
    key.reset(std::string(type) == "RSA" ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", std::size_t{2048})
                                         : EVP_PKEY_Q_keygen(nullptr, nullptr, type));
    EXPECT_NE(key, nullptr);
    path = std::filesystem::temp_directory_path() /
           ("dkim_signer_test-" + std::string(type) + "-" + std::to_string(::getpid()) + ".pem");
    FILE* f = std::fopen(path.c_str(), "w");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr), 1);
    std::fclose(f);
  }
  ~key_file() { std::filesystem::remove(path); }
};

// The b= value without its folding and final CRLF, as bytes.
std::string unfolded(std::string b) {
  EXPECT_TRUE(b.ends_with("\r\n"));
  std::string out;
  for (char c : b)
    if (c != '\r' && c != '\n' && c != '\t' && c != ' ') out += c;
  return base64_decode(out);
}

std::string openssl_ed25519(EVP_PKEY* key, const std::string& data) {
  md_context ctx;
  EXPECT_EQ(EVP_DigestSignInit(ctx.ctx, nullptr, nullptr, nullptr, key), 1);
  const std::string hashed = sha256_of(data);
  std::string sig(64, '\0');
  std::size_t size = sig.size();
  EXPECT_EQ(EVP_DigestSign(ctx.ctx, reinterpret_cast<unsigned char*>(sig.data()), &size,
                           reinterpret_cast<const unsigned char*>(hashed.data()), hashed.size()),
            1);
  return sig;
}

bool openssl_verifies(EVP_PKEY* key, const std::string& data, const std::string& sig, bool ed25519) {
  md_context ctx;
  const std::string input = ed25519 ? sha256_of(data) : data;
  EXPECT_EQ(EVP_DigestVerifyInit(ctx.ctx, nullptr, ed25519 ? nullptr : sha256(), nullptr, key), 1);
  return EVP_DigestVerify(ctx.ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                          reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
}

const std::string header_data =
    "from:Alice <alice@example.test>\r\nsubject:hello\r\n"
    "dkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.test; s=ed; h=from:subject; bh=x; b=";

TEST(DkimSigner, Ed25519SignaturesAreOpenSslsByteForByte) {
  key_file file("ED25519");
  const signing_key key = read_signing_key(file.path, "dkim_sign");
  ASSERT_TRUE(key.ed25519);
  for (const std::string& data : {header_data, header_data + "more", std::string()}) {
    const std::string sig = unfolded(folded_signature(key, data));
    ASSERT_EQ(sig.size(), 64u);
    EXPECT_EQ(sig, openssl_ed25519(file.key.get(), data));
    EXPECT_TRUE(openssl_verifies(file.key.get(), data, sig, true));
    EXPECT_FALSE(openssl_verifies(file.key.get(), data + "x", sig, true));
  }
}

TEST(DkimSigner, RsaSignaturesVerifyWithOpenSsl) {
  key_file file("RSA");
  const signing_key key = read_signing_key(file.path, "dkim_sign");
  ASSERT_FALSE(key.ed25519);
  const std::string sig = unfolded(folded_signature(key, header_data));
  EXPECT_EQ(sig.size(), 256u);
  EXPECT_TRUE(openssl_verifies(file.key.get(), header_data, sig, false));
  EXPECT_FALSE(openssl_verifies(file.key.get(), header_data + "x", sig, false));
}

TEST(DkimSigner, KeysSignFromManyThreadsAtOnce) {
  for (const char* type : {"ED25519", "RSA"}) {
    key_file file(type);
    const signing_key key = read_signing_key(file.path, "dkim_sign");
    const signing_key copy = key;  // (the signer and a reload's new one may share them)
    const std::string expected = folded_signature(key, header_data);
    std::vector<std::thread> threads;
    std::vector<int> wrong(4, 0);
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 50; ++i) {
          const std::string sig = folded_signature(t % 2 ? copy : key, header_data);
          // Ed25519 signs the same way each time; RSA (PKCS#1 v1.5) too.
          if (sig != expected) ++wrong[t];
        }
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(wrong, std::vector<int>(4, 0)) << type;
  }
}

// The TXT record of `key`'s public half (RFC 6376 §3.6.1; RFC 8463 §4.2: Ed25519's 32 octets).
std::string key_record(EVP_PKEY* key) {
  std::string bytes;
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519) {
    bytes.resize(32);
    std::size_t size = bytes.size();
    EXPECT_EQ(EVP_PKEY_get_raw_public_key(key, reinterpret_cast<unsigned char*>(bytes.data()), &size), 1);
    return "v=DKIM1; k=ed25519; p=" + base64_encode(bytes);
  }
  unsigned char* der = nullptr;
  const int size = i2d_PUBKEY(key, &der);
  EXPECT_GT(size, 0);
  bytes.assign(reinterpret_cast<char*>(der), static_cast<std::size_t>(size));
  OPENSSL_free(der);
  return "v=DKIM1; k=rsa; p=" + base64_encode(bytes);
}

// Each key of a domain signs the message once, in the config's order (the
// first on top), and each signature verifies; another domain gets its own keys.
TEST(DkimSigner, EveryKeyOfADomainSigns) {
  key_file rsa("RSA"), ed("ED25519");
  dkim_sign_config settings;
  settings.enabled = true;
  settings.keys = {{{"example.test"}, "rsa", rsa.path}, {{"example.test", "other.test"}, "ed", ed.path}};
  const dkim_signer signer(settings);
  table dns;
  dns.txt("rsa._domainkey.example.test", key_record(rsa.key.get()));
  dns.txt("ed._domainkey.example.test", key_record(ed.key.get()));
  dns.txt("ed._domainkey.other.test", key_record(ed.key.get()));
  const dkim_verifier verifier(dns.lookup(), 5);
  const std::string message = crlf("From: Alice <alice@example.test>\nTo: bob@example.net\nSubject: two keys\n\nHello\n");
  const auto results = [&](const std::string& domain) {
    const std::string fields = signer.sign_now(*message_store::wrap(std::make_shared<std::string>(message)), domain);
    std::string out;
    for (const auto& r : verifier.verify_now(*message_store::wrap(std::make_shared<std::string>(fields + message))))
      out += (out.empty() ? "" : ",") + r.domain + "/" + r.selector + ":" + std::string(to_string(r.result));
    return out;
  };
  EXPECT_EQ(results("example.test"), "example.test/rsa:pass,example.test/ed:pass");
  EXPECT_EQ(results("other.test"), "other.test/ed:pass");
  EXPECT_EQ(signer.keys_for("Example.TEST").size(), 2u);
  EXPECT_TRUE(signer.keys_for("third.test").empty());
}

TEST(DkimSigner, ArcRefusesAnEd25519Key) {
  key_file file("ED25519");
  try {
    read_signing_key(file.path, "arc_seal", true);
    FAIL() << "an Ed25519 key for ARC";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("ARC seals with RSA"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace portcullis::checks
