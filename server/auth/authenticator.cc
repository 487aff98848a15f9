#include "server/auth/authenticator.h"

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/auth/api_key.h"
#include "server/auth/key_authenticator.h"
#include "server/auth/string_view.h"

namespace videogen::auth {
namespace {

constexpr absl::string_view kExpected =
    "expected metadata `authorization: Bearer vgk_...`";

class AllowAllAuthenticator final : public Authenticator {
 public:
  absl::StatusOr<Principal> Authenticate(std::string_view) override {
    Principal anonymous;
    anonymous.admin = true;
    return anonymous;
  }
};

Principal PrincipalOf(const store::ApiKey& key) {
  Principal p;
  p.key_id = key.key_id;
  p.tenant = key.tenant;
  p.admin = key.admin;
  p.limits = key.limits;
  p.webhook_secret = key.webhook_secret;
  return p;
}

}  // namespace

absl::StatusOr<std::string_view> BearerToken(std::string_view authorization) {
  absl::string_view value = absl::StripAsciiWhitespace(Av(authorization));
  if (value.empty()) {
    return absl::UnauthenticatedError(absl::StrCat("no API key: ", kExpected));
  }
  size_t blank = value.find_first_of(" \t");
  absl::string_view scheme = value.substr(0, blank);
  if (blank == absl::string_view::npos ||
      !absl::EqualsIgnoreCase(scheme, "bearer")) {
    return absl::UnauthenticatedError(
        absl::StrCat("unsupported authorization scheme: ", kExpected));
  }
  absl::string_view token =
      absl::StripLeadingAsciiWhitespace(value.substr(blank + 1));
  if (token.find_first_of(" \t") != absl::string_view::npos) {
    return absl::UnauthenticatedError(
        absl::StrCat("malformed authorization: ", kExpected));
  }
  return std::string_view(token.data(), token.size());
}

// ---- KeyCache ----

std::optional<KeyCache::Lookup> KeyCache::Get(std::string_view key_hash,
                                              absl::Time now) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(Av(key_hash));
  if (it == entries_.end() || it->second.expires <= now) return std::nullopt;
  return it->second.lookup;
}

void KeyCache::Put(std::string key_hash, Lookup lookup, absl::Time now) {
  absl::MutexLock lock(&mu_);
  EvictLocked(now);
  uint64_t seq = next_seq_++;
  order_.emplace_back(key_hash, seq);
  entries_.insert_or_assign(std::move(key_hash),
                            Entry{std::move(lookup), now + ttl_, seq});
}

size_t KeyCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

// Drops expired entries from the front, then the oldest ones until one more
// fits. Amortised O(1): every queue item is popped at most once.
void KeyCache::EvictLocked(absl::Time now) {
  while (!order_.empty()) {
    const auto& [hash, seq] = order_.front();
    auto it = entries_.find(hash);
    const bool live = it != entries_.end() && it->second.seq == seq;
    const bool full =
        entries_.size() >= capacity_ || order_.size() >= capacity_;
    if (live && it->second.expires > now && !full) break;
    if (live) entries_.erase(it);
    order_.pop_front();
  }
}

// ---- KeyAuthenticator ----

absl::StatusOr<KeyCache::Lookup> KeyAuthenticator::LookUp(
    const std::string& key_hash, const std::string& key_id) {
  if (std::optional<KeyCache::Lookup> hit =
          cache_.Get(key_hash, clock_->Now())) {
    return *std::move(hit);
  }
  absl::StatusOr<std::optional<store::ApiKey>> found =
      store_->FindKeyByHash(key_hash);
  if (!found.ok()) {
    // Not cached: the next call asks the store again.
    return absl::UnavailableError(absl::StrCat(
        "cannot check API key ", key_id, " now: ", found.status().message()));
  }
  cache_.Put(key_hash, *found, clock_->Now());
  return *std::move(found);
}

absl::StatusOr<Principal> KeyAuthenticator::Authenticate(
    std::string_view authorization) {
  absl::StatusOr<std::string_view> key = BearerToken(authorization);
  if (!key.ok()) return key.status();
  const std::string key_id = KeyIdOf(*key);
  if (key_id.empty()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the bearer token is not a videogen API key: ", kExpected));
  }
  const std::string key_hash = HashKey(*key);
  absl::StatusOr<KeyCache::Lookup> lookup = LookUp(key_hash, key_id);
  if (!lookup.ok()) return lookup.status();
  // The store matched on the hash already; the constant-time comparison
  // keeps a store that compares loosely (or leaks timing) from mattering,
  // and the key_id check refuses a key whose visible id was altered.
  if (!lookup->has_value() ||
      !ConstantTimeEquals((*lookup)->key_hash, key_hash) ||
      (*lookup)->key_id != key_id) {
    return absl::UnauthenticatedError(absl::StrCat("unknown API key ", key_id));
  }
  const store::ApiKey& record = **lookup;
  if (record.revoked.has_value() && *record.revoked <= clock_->Now()) {
    return absl::UnauthenticatedError(
        absl::StrCat("key ", key_id, " was revoked"));
  }
  return PrincipalOf(record);
}

// ---- factories (authenticator.h) ----

std::unique_ptr<Authenticator> NewAllowAllAuthenticator() {
  return std::make_unique<AllowAllAuthenticator>();
}

std::unique_ptr<Authenticator> NewKeyAuthenticator(store::Store* store,
                                                   core::Clock* clock,
                                                   absl::Duration cache_ttl) {
  KeyAuthenticator::Options options;
  options.cache_ttl = cache_ttl;
  return std::make_unique<KeyAuthenticator>(store, clock, options);
}

}  // namespace videogen::auth
