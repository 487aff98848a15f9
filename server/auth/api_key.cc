#include "server/auth/api_key.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/auth/string_view.h"

namespace videogen::auth {
namespace {

constexpr size_t kKeyIdChars = 16;    // ~95 bits: collisions never happen
constexpr size_t kSecretBytes = 32;   // 256 bits of secret
constexpr size_t kSecretChars = 43;   // base64url of 32 bytes, no padding
constexpr size_t kWebhookBytes = 24;  // Standard Webhooks: 24 to 64 bytes
constexpr std::string_view kKeyIdTag = "k_";
constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

absl::Status RandomBytes(unsigned char* out, size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) {
    return absl::InternalError("OpenSSL RAND_bytes failed: no key was made");
  }
  return absl::OkStatus();
}

// Uniform base62: bytes >= 248 (= 4 * 62) are rejected so that no character
// is more likely than another.
absl::StatusOr<std::string> RandomBase62(size_t n) {
  std::string out;
  out.reserve(n);
  std::array<unsigned char, 32> buf;
  while (out.size() < n) {
    if (absl::Status s = RandomBytes(buf.data(), buf.size()); !s.ok()) {
      return s;
    }
    for (unsigned char b : buf) {
      if (b >= 248 || out.size() == n) continue;
      out.push_back(kBase62[b % 62]);
    }
  }
  return out;
}

// Random bytes encoded by `encode`, wiped from memory afterwards.
template <typename Encode>
absl::StatusOr<std::string> RandomEncoded(size_t n, Encode encode) {
  std::array<unsigned char, 64> buf;
  if (absl::Status s = RandomBytes(buf.data(), n); !s.ok()) return s;
  std::string out =
      encode(std::string_view(reinterpret_cast<const char*>(buf.data()), n));
  OPENSSL_cleanse(buf.data(), buf.size());
  return out;
}

bool IsBase62(char c) { return absl::ascii_isalnum(c); }

bool IsBase64Url(char c) {
  return absl::ascii_isalnum(c) || c == '-' || c == '_';
}

}  // namespace

bool IsValidKeyId(std::string_view key_id) {
  if (key_id.size() != kKeyIdTag.size() + kKeyIdChars) return false;
  if (key_id.substr(0, kKeyIdTag.size()) != kKeyIdTag) return false;
  for (char c : key_id.substr(kKeyIdTag.size())) {
    if (!IsBase62(c)) return false;
  }
  return true;
}

std::string KeyIdOf(std::string_view key) {
  if (key.substr(0, kKeyPrefix.size()) != kKeyPrefix) return "";
  key.remove_prefix(kKeyPrefix.size());
  const size_t id_len = kKeyIdTag.size() + kKeyIdChars;
  if (key.size() != id_len + 1 + kSecretChars || key[id_len] != '_') {
    return "";
  }
  std::string_view key_id = key.substr(0, id_len);
  if (!IsValidKeyId(key_id)) return "";
  for (char c : key.substr(id_len + 1)) {
    if (!IsBase64Url(c)) return "";
  }
  return std::string(key_id);
}

std::string HashKey(std::string_view key) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // EVP_Digest with SHA-256 cannot fail short of memory exhaustion; an
  // empty hash then matches no stored key.
  if (EVP_Digest(key.data(), key.size(), digest, &len, EVP_sha256(), nullptr) !=
      1) {
    return "";
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), len));
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool IsValidTenantName(std::string_view tenant) {
  if (tenant.empty() || tenant.size() > 63) return false;
  if (!absl::ascii_islower(tenant[0])) return false;
  for (char c : tenant) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '_' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::string> NewWebhookSecret() {
  absl::StatusOr<std::string> b64 = RandomEncoded(
      kWebhookBytes,
      [](std::string_view raw) { return absl::Base64Escape(Av(raw)); });
  if (!b64.ok()) return b64.status();
  return absl::StrCat(Av(kWebhookSecretPrefix), *b64);
}

absl::StatusOr<IssuedKey> IssueKey(std::string tenant, bool admin,
                                   const store::Admission& limits,
                                   absl::Time now) {
  absl::StatusOr<std::string> id_chars = RandomBase62(kKeyIdChars);
  if (!id_chars.ok()) return id_chars.status();
  absl::StatusOr<std::string> secret =
      RandomEncoded(kSecretBytes, [](std::string_view raw) {
        return absl::WebSafeBase64Escape(Av(raw));  // no padding
      });
  if (!secret.ok()) return secret.status();
  absl::StatusOr<std::string> webhook_secret = NewWebhookSecret();
  if (!webhook_secret.ok()) return webhook_secret.status();

  IssuedKey issued;
  issued.record.key_id = absl::StrCat(Av(kKeyIdTag), *id_chars);
  issued.key = absl::StrCat(Av(kKeyPrefix), issued.record.key_id, "_", *secret);
  issued.record.key_hash = HashKey(issued.key);
  issued.record.tenant = std::move(tenant);
  issued.record.admin = admin;
  issued.record.limits = limits;
  issued.record.webhook_secret = *std::move(webhook_secret);
  issued.record.created = now;
  return issued;
}

}  // namespace videogen::auth
