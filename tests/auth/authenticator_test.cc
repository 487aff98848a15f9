#include "server/auth/authenticator.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/api_key.h"
#include "server/auth/key_authenticator.h"
#include "tests/auth/fake_key_store.h"

namespace videogen::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr absl::Duration kTtl = absl::Seconds(5);

// A well-formed key that no store holds: "vgk_k_" + 16 base62 + "_" + 43.
std::string FakeKey(int n) {
  return absl::StrFormat("vgk_k_%016d_%043d", n, n);
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  std::string AddKey(std::string tenant, bool admin = false,
                     store::Admission limits = {}) {
    absl::StatusOr<IssuedKey> issued =
        IssueKey(std::move(tenant), admin, limits, clock_.Now());
    EXPECT_TRUE(issued.ok());
    EXPECT_TRUE(store_.InsertKey(issued->record).ok());
    return issued->key;
  }
  std::unique_ptr<Authenticator> NewAuth() {
    return NewKeyAuthenticator(&store_, &clock_, kTtl);
  }

  testing::FakeKeyStore store_;
  core::FakeClock clock_;
};

TEST_F(AuthenticatorTest, GoodKeyGivesItsPrincipal) {
  store::Admission limits;
  limits.max_concurrent = 5;
  limits.video_seconds_budget = 20;
  const std::string key = AddKey("acme", false, limits);
  auto auth = NewAuth();
  absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + key);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->key_id, KeyIdOf(key));
  EXPECT_EQ(p->tenant, "acme");
  EXPECT_FALSE(p->admin);
  EXPECT_EQ(p->Scope(), "acme");
  EXPECT_EQ(p->limits.max_concurrent, 5);
  EXPECT_EQ(p->limits.video_seconds_budget, 20);
  EXPECT_TRUE(absl::StartsWith(p->webhook_secret, "whsec_"));
}

TEST_F(AuthenticatorTest, AdminKeyScopesEverything) {
  const std::string key = AddKey("ops", /*admin=*/true);
  absl::StatusOr<Principal> p = NewAuth()->Authenticate("Bearer " + key);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->admin);
  EXPECT_EQ(p->tenant, "ops");
  EXPECT_EQ(p->Scope(), "");
}

TEST_F(AuthenticatorTest, SchemeIsCaseInsensitiveAndBlanksAreTolerated) {
  const std::string key = AddKey("acme");
  auto auth = NewAuth();
  for (const std::string& header :
       {"bearer " + key, "BEARER " + key, "  Bearer \t " + key + "  "}) {
    EXPECT_TRUE(auth->Authenticate(header).ok()) << header;
  }
}

TEST_F(AuthenticatorTest, MissingAndMalformedSayWhatIsExpected) {
  const std::string key = AddKey("acme");
  auto auth = NewAuth();
  for (const std::string& header :
       {std::string(""), std::string("   "), std::string("Bearer"),
        std::string("Bearer "), "Basic " + key, key, "Bearer " + key + " x",
        std::string("Bearer sk-live-0123456789"),
        std::string("Bearer vgk_k_short_x"), "Token " + key}) {
    absl::StatusOr<Principal> p = auth->Authenticate(header);
    ASSERT_FALSE(p.ok()) << header;
    EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
    EXPECT_THAT(p.status().message(),
                HasSubstr("authorization: Bearer vgk_..."));
    EXPECT_THAT(p.status().message(), Not(HasSubstr(key)));
    EXPECT_THAT(p.status().message(), Not(HasSubstr("sk-live")));
  }
  EXPECT_EQ(store_.finds(), 0) << "malformed keys must not reach the store";
}

TEST_F(AuthenticatorTest, UnknownKeyNamesOnlyItsKeyId) {
  AddKey("acme");
  const std::string stranger = FakeKey(42);
  absl::StatusOr<Principal> p = NewAuth()->Authenticate("Bearer " + stranger);
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(p.status()));
  EXPECT_THAT(p.status().message(), HasSubstr(KeyIdOf(stranger)));
  EXPECT_THAT(p.status().message(), Not(HasSubstr(stranger)));
}

TEST_F(AuthenticatorTest, KeyWithAlteredKeyIdIsRefused) {
  const std::string key = AddKey("acme");
  // Same secret, different visible key_id: a different hash, so unknown.
  std::string altered = key;
  altered[6] = altered[6] == 'A' ? 'B' : 'A';
  absl::StatusOr<Principal> p = NewAuth()->Authenticate("Bearer " + altered);
  EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
}

