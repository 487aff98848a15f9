#include "server/store/memory_store.h"

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::store {
namespace {

using ::testing::ElementsAre;

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  return ts;
}

Record Make(std::string id, absl::Time created,
            v1::Generation::State state = v1::Generation::STATE_QUEUED,
            std::string request_id = "") {
  Record r;
  r.generation.set_id(std::move(id));
  r.generation.set_state(state);
  r.generation.set_done(state == v1::Generation::STATE_COMPLETED ||
                        state == v1::Generation::STATE_FAILED ||
                        state == v1::Generation::STATE_CANCELLED);
  r.generation.mutable_request()->set_request_id(std::move(request_id));
  *r.generation.mutable_create_time() = Ts(created);
  *r.generation.mutable_update_time() = Ts(created);
  r.deadline = created + absl::Minutes(30);
  return r;
}

std::vector<std::string> Ids(const ListPage& page) {
  std::vector<std::string> ids;
  for (const auto& g : page.generations) ids.push_back(g.id());
  return ids;
}

TEST(MemoryStoreTest, PutGetReplaceDelete) {
  MemoryStore s;
  auto missing = s.Get("a");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(s.Put(Make("a", kT0)).ok());
  Record r = Make("a", kT0);
  r.generation.set_revision(7);
  r.deadline = kT0 + absl::Minutes(1);
  ASSERT_TRUE(s.Put(r).ok());
  auto got = s.Get("a");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->generation.revision(), 7);
  EXPECT_EQ((*got)->deadline, kT0 + absl::Minutes(1));
  EXPECT_EQ(s.size(), 1u);
  ASSERT_TRUE(s.Delete("a").ok());
  ASSERT_TRUE(s.Delete("a").ok());  // missing is fine
  EXPECT_FALSE(s.Get("a")->has_value());
  EXPECT_TRUE(s.Put(Record{}).code() == absl::StatusCode::kInvalidArgument);
}

