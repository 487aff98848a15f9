#include "server/auth/api_key.h"

#include <set>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::auth {
namespace {

using ::testing::MatchesRegex;

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

IssuedKey Issue(std::string tenant = "acme") {
  absl::StatusOr<IssuedKey> issued =
      IssueKey(std::move(tenant), false, store::Admission{}, kNow);
  EXPECT_TRUE(issued.ok()) << issued.status();
  return *std::move(issued);
}

TEST(ApiKeyTest, KeyHasTheDocumentedForm) {
  IssuedKey issued = Issue();
  EXPECT_THAT(issued.key,
              MatchesRegex("vgk_k_[0-9A-Za-z]{16}_[-_0-9A-Za-z]{43}"));
  EXPECT_THAT(issued.record.key_id, MatchesRegex("k_[0-9A-Za-z]{16}"));
  EXPECT_EQ(KeyIdOf(issued.key), issued.record.key_id);
  EXPECT_TRUE(IsValidKeyId(issued.record.key_id));
  EXPECT_EQ(issued.record.tenant, "acme");
  EXPECT_EQ(issued.record.created, kNow);
  EXPECT_FALSE(issued.record.revoked.has_value());
}

TEST(ApiKeyTest, SecretPartDecodesToThirtyTwoBytes) {
  IssuedKey issued = Issue();
  // The secret may itself contain '_' (base64url): take the fixed length.
  const std::string secret = issued.key.substr(issued.key.size() - 43);
  std::string raw;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(secret, &raw));
  EXPECT_EQ(raw.size(), 32u);
}

TEST(ApiKeyTest, KeysAndIdsAreUnique) {
  std::set<std::string> keys, ids, hashes, webhook_secrets;
  for (int i = 0; i < 2000; ++i) {
    IssuedKey issued = Issue();
    keys.insert(issued.key);
    ids.insert(issued.record.key_id);
    hashes.insert(issued.record.key_hash);
    webhook_secrets.insert(issued.record.webhook_secret);
  }
  EXPECT_EQ(keys.size(), 2000u);
  EXPECT_EQ(ids.size(), 2000u);
  EXPECT_EQ(hashes.size(), 2000u);
  EXPECT_EQ(webhook_secrets.size(), 2000u);
}

TEST(ApiKeyTest, RecordHoldsOnlyTheHash) {
  IssuedKey issued = Issue();
  const store::ApiKey& r = issued.record;
  EXPECT_EQ(r.key_hash, HashKey(issued.key));
  EXPECT_THAT(r.key_hash, MatchesRegex("[0-9a-f]{64}"));
  const std::string secret = issued.key.substr(issued.key.size() - 43);
  for (const std::string& field :
       {r.key_id, r.key_hash, r.tenant, r.webhook_secret}) {
    EXPECT_FALSE(absl::StrContains(field, secret)) << field;
    EXPECT_FALSE(absl::StrContains(field, issued.key)) << field;
  }
}

TEST(ApiKeyTest, HashIsSha256Hex) {
  // FIPS 180-2 test vector.
  EXPECT_EQ(HashKey("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_NE(HashKey("abc"), HashKey("abd"));
}

TEST(ApiKeyTest, WebhookSecretIsStandardWebhooksFormat) {
  IssuedKey issued = Issue();
  const std::string& s = issued.record.webhook_secret;
  ASSERT_TRUE(absl::StartsWith(s, "whsec_")) << s;
  std::string raw;
  ASSERT_TRUE(absl::Base64Unescape(s.substr(6), &raw));
  EXPECT_EQ(raw.size(), 24u);
  absl::StatusOr<std::string> other = NewWebhookSecret();
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other, s);
}

TEST(ApiKeyTest, KeyIdOfRejectsAnythingElse) {
  const std::string good = Issue().key;
  ASSERT_FALSE(KeyIdOf(good).empty());
  EXPECT_EQ(KeyIdOf(""), "");
  EXPECT_EQ(KeyIdOf("vgk_"), "");
  EXPECT_EQ(KeyIdOf("xgk_" + good.substr(4)), "");          // wrong tag
  EXPECT_EQ(KeyIdOf(good.substr(0, good.size() - 1)), "");  // short
  EXPECT_EQ(KeyIdOf(good + "A"), "");                       // long
  std::string bad_char = good;
  bad_char[good.size() - 5] = '+';  // not base64url
  EXPECT_EQ(KeyIdOf(bad_char), "");
  std::string bad_id = good;
  bad_id[8] = '-';  // key_id characters are base62 only
  EXPECT_EQ(KeyIdOf(bad_id), "");
  std::string no_sep = good;
  no_sep[22] = 'A';  // the '_' between key_id and secret
  EXPECT_EQ(KeyIdOf(no_sep), "");
}

TEST(ApiKeyTest, TenantNames) {
  for (const char* ok : {"a", "acme", "team-7", "ml_ops", "z0"}) {
    EXPECT_TRUE(IsValidTenantName(ok)) << ok;
  }
  EXPECT_TRUE(IsValidTenantName(std::string(63, 'a')));
  EXPECT_FALSE(IsValidTenantName(std::string(64, 'a')));
  for (const char* bad :
       {"", "Acme", "7up", "-x", "_x", "a b", "a.b", "a/b", "ä", "a\n"}) {
    EXPECT_FALSE(IsValidTenantName(bad)) << bad;
  }
}

TEST(ApiKeyTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
}

}  // namespace
}  // namespace videogen::auth
