#pragma once

// Standard Webhooks v1 signatures (design.md §8):
//   webhook-signature = "v1," + base64(HMAC-SHA256(key, id "." ts "." body))
// where key is the tenant's `whsec_` secret, prefix removed, base64-decoded.
//
// Header-only on purpose: the `videogen` CLI links no server library, and its
// `webhook verify` must run the very code the server signs with. Every
// function is pure and thread-safe. Secrets never appear in any message.

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace videogen::webhooks {

inline constexpr absl::string_view kSecretPrefix = "whsec_";
inline constexpr absl::string_view kSignatureVersion = "v1";
// Receivers refuse timestamps further than this from their clock.
inline constexpr absl::Duration kDefaultTolerance = absl::Minutes(5);

// webhook-id: stable across the retries of one event, so receivers can
// de-duplicate.
inline std::string WebhookId(absl::string_view generation_id,
                             int64_t revision) {
  return absl::StrCat(generation_id, ".", revision);
}

// "whsec_<base64>" (prefix optional, as in the reference libraries) -> the
// HMAC key. INVALID_ARGUMENT when it is not base64 or decodes to nothing.
inline absl::StatusOr<std::string> DecodeSecret(absl::string_view secret) {
  absl::ConsumePrefix(&secret, kSecretPrefix);
  std::string key;
  if (secret.empty() || !absl::Base64Unescape(secret, &key) || key.empty()) {
    return absl::InvalidArgumentError(
        "the webhook secret is not \"whsec_\" followed by base64");
  }
  return key;
}

// Raw HMAC-SHA256 of id "." timestamp "." body, fed in pieces so the body is
// never copied.
inline absl::StatusOr<std::string> SignatureDigest(absl::string_view key,
                                                   absl::string_view id,
                                                   absl::string_view timestamp,
                                                   absl::string_view body) {
  // Fetched once: an EVP_MAC is immutable and safe to share across threads.
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (mac == nullptr) return absl::InternalError("OpenSSL has no HMAC");
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac);
  if (ctx == nullptr) return absl::ResourceExhaustedError("EVP_MAC_CTX_new");
  char digest_name[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
      OSSL_PARAM_construct_end()};
  const auto feed = [ctx](absl::string_view piece) {
    return EVP_MAC_update(ctx,
                          reinterpret_cast<const unsigned char*>(piece.data()),
                          piece.size()) == 1;
  };
  unsigned char out[EVP_MAX_MD_SIZE];
  size_t out_len = 0;
  const bool ok =
      EVP_MAC_init(ctx, reinterpret_cast<const unsigned char*>(key.data()),
                   key.size(), params) == 1 &&
      feed(id) && feed(".") && feed(timestamp) && feed(".") && feed(body) &&
      EVP_MAC_final(ctx, out, &out_len, sizeof(out)) == 1;
  EVP_MAC_CTX_free(ctx);
  if (!ok) return absl::InternalError("HMAC-SHA256 failed");
  return std::string(reinterpret_cast<const char*>(out), out_len);
}

// The webhook-signature header value for one attempt: "v1,<base64>".
inline absl::StatusOr<std::string> Sign(absl::string_view secret,
                                        absl::string_view id, int64_t timestamp,
                                        absl::string_view body) {
  absl::StatusOr<std::string> key = DecodeSecret(secret);
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> digest =
      SignatureDigest(*key, id, absl::StrCat(timestamp), body);
  if (!digest.ok()) return digest.status();
  return absl::StrCat(kSignatureVersion, ",", absl::Base64Escape(*digest));
}

// Checks a received delivery the way a receiver should:
//  - INVALID_ARGUMENT: the secret itself is malformed (a setup error);
//  - UNAUTHENTICATED: the message is not authentic or not fresh: timestamp
//    not a number or further than `tolerance` from `now` (either way), or no
//    "v1,<sig>" among the space-separated `signatures` matches.
// `tolerance` <= 0 skips the timestamp check (replaying a saved delivery).
// Signatures of other versions (e.g. "v1a,") are skipped, as the spec asks.
// Comparison is constant-time.
inline absl::Status Verify(absl::string_view secret, absl::string_view id,
                           absl::string_view timestamp, absl::string_view body,
                           absl::string_view signatures, absl::Time now,
                           absl::Duration tolerance = kDefaultTolerance) {
  absl::StatusOr<std::string> key = DecodeSecret(secret);
  if (!key.ok()) return key.status();
  int64_t seconds = 0;
  if (!absl::SimpleAtoi(timestamp, &seconds)) {
    return absl::UnauthenticatedError(absl::StrCat(
        "webhook-timestamp \"", timestamp, "\" is not unix seconds"));
  }
  if (tolerance > absl::ZeroDuration()) {
    const absl::Duration skew = now - absl::FromUnixSeconds(seconds);
    if (skew > tolerance || -skew > tolerance) {
      return absl::UnauthenticatedError(absl::StrCat(
          "webhook-timestamp ", seconds, " is ", absl::FormatDuration(skew),
          skew > absl::ZeroDuration() ? " in the past" : " in the future",
          ", beyond the tolerance of ", absl::FormatDuration(tolerance),
          " (a replayed or delayed message, or a wrong clock)"));
    }
  }
  absl::StatusOr<std::string> digest =
      SignatureDigest(*key, id, timestamp, body);
  if (!digest.ok()) return digest.status();
  // Compared as canonical base64 text, as the reference libraries do: a
  // decoder would also accept variants that differ in the padding bits.
  const std::string expected = absl::Base64Escape(*digest);
  int candidates = 0;
  for (absl::string_view entry :
       absl::StrSplit(signatures, ' ', absl::SkipEmpty())) {
    const size_t comma = entry.find(',');
    if (comma == absl::string_view::npos) continue;
    const absl::string_view version = entry.substr(0, comma);
    const absl::string_view value = entry.substr(comma + 1);
    if (version != kSignatureVersion) continue;
    ++candidates;
    if (value.size() == expected.size() &&
        CRYPTO_memcmp(value.data(), expected.data(), value.size()) == 0) {
      return absl::OkStatus();
    }
  }
  if (candidates == 0) {
    return absl::UnauthenticatedError(
        "webhook-signature holds no \"v1,<base64>\" signature");
  }
  return absl::UnauthenticatedError(absl::StrCat(
      "none of the ", candidates,
      " v1 signature(s) matches: wrong secret, or the body, webhook-id or "
      "webhook-timestamp differs from what was signed"));
}

}  // namespace videogen::webhooks
