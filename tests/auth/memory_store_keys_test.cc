// The auth layer against the real in-memory store (the other tests use a
// keys-only fake so they never wait on store changes).
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/auth/api_key.h"
#include "server/auth/authenticator.h"
#include "server/auth/keys_command.h"
#include "server/store/memory_store.h"

namespace videogen::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;

class MemoryStoreKeysTest : public ::testing::Test {
 protected:
  int Run(std::vector<std::string> args, std::string* out) {
    std::ostringstream o, e;
    int code = RunKeysCommand(args, &store_, &clock_, o, e);
    *out = o.str();
    EXPECT_TRUE(code == 0 || !e.str().empty());
    return code;
  }

  store::MemoryStore store_;
  core::FakeClock clock_;
};

TEST_F(MemoryStoreKeysTest, CreateAuthenticateListRevoke) {
  std::string out;
  ASSERT_EQ(Run({"create", "--tenant=acme", "--max_concurrent=5"}, &out), 0);
  const Json created = Json::parse(out);
  const std::string key = created.at("key");
  const std::string key_id = created.at("key_id");

  // Stored as a hash only.
  absl::StatusOr<std::vector<store::ApiKey>> keys = store_.ListKeys();
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 1u);
  const store::ApiKey& stored = (*keys)[0];
  EXPECT_EQ(stored.key_id, key_id);
  EXPECT_EQ(stored.key_hash, HashKey(key));
  EXPECT_EQ(stored.limits.max_concurrent, 5);
  for (const std::string& field :
       {stored.key_id, stored.key_hash, stored.tenant}) {
    EXPECT_THAT(field, Not(HasSubstr(key.substr(key.size() - 43))));
  }

  auto auth = NewKeyAuthenticator(&store_, &clock_, absl::Seconds(5));
  absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + key);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant, "acme");
  EXPECT_EQ(p->key_id, key_id);
  EXPECT_EQ(p->limits.max_concurrent, 5);
  EXPECT_EQ(p->webhook_secret, created.at("webhook_secret"));

  ASSERT_EQ(Run({"list"}, &out), 0);
  EXPECT_THAT(out, Not(HasSubstr(key)));
  EXPECT_THAT(out, Not(HasSubstr(HashKey(key))));
  EXPECT_EQ(Json::parse(out).at("key_id"), key_id);

  clock_.Advance(absl::Seconds(1));
  ASSERT_EQ(Run({"revoke", key_id}, &out), 0);
  clock_.Advance(absl::Seconds(5));
  p = auth->Authenticate("Bearer " + key);
  EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
  EXPECT_THAT(p.status().message(), HasSubstr("was revoked"));

  ASSERT_EQ(Run({"revoke", "k_0000000000000000"}, &out), 1);
}

TEST_F(MemoryStoreKeysTest, UnknownKeyIsUnauthenticated) {
  std::string out;
  ASSERT_EQ(Run({"create", "--tenant=acme"}, &out), 0);
  auto auth = NewKeyAuthenticator(&store_, &clock_);
  absl::StatusOr<IssuedKey> other =
      IssueKey("acme", false, store::Admission{}, clock_.Now());
  ASSERT_TRUE(other.ok());
  absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + other->key);
  EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
}

}  // namespace
}  // namespace videogen::auth
