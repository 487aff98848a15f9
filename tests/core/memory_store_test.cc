// MemoryStore specifics and its change feed (ChangePublisher). The full Store
// contract runs in tests/store (the conformance suite, instantiated for
// MemoryStore and SqliteStore); these cases cover what only the in-process
// feed promises: delivery outside the store lock, re-entrant listeners, and
// SetListener waiting for a running call.
#include "server/store/memory_store.h"

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
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

Record Make(std::string id, std::string tenant = "",
            std::string request_id = "") {
  Record r;
  r.generation.set_id(std::move(id));
  r.generation.set_tenant(std::move(tenant));
  r.generation.set_state(v1::Generation::STATE_QUEUED);
  r.generation.set_revision(1);
  r.generation.mutable_request()->set_request_id(std::move(request_id));
  r.generation.mutable_request()->set_duration_seconds(5);
  *r.generation.mutable_create_time() = Ts(kT0);
  *r.generation.mutable_update_time() = Ts(kT0);
  r.deadline = kT0 + absl::Minutes(30);
  return r;
}

// The next version of `r` with a new revision.
Record Next(Record r) {
  ++r.version;
  r.generation.set_revision(r.generation.revision() + 1);
  return r;
}

TEST(MemoryStoreTest, InsertGetUpdateDelete) {
  MemoryStore s;
  EXPECT_EQ(s.Insert(Record{}, Admission{}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(s.Insert(Make("a", "t", "r1"), Admission{}, nullptr).ok());
  EXPECT_EQ(s.size(), 1u);
  Record a = *s.Get("a").value();
  EXPECT_EQ(a.version, 1);
  ASSERT_TRUE(s.Update(Next(a), {}).ok());
  EXPECT_EQ(s.Update(Next(a), {}).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(s.Get("a").value()->generation.revision(), 2);
  EXPECT_EQ(s.GetByRequestId("t", "r1").value()->generation.id(), "a");
  EXPECT_EQ(s.Delete("a", 1).code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(s.Delete("a", 2).ok());
  EXPECT_EQ(s.size(), 0u);
  EXPECT_FALSE(s.GetByRequestId("t", "r1").value().has_value());
}

// The listener runs outside the store lock: it may read and write the store,
// even Update another generation, whose change then follows in order.
TEST(MemoryStoreTest, ListenerMayUpdateTheStore) {
  MemoryStore s;
  ASSERT_TRUE(s.Insert(Make("other"), Admission{}, nullptr).ok());
  absl::Mutex mu;
  std::vector<std::string> seen;
  s.feed()->SetListener([&](const Change& c) {
    {
      absl::MutexLock lock(&mu);
      seen.push_back(absl::StrCat(c.id, "@", c.revision));
    }
    if (c.id == "a" && c.revision == 1) {
      Record other = *s.Get("other").value();
      EXPECT_TRUE(s.Update(Next(other), {}).ok());
    }
  });
  ASSERT_TRUE(s.Insert(Make("a"), Admission{}, nullptr).ok());
  // Delivered by the inserting thread before Insert returned: the nested
  // change was queued and delivered after the outer call, not inside it.
  absl::MutexLock lock(&mu);
  EXPECT_THAT(seen, ElementsAre("a@1", "other@2"));
}

TEST(MemoryStoreTest, ListenerMayReplaceItself) {
  MemoryStore s;
  std::atomic<int> first{0}, second{0};
  s.feed()->SetListener([&](const Change&) {
    ++first;
    s.feed()->SetListener([&](const Change&) { ++second; });
  });
  ASSERT_TRUE(s.Insert(Make("a"), Admission{}, nullptr).ok());
  ASSERT_TRUE(s.Insert(Make("b"), Admission{}, nullptr).ok());
  EXPECT_EQ(first.load(), 1);
  EXPECT_EQ(second.load(), 1);
  s.feed()->SetListener(nullptr);
  ASSERT_TRUE(s.Insert(Make("c"), Admission{}, nullptr).ok());
  EXPECT_EQ(second.load(), 1) << "nullptr stops delivery";
}

// While one thread delivers, writers on other threads are not blocked on
// the listener: they queue their change and return. The blocked delivery
// then hands everything over in commit order.
TEST(MemoryStoreTest, WritersDoNotWaitForASlowListener) {
  MemoryStore s;
  absl::Notification in_listener, release;
  absl::Mutex mu;
  std::vector<std::string> seen;
  s.feed()->SetListener([&](const Change& c) {
    if (c.id == "slow") {
      in_listener.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(10));
    }
    absl::MutexLock lock(&mu);
    seen.push_back(c.id);
  });
  std::thread slow(
      [&] { EXPECT_TRUE(s.Insert(Make("slow"), Admission{}, nullptr).ok()); });
  ASSERT_TRUE(in_listener.WaitForNotificationWithTimeout(absl::Seconds(10)));
  for (int i = 0; i < 5; ++i) {  // returns although the listener is stuck
    ASSERT_TRUE(
        s.Insert(Make(absl::StrCat("fast", i)), Admission{}, nullptr).ok());
  }
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(seen.empty());
  }
  release.Notify();
  slow.join();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(seen,
              ElementsAre("slow", "fast0", "fast1", "fast2", "fast3", "fast4"));
  s.feed()->SetListener(nullptr);
}

TEST(MemoryStoreTest, ChangesCarryTheMergedGeneration) {
  MemoryStore s;
  ASSERT_TRUE(s.Insert(Make("a", "acme"), Admission{}, nullptr).ok());
  v1::WebhookStatus ws;
  ws.set_attempts(2);
  ASSERT_TRUE(s.SetWebhookStatus("a", ws).ok());
  std::vector<Change> changes;
  s.feed()->SetListener([&](const Change& c) { changes.push_back(c); });
  Record a = Next(*s.Get("a").value());
  a.generation.clear_webhook_status();
  a.generation.set_upstream_status("generating");
  ASSERT_TRUE(s.Update(a, {}).ok());
  s.feed()->SetListener(nullptr);
  ASSERT_EQ(changes.size(), 1u);
  ASSERT_NE(changes[0].generation, nullptr);
  EXPECT_EQ(changes[0].tenant, "acme");
  EXPECT_EQ(changes[0].generation->upstream_status(), "generating");
  EXPECT_EQ(changes[0].generation->webhook_status().attempts(), 2);
}

TEST(MemoryStoreTest, ConcurrentWritersAndReaders) {
  MemoryStore s;
  std::atomic<int> announced{0};
  s.feed()->SetListener([&](const Change&) { ++announced; });
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&s, t] {
      for (int i = 0; i < 100; ++i) {
        const std::string id = absl::StrCat(t, "-", i);
        EXPECT_TRUE(
            s.Insert(Make(id, "t", "r" + id), Admission{}, nullptr).ok());
        if (i % 10 == 0) {
          EXPECT_TRUE(s.List(ListQuery{}).ok());
        }
        EXPECT_TRUE(s.GetByRequestId("t", "r" + id)->has_value());
      }
    });
  }
  for (auto& th : threads) th.join();
  s.feed()->SetListener(nullptr);
  EXPECT_EQ(s.size(), 800u);
  EXPECT_EQ(announced.load(), 800);
}

}  // namespace
}  // namespace videogen::store
