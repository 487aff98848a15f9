#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/store/store.h"

namespace videogen::auth {

// API keys (design.md §7). A key reads
//
//   vgk_k_<16 base62 chars>_<43 base64url chars>
//   ^^^^ ^^^^^^^^^^^^^^^^^^ ^^^^^^^^^^^^^^^^^^^^
//   tag  key_id (public)    32 random bytes (the secret)
//
// so the key_id can be read off a key (for messages and logs) without a
// lookup, and a key is easy to recognise in a leaked file. Only the SHA-256
// hex of the whole key is stored. All functions here are thread-safe.

inline constexpr std::string_view kKeyPrefix = "vgk_";
inline constexpr std::string_view kWebhookSecretPrefix = "whsec_";

// A freshly made key: `key` is shown once and then forgotten; `record` is
// what the store keeps (it holds no part of the secret but its hash).
struct IssuedKey {
  std::string key;
  store::ApiKey record;
};

// Makes a new key and webhook secret for `tenant` from OpenSSL's CSPRNG.
// INTERNAL if the CSPRNG fails (it then says so; nothing weak is made).
absl::StatusOr<IssuedKey> IssueKey(std::string tenant, bool admin,
                                   const store::Admission& limits,
                                   absl::Time now);

// The key_id of a well-formed key ("k_..."), or "" when `key` is not in the
// form above. Never fails loudly: callers turn "" into UNAUTHENTICATED.
std::string KeyIdOf(std::string_view key);

// True for "k_" + 16 base62 characters.
bool IsValidKeyId(std::string_view key_id);

// Lower-case hex SHA-256 of `key`: what store::ApiKey.key_hash holds.
std::string HashKey(std::string_view key);

// Constant-time equality of two strings (of any length; only the lengths
// leak).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Tenant names: 1-63 characters of [a-z0-9_-], starting with a letter, so
// they are safe in metric labels, URLs and log lines.
bool IsValidTenantName(std::string_view tenant);

// "whsec_" + base64 of 24 random bytes (Standard Webhooks). INTERNAL if the
// CSPRNG fails.
absl::StatusOr<std::string> NewWebhookSecret();

}  // namespace videogen::auth