TEST_F(AuthenticatorTest, StoreThatMatchesLooselyCannotLetAKeyIn) {
  const std::string key = AddKey("acme");
  store_.set_loose(true);
  // The right key_id with a wrong secret: only the hash comparison can tell.
  std::string guess = key;
  guess.back() = guess.back() == 'A' ? 'B' : 'A';
  absl::StatusOr<Principal> p = NewAuth()->Authenticate("Bearer " + guess);
  EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
}

TEST_F(AuthenticatorTest, RevokedKeyIsRefused) {
  const std::string key = AddKey("acme");
  ASSERT_TRUE(store_.RevokeKey(KeyIdOf(key), clock_.Now()).ok());
  absl::StatusOr<Principal> p = NewAuth()->Authenticate("Bearer " + key);
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(p.status()));
  EXPECT_EQ(p.status().message(),
            absl::StrCat("key ", KeyIdOf(key), " was revoked"));
}

TEST_F(AuthenticatorTest, RevocationTakesEffectWithinTheCacheTtl) {
  const std::string key = AddKey("acme");
  auto auth = NewAuth();
  ASSERT_TRUE(auth->Authenticate("Bearer " + key).ok());
  ASSERT_TRUE(store_.RevokeKey(KeyIdOf(key), clock_.Now()).ok());
  // Still cached just before the TTL...
  clock_.Advance(kTtl - absl::Milliseconds(1));
  EXPECT_TRUE(auth->Authenticate("Bearer " + key).ok());
  // ...and refused from the TTL on.
  clock_.Advance(absl::Milliseconds(1));
  absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + key);
  EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
  EXPECT_THAT(p.status().message(), HasSubstr("was revoked"));
}

TEST_F(AuthenticatorTest, LookupsAreCachedPositiveAndNegative) {
  const std::string key = AddKey("acme");
  const std::string stranger = FakeKey(7);
  auto auth = NewAuth();
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(auth->Authenticate("Bearer " + key).ok());
    EXPECT_FALSE(auth->Authenticate("Bearer " + stranger).ok());
  }
  EXPECT_EQ(store_.finds(), 2);
  clock_.Advance(kTtl);
  EXPECT_TRUE(auth->Authenticate("Bearer " + key).ok());
  EXPECT_FALSE(auth->Authenticate("Bearer " + stranger).ok());
  EXPECT_EQ(store_.finds(), 4);
}

TEST_F(AuthenticatorTest, NewKeyWorksOnceTheNegativeEntryExpires) {
  // A key created on another replica after this one cached "unknown".
  absl::StatusOr<IssuedKey> issued =
      IssueKey("acme", false, store::Admission{}, clock_.Now());
  ASSERT_TRUE(issued.ok());
  auto auth = NewAuth();
  EXPECT_FALSE(auth->Authenticate("Bearer " + issued->key).ok());
  ASSERT_TRUE(store_.InsertKey(issued->record).ok());
  clock_.Advance(kTtl);
  EXPECT_TRUE(auth->Authenticate("Bearer " + issued->key).ok());
}

TEST_F(AuthenticatorTest, StoreFailureIsUnavailableAndNotCached) {
  const std::string key = AddKey("acme");
  auto auth = NewAuth();
  store_.set_fail(true);
  absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + key);
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::IsUnavailable(p.status())) << p.status();
  EXPECT_THAT(p.status().message(), HasSubstr(KeyIdOf(key)));
  EXPECT_THAT(p.status().message(), Not(HasSubstr(key)));
  store_.set_fail(false);
  EXPECT_TRUE(auth->Authenticate("Bearer " + key).ok());
}

TEST_F(AuthenticatorTest, FloodOfRandomKeysStaysWithinTheCacheBound) {
  const std::string key = AddKey("acme");
  KeyAuthenticator::Options options;
  options.cache_ttl = kTtl;
  options.cache_capacity = 100;
  KeyAuthenticator auth(&store_, &clock_, options);
  ASSERT_TRUE(auth.Authenticate("Bearer " + key).ok());
  for (int i = 0; i < 1000; ++i) {
    ASSERT_FALSE(auth.Authenticate("Bearer " + FakeKey(i)).ok());
    ASSERT_LE(auth.cache_size(), 100u);
  }
  EXPECT_EQ(auth.cache_size(), 100u);
  EXPECT_EQ(store_.finds(), 1001);
  // The good key was evicted by the flood, not broken by it.
  EXPECT_TRUE(auth.Authenticate("Bearer " + key).ok());
  EXPECT_EQ(store_.finds(), 1002);
}

