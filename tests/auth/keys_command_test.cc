#include "server/auth/keys_command.h"

#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/auth/api_key.h"
#include "server/auth/authenticator.h"
#include "tests/auth/fake_key_store.h"

namespace videogen::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using Json = nlohmann::json;

struct Result {
  int code;
  std::string out;
  std::string err;
};

class KeysCommandTest : public ::testing::Test {
 protected:
  Result Run(std::vector<std::string> args) {
    std::ostringstream out, err;
    int code = RunKeysCommand(args, &store_, &clock_, out, err);
    return {code, out.str(), err.str()};
  }
  // Runs `keys create ARGS...`, expects success, returns the JSON object.
  Json Create(std::vector<std::string> args) {
    args.insert(args.begin(), "create");
    Result r = Run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_THAT(r.err, IsEmpty());
    std::vector<std::string> lines =
        absl::StrSplit(r.out, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << "one JSON object: " << r.out;
    return Json::parse(r.out);
  }
  std::vector<Json> List() {
    Result r = Run({"list"});
    EXPECT_EQ(r.code, 0) << r.err;
    std::vector<Json> rows;
    for (absl::string_view line :
         absl::StrSplit(r.out, '\n', absl::SkipEmpty())) {
      rows.push_back(Json::parse(line));
    }
    return rows;
  }

  testing::FakeKeyStore store_;
  core::FakeClock clock_;
};

TEST_F(KeysCommandTest, CreatePrintsTheKeyOnceAndStoresOnlyItsHash) {
  Json j = Create({"--tenant=acme"});
  const std::string key = j.at("key");
  EXPECT_EQ(j.at("key_id"), KeyIdOf(key));
  EXPECT_TRUE(
      absl::StartsWith(j.at("webhook_secret").get<std::string>(), "whsec_"));
  EXPECT_EQ(j.at("tenant"), "acme");
  EXPECT_EQ(j.at("admin"), false);
  EXPECT_EQ(j.at("max_concurrent"), 0);
  EXPECT_EQ(j.at("creates_per_minute"), 0);
  EXPECT_EQ(j.at("video_seconds_budget"), 0);
  EXPECT_EQ(j.at("budget_period"), "720h");
  EXPECT_EQ(j.at("created"), "2023-11-14T22:13:20Z");
  EXPECT_FALSE(j.contains("key_hash"));

  std::vector<store::ApiKey> stored = store_.keys();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].key_hash, HashKey(key));
  EXPECT_EQ(stored[0].webhook_secret, j.at("webhook_secret"));
  EXPECT_NE(stored[0].key_hash, key);

  // The printed key is the one that works.
  auto auth = NewKeyAuthenticator(&store_, &clock_);
  absl::StatusOr<Principal> p = auth->Authenticate("Bearer " + key);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant, "acme");
}

TEST_F(KeysCommandTest, CreateWithAdminAndLimits) {
  Json j = Create({"--tenant=ml-ops", "--admin", "--max_concurrent=5",
                   "--creates_per_minute", "30", "--video_seconds_budget=20",
                   "--budget_period=24h"});
  EXPECT_EQ(j.at("admin"), true);
  EXPECT_EQ(j.at("max_concurrent"), 5);
  EXPECT_EQ(j.at("creates_per_minute"), 30);
  EXPECT_EQ(j.at("video_seconds_budget"), 20);
  EXPECT_EQ(j.at("budget_period"), "24h");
  std::vector<store::ApiKey> stored = store_.keys();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_TRUE(stored[0].admin);
  EXPECT_EQ(stored[0].limits.max_concurrent, 5);
  EXPECT_EQ(stored[0].limits.creates_per_minute, 30);
  EXPECT_EQ(stored[0].limits.video_seconds_budget, 20);
  EXPECT_EQ(stored[0].limits.budget_period, absl::Hours(24));
}

TEST_F(KeysCommandTest, ListShowsEveryKeyButNoSecret) {
  Json a = Create({"--tenant=a"});
  Json b = Create({"--tenant=b", "--max_concurrent=3"});
  Result r = Run({"list"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const Json& created : {a, b}) {
    const std::string key = created.at("key");
    EXPECT_THAT(r.out, Not(HasSubstr(key)));
    EXPECT_THAT(r.out, Not(HasSubstr(HashKey(key))));
    EXPECT_THAT(
        r.out, Not(HasSubstr(created.at("webhook_secret").get<std::string>())));
  }
  std::vector<Json> rows = List();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("key_id"), a.at("key_id"));
  EXPECT_EQ(rows[0].at("tenant"), "a");
  EXPECT_EQ(rows[1].at("tenant"), "b");
  EXPECT_EQ(rows[1].at("max_concurrent"), 3);
  for (const Json& row : rows) {
    EXPECT_FALSE(row.contains("key"));
    EXPECT_FALSE(row.contains("key_hash"));
    EXPECT_FALSE(row.contains("webhook_secret"));
    EXPECT_TRUE(row.at("revoked").is_null());
  }
}

