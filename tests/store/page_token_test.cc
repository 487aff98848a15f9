// Page tokens (server/api/page_token.h) against real stores: the token keeps
// the cursor exactly, and is bound to the filter and the tenant scope.
#include "server/api/page_token.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/memory_store.h"
#include "server/store/sqlite_store.h"

namespace videogen::api {
namespace {

using ::testing::ElementsAreArray;

const absl::Time kBase = absl::FromUnixSeconds(1'700'000'000);

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t ns = absl::ToUnixNanos(t);
  ts.set_seconds(ns / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return ts;
}

TEST(PageToken, RoundTripsTheCursorToTheNanosecond) {
  const std::string fp = FilterFingerprint(store::ListQuery{});
  for (absl::Time t :
       {kBase + absl::Nanoseconds(123456789), kBase,
        absl::UnixEpoch() - absl::Nanoseconds(1),
        absl::FromUnixMicros(std::numeric_limits<int64_t>::max()),
        absl::FromUnixMicros(std::numeric_limits<int64_t>::min())}) {
    const store::Cursor cursor{t, "gen_1|with:odd/chars"};
    absl::StatusOr<store::Cursor> back =
        DecodePageToken(EncodePageToken(cursor, fp), fp);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->create_time, t);
    EXPECT_EQ(back->id, cursor.id);
  }
}

TEST(PageToken, IsBoundToTheTenantScope) {
  store::ListQuery a;
  a.tenant = "a";
  store::ListQuery b;
  b.tenant = "b";
  store::ListQuery all;  // admin / --auth=none
  const std::string token =
      EncodePageToken({kBase, "gen_1"}, FilterFingerprint(a));
  EXPECT_TRUE(DecodePageToken(token, FilterFingerprint(a)).ok());
  for (const store::ListQuery& other : {b, all}) {
    absl::StatusOr<store::Cursor> cursor =
        DecodePageToken(token, FilterFingerprint(other));
    EXPECT_EQ(cursor.status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Tenant names cannot be spliced into label text to collide.
  store::ListQuery tricky;
  tricky.tenant = "a;l1:x=1:y";
  store::ListQuery labelled = a;
  labelled.labels = {{"x", "y"}};
  EXPECT_NE(FilterFingerprint(tricky), FilterFingerprint(labelled));
}

TEST(PageToken, IsBoundToTheFilterButNotToItsOrder) {
  store::ListQuery q;
  q.states = {v1::Generation::STATE_QUEUED, v1::Generation::STATE_FAILED};
  q.labels = {{"team", "x"}};
  store::ListQuery reordered = q;
  reordered.states = {v1::Generation::STATE_FAILED,
                      v1::Generation::STATE_QUEUED,
                      v1::Generation::STATE_FAILED};
  reordered.page_size = 7;
  EXPECT_EQ(FilterFingerprint(q), FilterFingerprint(reordered));
  store::ListQuery other = q;
  other.labels = {{"team", "y"}};
  const std::string token =
      EncodePageToken({kBase, "gen_1"}, FilterFingerprint(q));
  EXPECT_EQ(DecodePageToken(token, FilterFingerprint(other)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PageToken, RefusesGarbageAndOldTokens) {
  const std::string fp = FilterFingerprint(store::ListQuery{});
  std::string v1_token;  // the microsecond format of the first release
  absl::WebSafeBase64Escape(absl::StrCat("v1|1700000000000000|", fp, "|gen_1"),
                            &v1_token);
  std::string bad_nanos;
  absl::WebSafeBase64Escape(absl::StrCat("v2|1700000000|1000000000|", fp, "|g"),
                            &bad_nanos);
  std::string no_id;
  absl::WebSafeBase64Escape(absl::StrCat("v2|1700000000|0|", fp, "|"), &no_id);
  for (const std::string& token : {std::string("not base64 !"), std::string(""),
                                   v1_token, bad_nanos, no_id}) {
    absl::StatusOr<store::Cursor> cursor = DecodePageToken(token, fp);
    EXPECT_EQ(cursor.status().code(), absl::StatusCode::kInvalidArgument)
        << token;
    if (!cursor.ok()) {
      EXPECT_THAT(std::string(cursor.status().message()),
                  ::testing::HasSubstr("page_token is invalid"));
    }
  }
}

// Regression: rows created within one microsecond, apart only in their
// nanoseconds. The microsecond token rounded the cursor down, so paging with
// page_size=1 skipped every row after the first of such a group.
class PagingThroughTokens : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      char tmpl[] = "/tmp/page_token_test.XXXXXX";
      ASSERT_NE(::mkdtemp(tmpl), nullptr);
      dir_ = tmpl;
      absl::StatusOr<std::unique_ptr<store::SqliteStore>> s =
          store::SqliteStore::Open(dir_);
      ASSERT_TRUE(s.ok()) << s.status();
      store_ = std::move(*s);
    } else {
      store_ = std::make_unique<store::MemoryStore>();
    }
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  std::string dir_;
  std::unique_ptr<store::Store> store_;
};

INSTANTIATE_TEST_SUITE_P(MemoryAndSqlite, PagingThroughTokens,
                         ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sqlite" : "Memory";
                         });

TEST_P(PagingThroughTokens, EveryRowExactlyOnceWithinOneMicrosecond) {
  std::vector<std::string> newest_first;
  // Inserted oldest first: n0 at +100 ns ... n5 at +600 ns, all within the
  // same microsecond; n6 and n7 share n5's nanosecond (the id breaks ties).
  const absl::Time micro = kBase + absl::Microseconds(42);
  std::vector<std::pair<std::string, absl::Time>> rows;
  for (int i = 0; i < 6; ++i) {
    rows.push_back(
        {absl::StrCat("n", i), micro + absl::Nanoseconds(100 * (i + 1))});
  }
  rows.push_back({"n6", micro + absl::Nanoseconds(600)});
  rows.push_back({"n7", micro + absl::Nanoseconds(600)});
  rows.push_back({"older", micro - absl::Nanoseconds(1)});
  for (const auto& [id, t] : rows) {
    store::Record r;
    r.generation.set_id(id);
    r.generation.set_tenant("acme");
    r.generation.set_revision(1);
    r.generation.set_state(v1::Generation::STATE_QUEUED);
    *r.generation.mutable_create_time() = Ts(t);
    *r.generation.mutable_update_time() = Ts(t);
    ASSERT_TRUE(store_->Insert(r, store::Admission{}, nullptr).ok());
  }
  const std::vector<std::string> want = {"n7", "n6", "n5", "n4",   "n3",
                                         "n2", "n1", "n0", "older"};

  store::ListQuery q;
  q.tenant = "acme";
  q.page_size = 1;
  std::vector<std::string> seen;
  std::string token;
  for (int pages = 0; pages < 20; ++pages) {
    store::ListQuery page_query = q;
    if (!token.empty()) {
      absl::StatusOr<store::Cursor> cursor =
          DecodePageToken(token, FilterFingerprint(q));
      ASSERT_TRUE(cursor.ok()) << cursor.status();
      page_query.after = *cursor;
    }
    absl::StatusOr<store::ListPage> page = store_->List(page_query);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& g : page->generations) seen.push_back(g.id());
    if (!page->next) break;
    token = EncodePageToken(*page->next, FilterFingerprint(q));
  }
  EXPECT_THAT(seen, ElementsAreArray(want));
}

}  // namespace
}  // namespace videogen::api