TEST_F(AuthenticatorTest, DefaultCacheHoldsAtMostTenThousandEntries) {
  auto auth = NewAuth();
  auto* keys = dynamic_cast<KeyAuthenticator*>(auth.get());
  ASSERT_NE(keys, nullptr);
  for (int i = 0; i < 10'050; ++i) {
    ASSERT_FALSE(auth->Authenticate("Bearer " + FakeKey(i)).ok());
  }
  EXPECT_EQ(keys->cache_size(), 10'000u);
}

TEST_F(AuthenticatorTest, ConcurrentCallersWithRevocation) {
  std::vector<std::string> keys;
  for (int i = 0; i < 8; ++i) keys.push_back(AddKey("t" + std::to_string(i)));
  auto auth = NewAuth();
  std::atomic<int> ok{0}, revoked{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        const std::string& key = keys[(t + i) % keys.size()];
        absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + key);
        if (p.ok()) {
          ok++;
        } else if (absl::StrContains(p.status().message(), "revoked")) {
          revoked++;
        } else {
          other++;
        }
        if (i % 50 == 0) clock_.Advance(absl::Seconds(1));
      }
    });
  }
  threads.emplace_back([&] {
    for (const auto& key : keys) {
      ASSERT_TRUE(store_.RevokeKey(KeyIdOf(key), clock_.Now()).ok());
    }
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok.load() + revoked.load(), 2000);
  // Once every cached entry has expired, every key is refused.
  clock_.Advance(kTtl);
  for (const auto& key : keys) {
    EXPECT_FALSE(auth->Authenticate("Bearer " + key).ok());
  }
}

TEST(AllowAllAuthenticatorTest, EveryoneIsTheAnonymousAdmin) {
  auto auth = NewAllowAllAuthenticator();
  for (const char* header : {"", "Bearer whatever", "garbage"}) {
    absl::StatusOr<Principal> p = auth->Authenticate(header);
    ASSERT_TRUE(p.ok());
    EXPECT_TRUE(p->admin);
    EXPECT_EQ(p->tenant, "");
    EXPECT_EQ(p->key_id, "");
    EXPECT_EQ(p->Scope(), "");
  }
}

TEST(KeyCacheTest, ExpiresAndReplaces) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  KeyCache cache(absl::Seconds(5), 10);
  store::ApiKey key;
  key.key_id = "k_1";
  cache.Put("h1", key, t0);
  cache.Put("h2", std::nullopt, t0);
  ASSERT_TRUE(cache.Get("h1", t0).has_value());
  EXPECT_EQ((*cache.Get("h1", t0))->key_id, "k_1");
  ASSERT_TRUE(cache.Get("h2", t0).has_value());
  EXPECT_FALSE(cache.Get("h2", t0)->has_value());  // cached "no such key"
  EXPECT_FALSE(cache.Get("h3", t0).has_value());   // not cached at all
  EXPECT_FALSE(cache.Get("h1", t0 + absl::Seconds(5)).has_value());
  // Re-putting h1 later restarts its TTL; the old queue item is stale and
  // must not evict the new entry.
  cache.Put("h1", key, t0 + absl::Seconds(4));
  cache.Put("h3", std::nullopt, t0 + absl::Seconds(6));  // evicts expired h2
  EXPECT_TRUE(cache.Get("h1", t0 + absl::Seconds(8)).has_value());
  EXPECT_FALSE(cache.Get("h2", t0 + absl::Seconds(4)).has_value());
  EXPECT_EQ(cache.size(), 2u);
}

TEST(KeyCacheTest, EvictsOldestWhenFull) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  KeyCache cache(absl::Minutes(1), 3);
  for (int i = 0; i < 5; ++i) {
    cache.Put("h" + std::to_string(i), std::nullopt, t0);
  }
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_FALSE(cache.Get("h0", t0).has_value());
  EXPECT_FALSE(cache.Get("h1", t0).has_value());
  EXPECT_TRUE(cache.Get("h4", t0).has_value());
  // Replacing one key over and over cannot grow the queue past the bound
  // either (its stale items are dropped as the queue fills).
  for (int i = 0; i < 100; ++i) cache.Put("h4", std::nullopt, t0);
  EXPECT_LE(cache.size(), 3u);
  EXPECT_TRUE(cache.Get("h4", t0).has_value());
}

}  // namespace
}  // namespace videogen::auth