TEST_F(KeysCommandTest, ListOfNoKeysPrintsNothing) {
  Result r = Run({"list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, IsEmpty());
}

TEST_F(KeysCommandTest, RevokeStopsTheKey) {
  Json j = Create({"--tenant=acme"});
  const std::string key_id = j.at("key_id");
  clock_.Advance(absl::Hours(1));
  Result r = Run({"revoke", key_id});
  ASSERT_EQ(r.code, 0) << r.err;
  Json revoked = Json::parse(r.out);
  EXPECT_EQ(revoked.at("key_id"), key_id);
  EXPECT_EQ(revoked.at("revoked"), "2023-11-14T23:13:20Z");
  EXPECT_EQ(List().at(0).at("revoked"), "2023-11-14T23:13:20Z");
  auto auth = NewKeyAuthenticator(&store_, &clock_);
  absl::StatusOr<Principal> p =
      auth->Authenticate("Bearer " + j.at("key").get<std::string>());
  EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
}

TEST_F(KeysCommandTest, RevokeUnknownKeyIsAStoreError) {
  Result r = Run({"revoke", "k_0000000000000000"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("no key k_0000000000000000"));
  EXPECT_THAT(r.out, IsEmpty());
}

TEST_F(KeysCommandTest, RevokeGivenAWholeKeyNeverEchoesIt) {
  Json j = Create({"--tenant=acme"});
  const std::string key = j.at("key");
  Result r = Run({"revoke", key});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, Not(HasSubstr(key)));
  EXPECT_THAT(r.err, HasSubstr(j.at("key_id").get<std::string>()));
  EXPECT_FALSE(store_.keys()[0].revoked.has_value());
}

TEST_F(KeysCommandTest, UsageErrorsChangeNothing) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"create"},
      {"create", "--tenant"},
      {"create", "--tenant="},
      {"create", "--tenant=Acme"},
      {"create", "--tenant=7up"},
      {"create", "--tenant=" + std::string(64, 'a')},
      {"create", "--tenant=a b"},
      {"create", "--tenant=acme", "--max_concurrent=-1"},
      {"create", "--tenant=acme", "--max_concurrent=five"},
      {"create", "--tenant=acme", "--creates_per_minute=1.5"},
      {"create", "--tenant=acme",
       "--video_seconds_budget=99999999999999999999999"},
      {"create", "--tenant=acme", "--budget_period=24h"},
      {"create", "--tenant=acme", "--video_seconds_budget=20",
       "--budget_period=soon"},
      {"create", "--tenant=acme", "--video_seconds_budget=20",
       "--budget_period=0s"},
      {"create", "--tenant=acme", "--admin=maybe"},
      {"create", "--tenant=acme", "--colour=blue"},
      {"create", "--tenant=acme", "--tenant=other"},
      {"create", "--tenant=acme", "extra"},
      {"list", "extra"},
      {"revoke"},
      {"revoke", "k_1", "k_2"},
      {"revoke", "not-a-key-id"},
  };
  for (const auto& args : cases) {
    Result r = Run(args);
    EXPECT_EQ(r.code, 2) << absl::StrJoin(args, " ");
    EXPECT_THAT(r.out, IsEmpty()) << absl::StrJoin(args, " ");
    EXPECT_THAT(r.err, Not(IsEmpty())) << absl::StrJoin(args, " ");
  }
  EXPECT_THAT(store_.keys(), IsEmpty());
}

TEST_F(KeysCommandTest, UsageErrorsSayWhatIsWrong) {
  EXPECT_THAT(Run({"create"}).err, HasSubstr("--tenant=NAME"));
  EXPECT_THAT(Run({"create", "--tenant=Acme"}).err,
              HasSubstr("invalid tenant name \"Acme\""));
  EXPECT_THAT(Run({"create", "--tenant=a", "--max_concurrent=-1"}).err,
              HasSubstr("--max_concurrent must be a whole number >= 0"));
  EXPECT_THAT(Run({"create", "--tenant=a", "--budget_period=1h"}).err,
              HasSubstr("--budget_period needs --video_seconds_budget"));
  EXPECT_THAT(Run({"create", "--tenant=a", "--colour=blue"}).err,
              HasSubstr("unknown flag --colour"));
  EXPECT_THAT(Run({"frobnicate"}).err, HasSubstr("unknown command"));
}

TEST_F(KeysCommandTest, PastedSecretsAreNotEchoedInErrors) {
  Json j = Create({"--tenant=acme"});
  const std::string key = j.at("key");
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{key},
                                             {"create", "--tenant=" + key},
                                             {"create", "--tenant=acme", key},
                                             {"list", key}}) {
    Result r = Run(args);
    EXPECT_EQ(r.code, 2);
    EXPECT_THAT(r.err, Not(HasSubstr(key)));
  }
}

TEST_F(KeysCommandTest, StoreErrorsExitOne) {
  store_.set_fail(true);
  Result create = Run({"create", "--tenant=acme"});
  EXPECT_EQ(create.code, 1);
  EXPECT_THAT(create.out, IsEmpty()) << "no key printed that was not stored";
  EXPECT_THAT(create.err, HasSubstr("database is down"));
  EXPECT_EQ(Run({"list"}).code, 1);
  EXPECT_EQ(Run({"revoke", "k_0000000000000000"}).code, 1);
}

TEST_F(KeysCommandTest, HelpGoesToStdout) {
  Result r = Run({"help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("keys create --tenant=NAME"));
  EXPECT_THAT(r.err, IsEmpty());
}

}  // namespace
}  // namespace videogen::auth
