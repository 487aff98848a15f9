#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth/authenticator.h"
#include "server/core/clock.h"
#include "server/store/store.h"

namespace videogen::auth {

// Splits "Bearer KEY" (scheme case-insensitive, surrounding blanks ignored)
// and returns KEY, or UNAUTHENTICATED saying what is expected. The message
// never contains any part of `authorization`.
absl::StatusOr<std::string_view> BearerToken(std::string_view authorization);

// A bounded TTL cache of key lookups by key hash, positive ("this key") and
// negative ("no such key") alike, so a flood of random keys costs at most
// `capacity` entries. Entries leave in insertion order (all share one TTL,
// so that is also expiry order) when they expire or room is needed.
// Thread-safe; every method holds the mutex only for map work.
class KeyCache {
 public:
  using Lookup = std::optional<store::ApiKey>;  // nullopt: no such key

  KeyCache(absl::Duration ttl, size_t capacity)
      : ttl_(ttl), capacity_(capacity < 1 ? 1 : capacity) {}

  // The cached lookup for `key_hash` if one is fresh at `now`.
  std::optional<Lookup> Get(std::string_view key_hash, absl::Time now) const;
  void Put(std::string key_hash, Lookup lookup, absl::Time now);
  size_t size() const;

 private:
  struct Entry {
    Lookup lookup;
    absl::Time expires;
    uint64_t seq;  // matches the entry's item in `order_`
  };
  void EvictLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const absl::Duration ttl_;
  const size_t capacity_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // (key_hash, seq) oldest first; an item whose seq no longer matches its
  // entry is stale (the entry was replaced) and is skipped.
  std::deque<std::pair<std::string, uint64_t>> order_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
};

// --auth=keys. Looks keys up by hash in the store through a KeyCache, so a
// revocation takes effect on every replica within `cache_ttl`. The store is
// called outside every lock; two concurrent misses on one key both ask it
// (harmless, and no caller waits on another's lookup). Thread-safe.
class KeyAuthenticator final : public Authenticator {
 public:
  struct Options {
    absl::Duration cache_ttl = absl::Seconds(5);
    size_t cache_capacity = 10'000;
  };

  // `store` and `clock` are not owned and must outlive this.
  KeyAuthenticator(store::Store* store, core::Clock* clock, Options options)
      : store_(store),
        clock_(clock),
        cache_(options.cache_ttl, options.cache_capacity) {}

  absl::StatusOr<Principal> Authenticate(
      std::string_view authorization) override;

  size_t cache_size() const { return cache_.size(); }

 private:
  absl::StatusOr<KeyCache::Lookup> LookUp(const std::string& key_hash,
                                          const std::string& key_id);

  store::Store* const store_;
  core::Clock* const clock_;
  KeyCache cache_;
};

}  // namespace videogen::auth