TEST(MemoryStoreTest, RequestIdIsUnique) {
  MemoryStore s;
  ASSERT_TRUE(s.Put(Make("a", kT0, v1::Generation::STATE_QUEUED, "r1")).ok());
  // Same record again is fine (an update).
  ASSERT_TRUE(s.Put(Make("a", kT0, v1::Generation::STATE_QUEUED, "r1")).ok());
  EXPECT_EQ(s.Put(Make("b", kT0, v1::Generation::STATE_QUEUED, "r1")).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(s.Get("b")->has_value());
  auto by = s.GetByRequestId("r1");
  ASSERT_TRUE(by.ok() && by->has_value());
  EXPECT_EQ((*by)->generation.id(), "a");
  // Empty request_ids never collide.
  ASSERT_TRUE(s.Put(Make("c", kT0)).ok());
  ASSERT_TRUE(s.Put(Make("d", kT0)).ok());
  EXPECT_FALSE(s.GetByRequestId("")->has_value());
  // Deleting frees the request_id.
  ASSERT_TRUE(s.Delete("a").ok());
  EXPECT_FALSE(s.GetByRequestId("r1")->has_value());
  EXPECT_TRUE(s.Put(Make("b", kT0, v1::Generation::STATE_QUEUED, "r1")).ok());
}

TEST(MemoryStoreTest, LoadActiveSkipsTerminal) {
  MemoryStore s;
  ASSERT_TRUE(s.Put(Make("q", kT0, v1::Generation::STATE_QUEUED)).ok());
  ASSERT_TRUE(s.Put(Make("g", kT0, v1::Generation::STATE_GENERATING)).ok());
  ASSERT_TRUE(s.Put(Make("c", kT0, v1::Generation::STATE_COMPLETED)).ok());
  ASSERT_TRUE(s.Put(Make("x", kT0, v1::Generation::STATE_CANCELLED)).ok());
  auto active = s.LoadActive();
  ASSERT_TRUE(active.ok());
  std::set<std::string> ids;
  for (const Record& r : *active) ids.insert(r.generation.id());
  EXPECT_EQ(ids, (std::set<std::string>{"g", "q"}));
}

TEST(MemoryStoreTest, ListIsNewestFirstWithIdTieBreak) {
  MemoryStore s;
  ASSERT_TRUE(s.Put(Make("a", kT0)).ok());
  ASSERT_TRUE(s.Put(Make("b", kT0 + absl::Seconds(2))).ok());
  ASSERT_TRUE(s.Put(Make("c", kT0 + absl::Seconds(1))).ok());
  ASSERT_TRUE(s.Put(Make("d", kT0 + absl::Seconds(1))).ok());
  ListQuery q;
  auto page = s.List(q);
  ASSERT_TRUE(page.ok());
  EXPECT_THAT(Ids(*page), ElementsAre("b", "d", "c", "a"));
  EXPECT_FALSE(page->next.has_value());
}

TEST(MemoryStoreTest, ListPagesWithCursorsWithoutGapsOrRepeats) {
  MemoryStore s;
  std::vector<std::string> expected;
  for (int i = 0; i < 23; ++i) {
    // Pairs share a create_time to exercise the id tie-break.
    const std::string id = "id" + std::to_string(100 + i);
    ASSERT_TRUE(s.Put(Make(id, kT0 + absl::Seconds(i / 2))).ok());
  }
  ListQuery q;
  q.page_size = 5;
  std::vector<std::string> seen;
  int pages = 0;
  while (true) {
    auto page = s.List(q);
    ASSERT_TRUE(page.ok());
    ++pages;
    for (const auto& id : Ids(*page)) seen.push_back(id);
    if (!page->next.has_value()) break;
    EXPECT_EQ(page->generations.size(), 5u);
    q.after = page->next;
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(pages, 5);
  ASSERT_EQ(seen.size(), 23u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 23u);
  EXPECT_EQ(seen.front(), "id122");
  EXPECT_EQ(seen.back(), "id100");
  // An exact multiple of the page size ends without an empty page.
  MemoryStore t;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(t.Put(Make("t" + std::to_string(i), kT0)).ok());
  }
  ListQuery two;
  two.page_size = 2;
  auto p1 = t.List(two);
  ASSERT_TRUE(p1.ok() && p1->next.has_value());
  two.after = p1->next;
  auto p2 = t.List(two);
  ASSERT_TRUE(p2.ok());
  EXPECT_THAT(Ids(*p2), ElementsAre("t1", "t0"));
  EXPECT_FALSE(p2->next.has_value());
}

TEST(MemoryStoreTest, ListFiltersByStatesAndLabels) {
  MemoryStore s;
  Record a = Make("a", kT0, v1::Generation::STATE_QUEUED);
  (*a.generation.mutable_labels())["team"] = "x";
  (*a.generation.mutable_labels())["env"] = "prod";
  Record b = Make("b", kT0, v1::Generation::STATE_COMPLETED);
  (*b.generation.mutable_labels())["team"] = "x";
  Record c = Make("c", kT0, v1::Generation::STATE_FAILED);
  (*c.generation.mutable_labels())["team"] = "y";
  for (const Record& r : {a, b, c}) ASSERT_TRUE(s.Put(r).ok());

  ListQuery q;
  q.labels["team"] = "x";
  EXPECT_THAT(Ids(*s.List(q)), ElementsAre("b", "a"));
  q.labels["env"] = "prod";
  EXPECT_THAT(Ids(*s.List(q)), ElementsAre("a"));
  ListQuery st;
  st.states = {v1::Generation::STATE_COMPLETED, v1::Generation::STATE_FAILED};
  EXPECT_THAT(Ids(*s.List(st)), ElementsAre("c", "b"));
  st.labels["team"] = "y";
  EXPECT_THAT(Ids(*s.List(st)), ElementsAre("c"));
  ListQuery bad;
  bad.page_size = 0;
  EXPECT_EQ(s.List(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemoryStoreTest, PurgeTerminalBefore) {
  MemoryStore s;
  ASSERT_TRUE(
      s.Put(Make("old-done", kT0, v1::Generation::STATE_COMPLETED, "r1")).ok());
  ASSERT_TRUE(s.Put(Make("old-active", kT0)).ok());
  ASSERT_TRUE(s.Put(Make("new-done", kT0 + absl::Hours(2),
                         v1::Generation::STATE_FAILED))
                  .ok());
  auto purged = s.PurgeTerminalBefore(kT0 + absl::Hours(1));
  ASSERT_TRUE(purged.ok());
  EXPECT_EQ(*purged, 1);
  EXPECT_FALSE(s.Get("old-done")->has_value());
  EXPECT_TRUE(s.Get("old-active")->has_value());
  EXPECT_TRUE(s.Get("new-done")->has_value());
  EXPECT_FALSE(s.GetByRequestId("r1")->has_value());
}

TEST(MemoryStoreTest, ConcurrentWritersAndReaders) {
  MemoryStore s;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&s, t] {
      for (int i = 0; i < 100; ++i) {
        const std::string id = std::to_string(t) + "-" + std::to_string(i);
        EXPECT_TRUE(s.Put(Make(id, kT0 + absl::Seconds(i),
                               v1::Generation::STATE_QUEUED, "r" + id))
                        .ok());
        if (i % 10 == 0) {
          EXPECT_TRUE(s.List(ListQuery{}).ok());
        }
        EXPECT_TRUE(s.GetByRequestId("r" + id)->has_value());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(s.size(), 800u);
}

}  // namespace
}  // namespace videogen::store
