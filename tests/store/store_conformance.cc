// The cases of the store conformance suite; see store_conformance.h.
#include "tests/store/store_conformance.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace videogen::store::conformance {

void StoreConformanceTest::SetUp() {
  store_ = GetParam()();
  if (store_ == nullptr) GTEST_SKIP() << "the store factory made no store";
}

void StoreConformanceTest::TearDown() {
  if (store_ != nullptr) store_->feed()->SetListener(nullptr);
  store_.reset();
}

namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;
using State = v1::Generation::State;
using StatusCode = absl::StatusCode;

const absl::Time kBase = absl::FromUnixSeconds(1'700'000'000);

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t ns = absl::ToUnixNanos(t);
  ts.set_seconds(ns / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return ts;
}

absl::Time FromTs(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

bool Terminal(State s) {
  return s == v1::Generation::STATE_COMPLETED ||
         s == v1::Generation::STATE_FAILED ||
         s == v1::Generation::STATE_CANCELLED;
}

struct Spec {
  std::string id;
  std::string tenant;
  absl::Time created = kBase;
  State state = v1::Generation::STATE_QUEUED;
  std::string request_id;
  std::map<std::string, std::string> labels;
  int duration = 5;
  int64_t revision = 1;
};

Record Make(const Spec& spec) {
  Record r;
  v1::Generation& g = r.generation;
  g.set_id(spec.id);
  g.set_tenant(spec.tenant);
  g.set_state(spec.state);
  g.set_revision(spec.revision);
  g.set_done(Terminal(spec.state));
  g.mutable_request()->set_request_id(spec.request_id);
  g.mutable_request()->set_prompt("a red fox running through snow");
  g.mutable_request()->set_duration_seconds(spec.duration);
  *g.mutable_create_time() = Ts(spec.created);
  *g.mutable_update_time() = Ts(spec.created + absl::Seconds(1));
  for (const auto& [k, v] : spec.labels) {
    (*g.mutable_labels())[k] = v;
    (*g.mutable_request()->mutable_labels())[k] = v;
  }
  r.deadline = spec.created + absl::Minutes(30);
  r.version = 1;
  return r;
}

Record Make(const std::string& id, absl::Time created = kBase,
            State state = v1::Generation::STATE_QUEUED) {
  return Make(Spec{id, "", created, state});
}

::testing::AssertionResult Same(const v1::Generation& a,
                                const v1::Generation& b) {
  std::string diff;
  google::protobuf::util::MessageDifferencer d;
  d.ReportDifferencesToString(&diff);
  if (d.Compare(a, b)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << diff;
}

std::vector<std::string> Ids(const std::vector<v1::Generation>& gs) {
  std::vector<std::string> ids;
  for (const auto& g : gs) ids.push_back(g.id());
  return ids;
}

std::vector<std::string> Ids(const std::vector<Record>& rs) {
  std::vector<std::string> ids;
  for (const auto& r : rs) ids.push_back(r.generation.id());
  return ids;
}

// Collects what the feed announces. The listener also reads the store back
// (store.h allows it), to check that a change is announced after commit.
class FeedRecorder {
 public:
  explicit FeedRecorder(Store* store) : store_(store) {
    store_->feed()->SetListener([this](const Change& c) { OnChange(c); });
  }
  ~FeedRecorder() { store_->feed()->SetListener(nullptr); }

  // Waits (up to 10 s) until a change with `revision` of `id` arrived.
  bool WaitFor(const std::string& id, int64_t revision) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    absl::MutexLock lock(&mu_);
    for (bool timed_out = false;;) {
      for (const Change& c : changes_) {
        if (c.id == id && c.revision >= revision) return true;
      }
      if (timed_out) return false;
      timed_out = arrived_.WaitWithDeadline(&mu_, deadline);
    }
  }

  // The revisions announced for `id`, in arrival order.
  std::vector<int64_t> Revisions(const std::string& id) {
    absl::MutexLock lock(&mu_);
    std::vector<int64_t> out;
    for (const Change& c : changes_) {
      if (c.id == id) out.push_back(c.revision);
    }
    return out;
  }

  std::vector<Change> Changes() {
    absl::MutexLock lock(&mu_);
    return changes_;
  }

  // Changes whose revision the listener could not read back from the store.
  std::vector<std::string> NotYetCommitted() {
    absl::MutexLock lock(&mu_);
    return not_committed_;
  }

 private:
  void OnChange(const Change& c) {
    absl::StatusOr<std::optional<Record>> now = store_->Get(c.id);
    const bool committed = now.ok() && now->has_value() &&
                           (*now)->generation.revision() >= c.revision;
    absl::MutexLock lock(&mu_);
    changes_.push_back(c);
    arrived_.SignalAll();
    if (!committed) {
      not_committed_.push_back(absl::StrCat(c.id, "@", c.revision));
    }
  }

  Store* const store_;
  absl::Mutex mu_;
  absl::CondVar arrived_;
  std::vector<Change> changes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> not_committed_ ABSL_GUARDED_BY(mu_);
};

// Revisions with repeats removed (a shared store's feed may repeat one).
std::vector<int64_t> Distinct(std::vector<int64_t> revs) {
  revs.erase(std::unique(revs.begin(), revs.end()), revs.end());
  return revs;
}

// ---- Insert, Get, request ids ----------------------------------------------

TEST_P(StoreConformanceTest, InsertGetRoundTripsEveryField) {
  Record r = Make(Spec{"gen_full_0123456789abc",
                       "acme",
                       kBase + absl::Nanoseconds(123456789),
                       v1::Generation::STATE_GENERATING,
                       "req-full:1",
                       {{"team", "video"}, {"env", "prod"}},
                       10,
                       3});
  v1::Generation& g = r.generation;
  g.set_upstream_id("10c09c56-aaaa:kling-video/v2/master/text-to-video");
  g.set_upstream_status("weird-new-status");
  g.mutable_request()->set_model("klingai/v2-master-text-to-video");
  g.mutable_request()->set_cfg_scale(0.25f);
  g.mutable_request()->set_webhook_url("https://hooks.example.com/v");
  g.mutable_request()->add_webhook_states(v1::Generation::STATE_COMPLETED);
  *g.mutable_estimate()->mutable_expected_complete_time() =
      Ts(kBase + absl::Minutes(6));
  g.mutable_estimate()->set_samples(12);
  *g.mutable_update_time() = Ts(kBase + absl::Nanoseconds(987654321));
  r.deadline = kBase + absl::Minutes(30) + absl::Nanoseconds(5);
  r.submit = SubmitPhase::kUnconfirmed;
  r.submit_time = kBase + absl::Nanoseconds(42);
  r.owner = "replica-1";
  r.lease_until = kBase + absl::Seconds(30) + absl::Nanoseconds(7);
  r.version = 17;  // ignored: an insert is version 1

  ASSERT_TRUE(store_->Insert(r, Admission{}, nullptr).ok());
  absl::StatusOr<std::optional<Record>> got = store_->Get(g.id());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  EXPECT_TRUE(Same((*got)->generation, g));
  EXPECT_EQ((*got)->deadline, r.deadline);
  EXPECT_EQ((*got)->submit, SubmitPhase::kUnconfirmed);
  EXPECT_EQ((*got)->submit_time, r.submit_time);
  EXPECT_EQ((*got)->owner, "replica-1");
  EXPECT_EQ((*got)->lease_until, r.lease_until);
  EXPECT_EQ((*got)->version, 1);

  absl::StatusOr<std::optional<Record>> missing = store_->Get("nope");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
}

TEST_P(StoreConformanceTest, InfiniteTimesRoundTrip) {
  Record r = Make("g1");
  r.deadline = absl::InfiniteFuture();
  r.submit_time = absl::InfinitePast();
  r.lease_until = absl::InfiniteFuture();
  ASSERT_TRUE(store_->Insert(r, Admission{}, nullptr).ok());
  absl::StatusOr<std::optional<Record>> got = store_->Get("g1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->deadline, absl::InfiniteFuture());
  EXPECT_EQ((*got)->submit_time, absl::InfinitePast());
  EXPECT_EQ((*got)->lease_until, absl::InfiniteFuture());
}

TEST_P(StoreConformanceTest, RequestIdIsUniquePerTenant) {
  ASSERT_TRUE(store_
                  ->Insert(Make(Spec{"a1", "a", kBase,
                                     v1::Generation::STATE_QUEUED, "req-1"}),
                           Admission{}, nullptr)
                  .ok());
  // Another tenant may use the same request_id.
  ASSERT_TRUE(store_
                  ->Insert(Make(Spec{"b1", "b", kBase,
                                     v1::Generation::STATE_QUEUED, "req-1"}),
                           Admission{}, nullptr)
                  .ok());
  std::optional<Record> existing;
  absl::Status clash = store_->Insert(
      Make(Spec{"a2", "a", kBase, v1::Generation::STATE_QUEUED, "req-1"}),
      Admission{}, &existing);
  EXPECT_EQ(clash.code(), StatusCode::kAlreadyExists) << clash;
  ASSERT_TRUE(existing.has_value());
  EXPECT_EQ(existing->generation.id(), "a1");
  EXPECT_EQ(existing->version, 1);
  EXPECT_FALSE(store_->Get("a2")->has_value()) << "a refused insert stores "
                                                  "nothing";
  // Without `existing` the answer is the same.
  EXPECT_EQ(store_
                ->Insert(Make(Spec{"a3", "a", kBase,
                                   v1::Generation::STATE_QUEUED, "req-1"}),
                         Admission{}, nullptr)
                .code(),
            StatusCode::kAlreadyExists);

  absl::StatusOr<std::optional<Record>> by_a =
      store_->GetByRequestId("a", "req-1");
  ASSERT_TRUE(by_a.ok() && by_a->has_value());
  EXPECT_EQ((*by_a)->generation.id(), "a1");
  absl::StatusOr<std::optional<Record>> by_b =
      store_->GetByRequestId("b", "req-1");
  ASSERT_TRUE(by_b.ok() && by_b->has_value());
  EXPECT_EQ((*by_b)->generation.id(), "b1");
  EXPECT_FALSE(store_->GetByRequestId("c", "req-1")->has_value());
  EXPECT_FALSE(store_->GetByRequestId("a", "req-2")->has_value());

  // Empty request_ids never clash and are never found.
  ASSERT_TRUE(store_->Insert(Make(Spec{"e1", "a"}), Admission{}, nullptr).ok());
  ASSERT_TRUE(store_->Insert(Make(Spec{"e2", "a"}), Admission{}, nullptr).ok());
  EXPECT_FALSE(store_->GetByRequestId("a", "")->has_value());
}

TEST_P(StoreConformanceTest, TakenIdIsAlreadyExists) {
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  std::optional<Record> existing;
  Record again = Make("g1", kBase + absl::Seconds(5));
  EXPECT_EQ(store_->Insert(again, Admission{}, &existing).code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(existing.has_value());
  EXPECT_EQ(FromTs(existing->generation.create_time()), kBase);
}

TEST_P(StoreConformanceTest, RetriedCreateJoinsEvenAtTheLimit) {
  Admission one;
  one.max_concurrent = 1;
  Record r = Make(Spec{"g1", "a", kBase, v1::Generation::STATE_QUEUED, "r"});
  ASSERT_TRUE(store_->Insert(r, one, nullptr).ok());
  r.generation.set_id("g2");
  std::optional<Record> existing;
  EXPECT_EQ(store_->Insert(r, one, &existing).code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(existing.has_value());
  EXPECT_EQ(existing->generation.id(), "g1");
}

// ---- Compare-and-set
// ---------------------------------------------------------

TEST_P(StoreConformanceTest, UpdateIsCompareAndSet) {
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  Record next = *store_->Get("g1").value();
  next.version = 2;
  next.generation.set_revision(2);
  next.generation.set_state(v1::Generation::STATE_GENERATING);
  next.submit = SubmitPhase::kSent;
  ASSERT_TRUE(store_->Update(next, {}).ok());
  Record got = *store_->Get("g1").value();
  EXPECT_EQ(got.version, 2);
  EXPECT_EQ(got.submit, SubmitPhase::kSent);
  EXPECT_EQ(got.generation.state(), v1::Generation::STATE_GENERATING);

  // The same write again is stale now.
  Record stale = next;
  stale.generation.set_upstream_status("stale");
  absl::Status s = store_->Update(stale, {});
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s;
  // So is a version from the future.
  stale.version = 9;
  EXPECT_EQ(store_->Update(stale, {}).code(), StatusCode::kAborted);
  EXPECT_EQ(store_->Get("g1").value()->generation.upstream_status(), "");
  EXPECT_EQ(store_->Get("g1").value()->version, 2);

  Record gone = Make("missing");
  gone.version = 2;
  EXPECT_EQ(store_->Update(gone, {}).code(), StatusCode::kNotFound);
}

TEST_P(StoreConformanceTest, CasConflictOneWriterWins) {
  for (int round = 0; round < 10; ++round) {
    const std::string id = absl::StrCat("g", round);
    ASSERT_TRUE(store_->Insert(Make(id), Admission{}, nullptr).ok());
    const Record base = *store_->Get(id).value();
    std::atomic<int> ok{0}, aborted{0}, other{0};
    absl::Notification go;
    std::vector<std::thread> writers;
    for (int w = 0; w < 2; ++w) {
      writers.emplace_back([&, w] {
        Record mine = base;
        mine.version = base.version + 1;
        mine.generation.set_revision(base.generation.revision() + 1);
        mine.generation.set_upstream_status(absl::StrCat("writer", w));
        go.WaitForNotification();
        absl::Status s = store_->Update(mine, {});
        if (s.ok()) {
          ++ok;
        } else if (s.code() == StatusCode::kAborted) {
          ++aborted;
        } else {
          ++other;
        }
      });
    }
    go.Notify();
    for (auto& t : writers) t.join();
    EXPECT_EQ(ok.load(), 1);
    EXPECT_EQ(aborted.load(), 1);
    EXPECT_EQ(other.load(), 0);
    EXPECT_EQ(store_->Get(id).value()->version, 2);
  }
}

TEST_P(StoreConformanceTest, ConcurrentReadModifyWriteLosesNothing) {
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  constexpr int kThreads = 4, kEach = 15;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach;) {
        absl::StatusOr<std::optional<Record>> got = store_->Get("g1");
        if (!got.ok() || !got->has_value()) {
          ++failures;
          return;
        }
        Record r = **got;
        ++r.version;
        r.generation.set_revision(r.generation.revision() + 1);
        absl::Status s = store_->Update(r, {});
        if (s.ok()) {
          ++i;
        } else if (s.code() != StatusCode::kAborted) {
          ++failures;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  Record final_record = *store_->Get("g1").value();
  EXPECT_EQ(final_record.generation.revision(), 1 + kThreads * kEach);
  EXPECT_EQ(final_record.version, 1 + kThreads * kEach);
}

TEST_P(StoreConformanceTest, DeleteIsConditionalOnTheVersion) {
  ASSERT_TRUE(store_
                  ->Insert(Make(Spec{"g1", "a", kBase,
                                     v1::Generation::STATE_QUEUED, "req-1"}),
                           Admission{}, nullptr)
                  .ok());
  EXPECT_EQ(store_->Delete("g1", 2).code(), StatusCode::kAborted);
  EXPECT_TRUE(store_->Get("g1").value().has_value());
  ASSERT_TRUE(store_->Delete("g1", 1).ok());
  EXPECT_FALSE(store_->Get("g1").value().has_value());
  EXPECT_TRUE(store_->Delete("g1", 1).ok()) << "a missing record is OK";
  EXPECT_FALSE(store_->GetByRequestId("a", "req-1").value().has_value());
  // The request_id is free again.
  EXPECT_TRUE(store_
                  ->Insert(Make(Spec{"g2", "a", kBase,
                                     v1::Generation::STATE_QUEUED, "req-1"}),
                           Admission{}, nullptr)
                  .ok());
}

// ---- Admission -------------------------------------------------------------

TEST_P(StoreConformanceTest, MaxConcurrentRaceAdmitsExactlyTheLimit) {
  Admission five;
  five.max_concurrent = 5;
  constexpr int kThreads = 20;
  std::atomic<int> ok{0}, exhausted{0}, other{0};
  std::string message;
  absl::Mutex message_mu;
  absl::Notification go;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Record r =
          Make(Spec{absl::StrCat("g", t), "a", kBase + absl::Milliseconds(t)});
      go.WaitForNotification();
      absl::Status s = store_->Insert(r, five, nullptr);
      if (s.ok()) {
        ++ok;
      } else if (s.code() == StatusCode::kResourceExhausted) {
        ++exhausted;
        absl::MutexLock lock(&message_mu);
        message = std::string(s.message());
      } else {
        ++other;
      }
    });
  }
  go.Notify();
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 5);
  EXPECT_EQ(exhausted.load(), kThreads - 5);
  EXPECT_EQ(other.load(), 0);
  EXPECT_THAT(message, HasSubstr("tenant \"a\" is at max_concurrent=5 (5 "
                                 "generations not finished)"));
  EXPECT_THAT(message, HasSubstr("retry when one finishes"));

  // Another tenant has its own count.
  EXPECT_TRUE(store_->Insert(Make(Spec{"b1", "b"}), five, nullptr).ok());

  // A finished generation frees a unit.
  ListQuery q;
  q.tenant = "a";
  absl::StatusOr<ListPage> page = store_->List(q);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->generations.size(), 5u);
  Record done = *store_->Get(page->generations[0].id()).value();
  ++done.version;
  done.generation.set_revision(2);
  done.generation.set_state(v1::Generation::STATE_COMPLETED);
  done.generation.set_done(true);
  ASSERT_TRUE(store_->Update(done, {}).ok());
  EXPECT_TRUE(store_->Insert(Make(Spec{"a_next", "a"}), five, nullptr).ok());
  EXPECT_EQ(store_->Insert(Make(Spec{"a_more", "a"}), five, nullptr).code(),
            StatusCode::kResourceExhausted);
}

TEST_P(StoreConformanceTest, CreatesPerMinuteCountsTheLastSixtySeconds) {
  Admission three;
  three.creates_per_minute = 3;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(store_
                    ->Insert(Make(Spec{absl::StrCat("g", i), "a",
                                       kBase + absl::Seconds(10 * i),
                                       v1::Generation::STATE_FAILED}),
                             three, nullptr)
                    .ok())
        << i;
  }
  absl::Status s = store_->Insert(
      Make(Spec{"g3", "a", kBase + absl::Seconds(30)}), three, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("tenant \"a\" is at creates_per_minute=3 "
                                     "(3 created in the last 60s)"));
  EXPECT_THAT(s.message(), HasSubstr("retry in 30s"));
  // Another tenant is not limited by a's creates.
  EXPECT_TRUE(store_
                  ->Insert(Make(Spec{"b1", "b", kBase + absl::Seconds(30)}),
                           three, nullptr)
                  .ok());
  // 61 s after the first, it has left the window.
  EXPECT_TRUE(store_
                  ->Insert(Make(Spec{"g4", "a", kBase + absl::Seconds(61)}),
                           three, nullptr)
                  .ok());
  EXPECT_EQ(store_
                ->Insert(Make(Spec{"g5", "a", kBase + absl::Seconds(62)}),
                         three, nullptr)
                .code(),
            StatusCode::kResourceExhausted);
}

TEST_P(StoreConformanceTest, VideoSecondsBudgetGivesFailedSecondsBack) {
  Admission budget;
  budget.video_seconds_budget = 20;
  budget.budget_period = absl::Hours(1);
  // Created before the period: does not count.
  ASSERT_TRUE(store_
                  ->Insert(Make(Spec{"old",
                                     "a",
                                     kBase - absl::Hours(2),
                                     v1::Generation::STATE_COMPLETED,
                                     "",
                                     {},
                                     10}),
                           Admission{}, nullptr)
                  .ok());
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(store_
                    ->Insert(Make(Spec{absl::StrCat("g", i), "a",
                                       kBase + absl::Seconds(i)}),
                             budget, nullptr)
                    .ok())
        << i;
  }
  absl::Status s = store_->Insert(
      Make(Spec{"g4", "a", kBase + absl::Seconds(10)}), budget, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("tenant \"a\" has used 20 of "
                                     "video_seconds_budget=20"));
  EXPECT_THAT(s.message(), HasSubstr("needs 5 more"));
  EXPECT_THAT(s.message(), HasSubstr("when a generation fails"));

  // g1 fails: its seconds come back.
  Record failed = *store_->Get("g1").value();
  ++failed.version;
  failed.generation.set_revision(2);
  failed.generation.set_state(v1::Generation::STATE_FAILED);
  failed.generation.set_done(true);
  ASSERT_TRUE(store_->Update(failed, {}).ok());
  EXPECT_TRUE(store_
                  ->Insert(Make(Spec{"g4", "a", kBase + absl::Seconds(10)}),
                           budget, nullptr)
                  .ok());
  // A 10 s clip does not fit in what is left (0).
  EXPECT_EQ(store_
                ->Insert(Make(Spec{"g5",
                                   "a",
                                   kBase + absl::Seconds(11),
                                   v1::Generation::STATE_QUEUED,
                                   "",
                                   {},
                                   10}),
                         budget, nullptr)
                .code(),
            StatusCode::kResourceExhausted);
}

TEST_P(StoreConformanceTest, BudgetRaceAdmitsExactlyWhatFits) {
  Admission budget;
  budget.video_seconds_budget = 20;
  constexpr int kThreads = 10;
  std::atomic<int> ok{0}, exhausted{0};
  absl::Notification go;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Record r =
          Make(Spec{absl::StrCat("g", t), "a", kBase + absl::Milliseconds(t)});
      go.WaitForNotification();
      absl::Status s = store_->Insert(r, budget, nullptr);
      if (s.ok()) ++ok;
      if (s.code() == StatusCode::kResourceExhausted) ++exhausted;
    });
  }
  go.Notify();
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(exhausted.load(), kThreads - 4);
}

// ---- Change feed
// -------------------------------------------------------------

TEST_P(StoreConformanceTest, FeedAnnouncesCommittedRevisionsInOrder) {
  FeedRecorder feed(store_.get());
  ASSERT_TRUE(
      store_->Insert(Make(Spec{"g1", "acme"}), Admission{}, nullptr).ok());
  Record r = *store_->Get("g1").value();
  for (int64_t rev = 2; rev <= 4; ++rev) {
    ++r.version;
    r.generation.set_revision(rev);
    r.generation.set_upstream_status(absl::StrCat("s", rev));
    ASSERT_TRUE(store_->Update(r, {}).ok());
    // A write that does not raise the revision (lease, submit phase,
    // estimate) announces nothing.
    ++r.version;
    r.submit = SubmitPhase::kSent;
    ASSERT_TRUE(store_->Update(r, {}).ok());
  }
  ASSERT_TRUE(feed.WaitFor("g1", 4));
  EXPECT_THAT(Distinct(feed.Revisions("g1")), ElementsAre(1, 2, 3, 4));
  std::vector<int64_t> revs = feed.Revisions("g1");
  EXPECT_TRUE(std::is_sorted(revs.begin(), revs.end()));
  EXPECT_THAT(feed.NotYetCommitted(), IsEmpty())
      << "announced before the listener could read it back";
  for (const Change& c : feed.Changes()) {
    EXPECT_EQ(c.tenant, "acme");
    if (c.generation != nullptr) {
      EXPECT_EQ(c.generation->revision(), c.revision);
      EXPECT_EQ(c.generation->id(), c.id);
      EXPECT_EQ(c.generation->upstream_status(),
                c.revision == 1 ? "" : absl::StrCat("s", c.revision));
    }
  }
}

TEST_P(StoreConformanceTest, FeedAnnouncesNothingForAFailedWrite) {
  FeedRecorder feed(store_.get());
  // Revision 0: an insert that clients cannot see yet.
  Record zero = Make(Spec{"g0"});
  zero.generation.set_revision(0);
  ASSERT_TRUE(store_->Insert(zero, Admission{}, nullptr).ok());
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  // A refused insert.
  Admission none;
  none.max_concurrent = 1;
  Record refused = Make(Spec{"g2", "", kBase});
  refused.generation.set_revision(50);
  ASSERT_TRUE(store_->Insert(Make(Spec{"g3", "t"}), none, nullptr).ok());
  refused.generation.set_tenant("t");
  ASSERT_EQ(store_->Insert(refused, none, nullptr).code(),
            StatusCode::kResourceExhausted);
  // A failed compare-and-set.
  Record stale = *store_->Get("g1").value();
  stale.generation.set_revision(77);  // version stays 1: stale
  ASSERT_EQ(store_->Update(stale, {}).code(), StatusCode::kAborted);
  // Then a good write; once it arrived, anything earlier has too.
  Record good = *store_->Get("g1").value();
  ++good.version;
  good.generation.set_revision(2);
  ASSERT_TRUE(store_->Update(good, {}).ok());
  ASSERT_TRUE(feed.WaitFor("g1", 2));
  EXPECT_THAT(Distinct(feed.Revisions("g1")), ElementsAre(1, 2));
  EXPECT_THAT(feed.Revisions("g0"), IsEmpty());
  EXPECT_THAT(feed.Revisions("g2"), IsEmpty());
}

TEST_P(StoreConformanceTest, FeedKeepsPerGenerationOrderUnderConcurrency) {
  FeedRecorder feed(store_.get());
  constexpr int kThreads = 4, kPerThread = 2, kRevisions = 20;
  std::vector<std::string> ids;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    ids.push_back(absl::StrCat("g", i));
    ASSERT_TRUE(store_->Insert(Make(ids.back()), Admission{}, nullptr).ok());
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  // Two threads write each generation, so its writes race too (CAS orders
  // them); each thread writes two generations.
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kPerThread; ++k) {
        const std::string& id = ids[(t * kPerThread + k + t % 2) % ids.size()];
        for (int done = 0; done < kRevisions / 2;) {
          absl::StatusOr<std::optional<Record>> got = store_->Get(id);
          if (!got.ok() || !got->has_value()) {
            ++failures;
            return;
          }
          Record r = **got;
          ++r.version;
          r.generation.set_revision(r.generation.revision() + 1);
          absl::Status s = store_->Update(r, {});
          if (s.ok()) {
            ++done;
          } else if (s.code() != StatusCode::kAborted) {
            ++failures;
            return;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  for (const std::string& id : ids) {
    const int64_t last = store_->Get(id).value()->generation.revision();
    ASSERT_TRUE(feed.WaitFor(id, last)) << id;
    std::vector<int64_t> revs = feed.Revisions(id);
    EXPECT_TRUE(std::is_sorted(revs.begin(), revs.end())) << id;
    std::vector<int64_t> want;
    for (int64_t r = 1; r <= last; ++r) want.push_back(r);
    EXPECT_THAT(Distinct(revs), ElementsAreArray(want)) << id;
  }
  EXPECT_THAT(feed.NotYetCommitted(), IsEmpty());
}

TEST_P(StoreConformanceTest, ListenerMayWriteToTheStore) {
  // A listener that writes (here: marks a webhook status) must not deadlock.
  std::atomic<int> calls{0};
  store_->feed()->SetListener([&](const Change& c) {
    v1::WebhookStatus ws;
    ws.set_attempts(static_cast<int>(c.revision));
    EXPECT_TRUE(store_->SetWebhookStatus(c.id, ws).ok());
    ++calls;
  });
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  for (int i = 0; i < 1000 && calls.load() < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  store_->feed()->SetListener(nullptr);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(store_->Get("g1").value()->generation.webhook_status().attempts(),
            1);
}

// ---- Leases ----------------------------------------------------------------

TEST_P(StoreConformanceTest, LeasesClaimRenewExpireAndFence) {
  const absl::Time now = kBase + absl::Hours(1);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        store_
            ->Insert(Make(absl::StrCat("g", i), kBase + absl::Seconds(i)),
                     Admission{}, nullptr)
            .ok());
  }
  ASSERT_TRUE(store_
                  ->Insert(Make("done", kBase, v1::Generation::STATE_COMPLETED),
                           Admission{}, nullptr)
                  .ok());

  // A claims the two oldest.
  absl::StatusOr<std::vector<Record>> a =
      store_->ClaimActive("A", now, now + absl::Seconds(30), 2);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(Ids(*a), ElementsAre("g0", "g1"));
  for (const Record& r : *a) {
    EXPECT_EQ(r.owner, "A");
    EXPECT_EQ(r.lease_until, now + absl::Seconds(30));
    EXPECT_EQ(r.version, 2) << "a claim bumps the version";
    EXPECT_EQ(store_->Get(r.generation.id()).value()->version, 2);
  }
  // B gets only what A does not hold; terminal records are never claimed.
  absl::StatusOr<std::vector<Record>> b =
      store_->ClaimActive("B", now, now + absl::Seconds(30), 10);
  ASSERT_TRUE(b.ok());
  EXPECT_THAT(Ids(*b), ElementsAre("g2"));

  // Renewal extends unexpired leases without a version change.
  absl::StatusOr<std::vector<std::string>> renewed = store_->RenewLeases(
      "A", now + absl::Seconds(10), now + absl::Seconds(40));
  ASSERT_TRUE(renewed.ok());
  EXPECT_THAT(*renewed, UnorderedElementsAre("g0", "g1"));
  Record g0 = *store_->Get("g0").value();
  EXPECT_EQ(g0.version, 2);
  EXPECT_EQ(g0.lease_until, now + absl::Seconds(40));

  // While A's lease runs, B cannot take g0.
  b = store_->ClaimActive("B", now + absl::Seconds(39), now + absl::Minutes(5),
                          10);
  ASSERT_TRUE(b.ok());
  EXPECT_THAT(Ids(*b), ElementsAre("g2")) << "a holder's own claim renews it";

  // A stops renewing; its leases expire and B claims them.
  const absl::Time later = now + absl::Seconds(41);
  b = store_->ClaimActive("B", later, later + absl::Seconds(30), 10);
  ASSERT_TRUE(b.ok());
  EXPECT_THAT(Ids(*b), ElementsAre("g0", "g1", "g2"));
  EXPECT_EQ(store_->Get("g0").value()->owner, "B");

  // A's write from its old copy is fenced off.
  Record fenced = g0;
  ++fenced.version;
  fenced.generation.set_revision(2);
  fenced.generation.set_upstream_status("from A");
  EXPECT_EQ(store_->Update(fenced, {}).code(), StatusCode::kAborted);
  EXPECT_EQ(store_->Get("g0").value()->generation.upstream_status(), "");
  // And A holds nothing any more.
  renewed = store_->RenewLeases("A", later, later + absl::Seconds(30));
  ASSERT_TRUE(renewed.ok());
  EXPECT_THAT(*renewed, IsEmpty());
  renewed = store_->RenewLeases("B", later, later + absl::Seconds(60));
  ASSERT_TRUE(renewed.ok());
  EXPECT_THAT(*renewed, UnorderedElementsAre("g0", "g1", "g2"));
}

TEST_P(StoreConformanceTest, ReleasedLeaseIsClaimableAtOnce) {
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  const absl::Time now = kBase + absl::Hours(1);
  std::vector<Record> a =
      store_->ClaimActive("A", now, now + absl::Minutes(1), 10).value();
  ASSERT_EQ(a.size(), 1u);
  Record release = a[0];
  ++release.version;
  release.owner.clear();
  release.lease_until = absl::InfinitePast();
  ASSERT_TRUE(store_->Update(release, {}).ok());
  std::vector<Record> b =
      store_->ClaimActive("B", now, now + absl::Minutes(1), 10).value();
  EXPECT_THAT(Ids(b), ElementsAre("g1"));
}

// ---- List ------------------------------------------------------------------

// 30 records over tenants a and b; create times repeat so the id breaks ties.
std::vector<Record> Thirty() {
  std::vector<Record> rs;
  for (int i = 0; i < 30; ++i) {
    Spec s;
    s.id = absl::StrCat("id", std::string(1, static_cast<char>('A' + i)));
    s.tenant = i % 3 == 0 ? "b" : "a";
    s.created = kBase + absl::Seconds(i / 3);
    s.state = i % 4 == 0 ? v1::Generation::STATE_COMPLETED
                         : v1::Generation::STATE_QUEUED;
    s.labels = i % 2 == 0 ? std::map<std::string, std::string>{{"team", "x"},
                                                               {"env", "prod"}}
                          : std::map<std::string, std::string>{{"team", "x"}};
    rs.push_back(Make(s));
  }
  return rs;
}

std::vector<std::string> NewestFirst(std::vector<Record> rs) {
  std::sort(rs.begin(), rs.end(), [](const Record& x, const Record& y) {
    const absl::Time tx = FromTs(x.generation.create_time());
    const absl::Time ty = FromTs(y.generation.create_time());
    return tx > ty || (tx == ty && x.generation.id() > y.generation.id());
  });
  return Ids(rs);
}

class Pager {
 public:
  explicit Pager(Store* store) : store_(store) {}
  // Every page of `q`, concatenated; checks each page's size and cursor.
  std::vector<std::string> All(ListQuery q) {
    std::vector<std::string> ids;
    for (int pages = 0; pages < 200; ++pages) {
      absl::StatusOr<ListPage> page = store_->List(q);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      EXPECT_LE(page->generations.size(), static_cast<size_t>(q.page_size));
      for (const auto& g : page->generations) ids.push_back(g.id());
      if (!page->next) break;
      EXPECT_EQ(page->generations.size(), static_cast<size_t>(q.page_size));
      EXPECT_EQ(page->next->id, page->generations.back().id());
      q.after = page->next;
    }
    return ids;
  }

 private:
  Store* store_;
};

TEST_P(StoreConformanceTest, ListPagesNewestFirstPerTenant) {
  std::vector<Record> rs = Thirty();
  for (int i = 0; i < 30; ++i) {  // scrambled: storage order is not list order
    ASSERT_TRUE(store_->Insert(rs[(i * 7) % 30], Admission{}, nullptr).ok());
  }
  Pager pager(store_.get());
  ListQuery all;
  all.page_size = 7;
  EXPECT_THAT(pager.All(all), ElementsAreArray(NewestFirst(rs)));

  std::vector<Record> of_a, of_b;
  for (const Record& r : rs) {
    (r.generation.tenant() == "a" ? of_a : of_b).push_back(r);
  }
  ListQuery a = all;
  a.tenant = "a";
  a.page_size = 3;
  EXPECT_THAT(pager.All(a), ElementsAreArray(NewestFirst(of_a)));
  ListQuery b = all;
  b.tenant = "b";
  EXPECT_THAT(pager.All(b), ElementsAreArray(NewestFirst(of_b)));
  ListQuery nobody = all;
  nobody.tenant = "c";
  EXPECT_THAT(pager.All(nobody), IsEmpty());
}

TEST_P(StoreConformanceTest, ListFiltersByStateAndEveryLabel) {
  std::vector<Record> rs = Thirty();
  for (const Record& r : rs) {
    ASSERT_TRUE(store_->Insert(r, Admission{}, nullptr).ok());
  }
  auto expect = [&](const ListQuery& q) {
    std::vector<Record> want;
    for (const Record& r : rs) {
      const v1::Generation& g = r.generation;
      bool ok = q.tenant.empty() || g.tenant() == q.tenant;
      if (!q.states.empty()) {
        ok = ok && std::find(q.states.begin(), q.states.end(), g.state()) !=
                       q.states.end();
      }
      for (const auto& [k, v] : q.labels) {
        auto it = g.labels().find(k);
        ok = ok && it != g.labels().end() && it->second == v;
      }
      if (ok) want.push_back(r);
    }
    return NewestFirst(want);
  };
  Pager pager(store_.get());
  ListQuery q;
  q.page_size = 4;
  q.states = {v1::Generation::STATE_COMPLETED, v1::Generation::STATE_FAILED};
  EXPECT_THAT(pager.All(q), ElementsAreArray(expect(q)));
  q.labels = {{"env", "prod"}};
  EXPECT_THAT(pager.All(q), ElementsAreArray(expect(q)));
  q.tenant = "a";
  EXPECT_THAT(pager.All(q), ElementsAreArray(expect(q)));
  ListQuery labels_only;
  labels_only.page_size = 5;
  labels_only.labels = {{"team", "x"}, {"env", "prod"}};
  EXPECT_THAT(pager.All(labels_only), ElementsAreArray(expect(labels_only)));
  labels_only.labels = {{"team", "y"}};
  EXPECT_THAT(pager.All(labels_only), IsEmpty());
  ListQuery cancelled;
  cancelled.states = {v1::Generation::STATE_CANCELLED};
  EXPECT_THAT(pager.All(cancelled), IsEmpty());
}

// Rows that share a microsecond differ in nanoseconds: the cursor must keep
// them apart (a microsecond cursor skipped rows between pages).
TEST_P(StoreConformanceTest, ListCursorKeepsNanoseconds) {
  std::vector<Record> rs;
  for (int i = 0; i < 5; ++i) {
    rs.push_back(
        Make(absl::StrCat("n", 4 - i),
             kBase + absl::Microseconds(7) + absl::Nanoseconds(i * 100)));
    ASSERT_TRUE(store_->Insert(rs.back(), Admission{}, nullptr).ok());
  }
  ListQuery q;
  q.page_size = 1;
  EXPECT_THAT(Pager(store_.get()).All(q), ElementsAreArray(NewestFirst(rs)));
  absl::StatusOr<ListPage> first = store_->List(q);
  ASSERT_TRUE(first.ok() && first->next.has_value());
  EXPECT_EQ(first->next->create_time,
            kBase + absl::Microseconds(7) + absl::Nanoseconds(400));
}

TEST_P(StoreConformanceTest, ListStartsStrictlyAfterTheCursor) {
  std::vector<Record> rs = Thirty();
  for (const Record& r : rs) {
    ASSERT_TRUE(store_->Insert(r, Admission{}, nullptr).ok());
  }
  const std::vector<std::string> order = NewestFirst(rs);
  Record fifth = *store_->Get(order[4]).value();
  ListQuery q;
  q.page_size = 3;
  q.after = Cursor{FromTs(fifth.generation.create_time()), order[4]};
  absl::StatusOr<ListPage> page = store_->List(q);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Ids(page->generations),
              ElementsAre(order[5], order[6], order[7]));
  EXPECT_TRUE(page->next.has_value());
  q.after = Cursor{kBase - absl::Hours(1), "zzz"};
  page = store_->List(q);
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->generations.empty());
  EXPECT_FALSE(page->next.has_value());
}

TEST_P(StoreConformanceTest, ListRefusesANonPositivePageSize) {
  ListQuery q;
  q.page_size = 0;
  EXPECT_EQ(store_->List(q).status().code(), StatusCode::kInvalidArgument);
}

// ---- Purge -----------------------------------------------------------------

Delivery MakeDelivery(const std::string& generation_id, int64_t revision,
                      absl::Time created) {
  Delivery d;
  d.generation_id = generation_id;
  d.revision = revision;
  d.tenant = "a";
  d.url = "https://hooks.example.com/in";
  d.body = absl::StrCat("{\"id\":\"", generation_id, "\"}");
  d.next_attempt = absl::InfinitePast();  // due at once
  d.created = created;
  d.seq = 999;  // ignored
  return d;
}

// Moves a stored record to `state` with the next revision, appending
// `outbox`.
absl::Status Advance(Store& store, const std::string& id, State state,
                     const std::vector<Delivery>& outbox = {},
                     absl::Time updated = kBase + absl::Seconds(1)) {
  absl::StatusOr<std::optional<Record>> got = store.Get(id);
  if (!got.ok()) return got.status();
  if (!got->has_value()) return absl::NotFoundError(id);
  Record r = **got;
  ++r.version;
  r.generation.set_revision(r.generation.revision() + 1);
  r.generation.set_state(state);
  r.generation.set_done(Terminal(state));
  *r.generation.mutable_update_time() = Ts(updated);
  return store.Update(r, outbox);
}

TEST_P(StoreConformanceTest, PurgeRemovesOldTerminalRecordsAndDeliveries) {
  const absl::Time cutoff = kBase + absl::Hours(1);
  ASSERT_TRUE(store_
                  ->Insert(Make(Spec{"old_done",
                                     "a",
                                     kBase,
                                     v1::Generation::STATE_QUEUED,
                                     "req-old",
                                     {{"team", "x"}}}),
                           Admission{}, nullptr)
                  .ok());
  ASSERT_TRUE(store_->Insert(Make("old_failed"), Admission{}, nullptr).ok());
  ASSERT_TRUE(store_->Insert(Make("old_active"), Admission{}, nullptr).ok());
  ASSERT_TRUE(store_->Insert(Make("new_done"), Admission{}, nullptr).ok());
  ASSERT_TRUE(Advance(*store_, "old_done", v1::Generation::STATE_COMPLETED,
                      {MakeDelivery("old_done", 2, kBase)})
                  .ok());
  ASSERT_TRUE(
      Advance(*store_, "old_failed", v1::Generation::STATE_FAILED).ok());
  ASSERT_TRUE(Advance(*store_, "new_done", v1::Generation::STATE_CANCELLED,
                      {MakeDelivery("new_done", 2, kBase)},
                      cutoff + absl::Seconds(5))
                  .ok());
  ASSERT_EQ(store_->OutboxStats().value().first, 2);

  absl::StatusOr<std::vector<std::string>> purged =
      store_->PurgeTerminalBefore(cutoff);
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_THAT(*purged, UnorderedElementsAre("old_done", "old_failed"));
  EXPECT_THAT(Pager(store_.get()).All(ListQuery{}),
              UnorderedElementsAre("new_done", "old_active"));
  EXPECT_FALSE(store_->Get("old_done").value().has_value());
  EXPECT_FALSE(store_->GetByRequestId("a", "req-old").value().has_value());
  ListQuery by_label;
  by_label.labels = {{"team", "x"}};
  EXPECT_THAT(Pager(store_.get()).All(by_label), IsEmpty());
  EXPECT_EQ(store_->OutboxStats().value().first, 1);
  std::vector<Delivery> left =
      store_->ClaimDeliveries("w", kBase, kBase + absl::Minutes(1), 10).value();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].generation_id, "new_done");

  purged = store_->PurgeTerminalBefore(cutoff);
  ASSERT_TRUE(purged.ok());
  EXPECT_THAT(*purged, IsEmpty());
}

// ---- Webhook status --------------------------------------------------------

TEST_P(StoreConformanceTest, WebhookStatusIsKeptBesideTheRecord) {
  Record r = Make(Spec{"g1", "a", kBase, v1::Generation::STATE_QUEUED, "rq"});
  r.generation.mutable_webhook_status()->set_last_result("written by Insert");
  ASSERT_TRUE(store_->Insert(r, Admission{}, nullptr).ok());
  EXPECT_FALSE(store_->Get("g1").value()->generation.has_webhook_status())
      << "Insert does not write webhook_status";

  v1::WebhookStatus ws;
  ws.set_attempts(3);
  ws.set_last_http_status(503);
  ws.set_last_result("http 503, retrying");
  *ws.mutable_last_attempt_time() = Ts(kBase + absl::Seconds(9));
  ASSERT_TRUE(store_->SetWebhookStatus("g1", ws).ok());
  Record got = *store_->Get("g1").value();
  EXPECT_EQ(got.version, 1) << "not a new version";
  EXPECT_EQ(got.generation.revision(), 1) << "not a new revision";
  v1::Generation want = r.generation;
  *want.mutable_webhook_status() = ws;
  EXPECT_TRUE(Same(got.generation, want));
  EXPECT_TRUE(
      Same(store_->GetByRequestId("a", "rq").value()->generation, want));
  absl::StatusOr<ListPage> page = store_->List(ListQuery{});
  ASSERT_TRUE(page.ok() && page->generations.size() == 1);
  EXPECT_TRUE(Same(page->generations[0], want));
  std::vector<Record> claimed =
      store_->ClaimActive("A", kBase, kBase + absl::Minutes(1), 10).value();
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_TRUE(Same(claimed[0].generation, want));

  // The poller's compare-and-set does not race it: an Update from a copy
  // read before the status leaves it alone.
  Record update = claimed[0];
  update.generation.clear_webhook_status();
  ++update.version;
  update.generation.set_revision(2);
  ASSERT_TRUE(store_->Update(update, {}).ok());
  EXPECT_EQ(store_->Get("g1").value()->generation.webhook_status().attempts(),
            3);
  ws.set_attempts(4);
  ws.set_settled(true);
  ASSERT_TRUE(store_->SetWebhookStatus("g1", ws).ok());
  EXPECT_TRUE(store_->Get("g1").value()->generation.webhook_status().settled());
  EXPECT_EQ(store_->Get("g1").value()->version, 3);

  EXPECT_EQ(store_->SetWebhookStatus("missing", ws).code(),
            StatusCode::kNotFound);
}

// ---- API keys --------------------------------------------------------------

ApiKey MakeKey(const std::string& id, const std::string& hash,
               absl::Time created) {
  ApiKey k;
  k.key_id = id;
  k.key_hash = hash;
  k.tenant = "acme";
  k.webhook_secret = "whsec_c2VjcmV0";
  k.created = created;
  return k;
}

TEST_P(StoreConformanceTest, KeysInsertFindListRevoke) {
  ApiKey admin = MakeKey("k_admin", std::string(64, 'a'), kBase);
  admin.admin = true;
  admin.limits.max_concurrent = 5;
  admin.limits.creates_per_minute = 60;
  admin.limits.video_seconds_budget = 3600;
  admin.limits.budget_period = absl::Hours(24) + absl::Nanoseconds(3);
  ApiKey plain =
      MakeKey("k_plain", std::string(64, 'b'), kBase + absl::Seconds(1));
  plain.tenant = "other";
  ASSERT_TRUE(store_->InsertKey(admin).ok());
  ASSERT_TRUE(store_->InsertKey(plain).ok());
  EXPECT_EQ(
      store_->InsertKey(MakeKey("k_admin", std::string(64, 'c'), kBase)).code(),
      StatusCode::kAlreadyExists);
  EXPECT_EQ(
      store_->InsertKey(MakeKey("k_new", std::string(64, 'a'), kBase)).code(),
      StatusCode::kAlreadyExists);

  absl::StatusOr<std::optional<ApiKey>> found =
      store_->FindKeyByHash(std::string(64, 'a'));
  ASSERT_TRUE(found.ok() && found->has_value()) << found.status();
  const ApiKey& k = **found;
  EXPECT_EQ(k.key_id, "k_admin");
  EXPECT_EQ(k.tenant, "acme");
  EXPECT_TRUE(k.admin);
  EXPECT_EQ(k.limits.max_concurrent, 5);
  EXPECT_EQ(k.limits.creates_per_minute, 60);
  EXPECT_EQ(k.limits.video_seconds_budget, 3600);
  EXPECT_EQ(k.limits.budget_period, admin.limits.budget_period);
  EXPECT_EQ(k.webhook_secret, "whsec_c2VjcmV0");
  EXPECT_EQ(k.created, kBase);
  EXPECT_FALSE(k.revoked.has_value());
  EXPECT_FALSE(store_->FindKeyByHash(std::string(64, 'z')).value().has_value());

  absl::StatusOr<std::vector<ApiKey>> keys = store_->ListKeys();
  ASSERT_TRUE(keys.ok());
  std::vector<std::string> ids;
  for (const ApiKey& key : *keys) ids.push_back(key.key_id);
  EXPECT_THAT(ids, UnorderedElementsAre("k_admin", "k_plain"));

  ASSERT_TRUE(store_->RevokeKey("k_plain", kBase + absl::Minutes(3)).ok());
  std::optional<ApiKey> revoked =
      store_->FindKeyByHash(std::string(64, 'b')).value();
  ASSERT_TRUE(revoked.has_value());
  ASSERT_TRUE(revoked->revoked.has_value());
  EXPECT_EQ(*revoked->revoked, kBase + absl::Minutes(3));
  EXPECT_EQ(store_->RevokeKey("k_unknown", kBase).code(),
            StatusCode::kNotFound);
}

// ---- Webhook outbox --------------------------------------------------------

TEST_P(StoreConformanceTest, OutboxClaimLeaseRetryFinishDrop) {
  const absl::Time t0 = kBase + absl::Hours(1);
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  ASSERT_TRUE(store_->Insert(Make("g2"), Admission{}, nullptr).ok());
  ASSERT_TRUE(Advance(*store_, "g1", v1::Generation::STATE_GENERATING,
                      {MakeDelivery("g1", 2, t0),
                       MakeDelivery("g1", 2, t0 + absl::Seconds(1))})
                  .ok());
  Delivery later = MakeDelivery("g2", 2, t0 - absl::Seconds(5));
  later.next_attempt = t0 + absl::Minutes(10);  // not due yet
  ASSERT_TRUE(Advance(*store_, "g2", v1::Generation::STATE_COMPLETED,
                      {MakeDelivery("g2", 2, t0 + absl::Seconds(2)), later})
                  .ok());

  absl::StatusOr<std::pair<int64_t, absl::Time>> stats = store_->OutboxStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->first, 4);
  EXPECT_EQ(stats->second, t0 - absl::Seconds(5));

  // w1 leases the two lowest seqs, w2 the next due one.
  std::vector<Delivery> w1 =
      store_->ClaimDeliveries("w1", t0, t0 + absl::Seconds(30), 2).value();
  ASSERT_EQ(w1.size(), 2u);
  EXPECT_LT(w1[0].seq, w1[1].seq);
  EXPECT_EQ(w1[0].generation_id, "g1");
  EXPECT_EQ(w1[0].revision, 2);
  EXPECT_EQ(w1[0].tenant, "a");
  EXPECT_EQ(w1[0].url, "https://hooks.example.com/in");
  EXPECT_EQ(w1[0].body, "{\"id\":\"g1\"}");
  EXPECT_EQ(w1[0].created, t0);
  EXPECT_EQ(w1[0].owner, "w1");
  EXPECT_EQ(w1[0].lease_until, t0 + absl::Seconds(30));
  std::vector<Delivery> w2 =
      store_->ClaimDeliveries("w2", t0, t0 + absl::Seconds(30), 10).value();
  ASSERT_EQ(w2.size(), 1u);
  EXPECT_EQ(w2[0].generation_id, "g2");
  EXPECT_GT(w2[0].seq, w1[1].seq);
  EXPECT_TRUE(
      store_->ClaimDeliveries("w3", t0, t0 + absl::Seconds(30), 10)->empty());

  // w1 dies: after its lease, w3 takes its deliveries.
  std::vector<Delivery> w3 = store_
                                 ->ClaimDeliveries("w3", t0 + absl::Seconds(31),
                                                   t0 + absl::Seconds(61), 10)
                                 .value();
  ASSERT_EQ(w3.size(), 3u) << "w1's two and w2's one have expired";
  EXPECT_EQ(w3[0].seq, w1[0].seq);

  // A retry releases the lease and waits for next_attempt.
  ASSERT_TRUE(store_->RetryDelivery(w3[0].seq, 1, t0 + absl::Seconds(45)).ok());
  EXPECT_TRUE(store_
                  ->ClaimDeliveries("w4", t0 + absl::Seconds(40),
                                    t0 + absl::Minutes(2), 10)
                  ->empty());
  std::vector<Delivery> w4 = store_
                                 ->ClaimDeliveries("w4", t0 + absl::Seconds(45),
                                                   t0 + absl::Minutes(2), 10)
                                 .value();
  ASSERT_EQ(w4.size(), 1u);
  EXPECT_EQ(w4[0].seq, w3[0].seq);
  EXPECT_EQ(w4[0].attempts, 1);

  ASSERT_TRUE(store_->FinishDelivery(w4[0].seq).ok());
  EXPECT_EQ(store_->OutboxStats().value().first, 3);
  EXPECT_TRUE(store_->FinishDelivery(w4[0].seq).ok()) << "unknown seq is OK";
  EXPECT_TRUE(store_->RetryDelivery(w4[0].seq, 2, t0).ok());

  ASSERT_TRUE(store_->DropDeliveries("g2").ok());
  stats = store_->OutboxStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->first, 1);
  EXPECT_EQ(stats->second, t0 + absl::Seconds(1));
  ASSERT_TRUE(store_->DropDeliveries("g1").ok());
  EXPECT_EQ(store_->OutboxStats().value().first, 0);
}

TEST_P(StoreConformanceTest, OutboxIsWrittenOnlyWithItsChange) {
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  Record stale = *store_->Get("g1").value();  // version 1: stale after next
  ASSERT_TRUE(Advance(*store_, "g1", v1::Generation::STATE_GENERATING).ok());
  ++stale.version;
  stale.generation.set_revision(2);
  ASSERT_EQ(store_->Update(stale, {MakeDelivery("g1", 2, kBase)}).code(),
            StatusCode::kAborted);
  EXPECT_EQ(store_->OutboxStats().value().first, 0)
      << "a refused compare-and-set must not queue its deliveries";

  // Deliveries go with a deleted generation.
  ASSERT_TRUE(Advance(*store_, "g1", v1::Generation::STATE_QUEUED,
                      {MakeDelivery("g1", 3, kBase)})
                  .ok());
  EXPECT_EQ(store_->OutboxStats().value().first, 1);
  ASSERT_TRUE(store_->Delete("g1", 3).ok());
  EXPECT_EQ(store_->OutboxStats().value().first, 0);
}

TEST_P(StoreConformanceTest, GoneGenerationQueuesNoMoreDeliveries) {
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  Record flagged = Make("g2");
  flagged.webhooks_gone = true;  // Insert ignores it
  ASSERT_TRUE(store_->Insert(flagged, Admission{}, nullptr).ok());
  EXPECT_FALSE(store_->Get("g2").value()->webhooks_gone);
  ASSERT_TRUE(Advance(*store_, "g1", v1::Generation::STATE_GENERATING,
                      {MakeDelivery("g1", 2, kBase)})
                  .ok());
  ASSERT_TRUE(Advance(*store_, "g2", v1::Generation::STATE_GENERATING,
                      {MakeDelivery("g2", 2, kBase)})
                  .ok());
  ASSERT_EQ(store_->OutboxStats().value().first, 2);
  // The poller read g1 before its receiver said 410 ...
  Record before = *store_->Get("g1").value();
  EXPECT_FALSE(before.webhooks_gone);

  ASSERT_TRUE(store_->DropDeliveries("g1").ok());
  Record gone = *store_->Get("g1").value();
  EXPECT_TRUE(gone.webhooks_gone);
  EXPECT_EQ(gone.version, before.version) << "not a new version";
  EXPECT_EQ(gone.generation.revision(), 2) << "not a new revision";
  EXPECT_FALSE(store_->Get("g2").value()->webhooks_gone);
  EXPECT_EQ(store_->OutboxStats().value().first, 1);

  // ... and writes its next change from that copy: the compare-and-set
  // holds (the mark is beside the record), the delivery is left out.
  ++before.version;
  before.generation.set_revision(3);
  before.generation.set_state(v1::Generation::STATE_COMPLETED);
  before.generation.set_done(true);
  ASSERT_TRUE(store_->Update(before, {MakeDelivery("g1", 3, kBase)}).ok());
  EXPECT_EQ(store_->Get("g1").value()->generation.revision(), 3);
  EXPECT_TRUE(store_->Get("g1").value()->webhooks_gone)
      << "an Update from a copy without the mark keeps it";
  ASSERT_TRUE(Advance(*store_, "g1", v1::Generation::STATE_COMPLETED,
                      {MakeDelivery("g1", 4, kBase)})
                  .ok());
  // Other generations' deliveries are queued as before.
  ASSERT_TRUE(Advance(*store_, "g2", v1::Generation::STATE_COMPLETED,
                      {MakeDelivery("g2", 3, kBase)})
                  .ok());
  std::vector<Delivery> due =
      store_->ClaimDeliveries("w", kBase, kBase + absl::Minutes(1), 10).value();
  std::vector<std::string> queued;
  for (const Delivery& d : due) {
    queued.push_back(absl::StrCat(d.generation_id, ".", d.revision));
  }
  EXPECT_THAT(queued, ElementsAre("g2.2", "g2.3"));

  // The mark shows wherever records are read.
  ASSERT_TRUE(store_->Insert(Make("g3"), Admission{}, nullptr).ok());
  ASSERT_TRUE(store_->DropDeliveries("g3").ok());
  std::vector<Record> claimed =
      store_->ClaimActive("A", kBase, kBase + absl::Minutes(1), 10).value();
  ASSERT_EQ(Ids(claimed), std::vector<std::string>{"g3"});
  EXPECT_TRUE(claimed[0].webhooks_gone);
  EXPECT_TRUE(store_->DropDeliveries("missing").ok());
}

TEST_P(StoreConformanceTest, GoneRacingAnUpdateLeavesNoDelivery) {
  // The poller keeps writing changes with deliveries while the dispatcher
  // records a 410: whichever commits first, nothing of g1 stays queued.
  constexpr int kWrites = 40;
  ASSERT_TRUE(store_->Insert(Make("g1"), Admission{}, nullptr).ok());
  std::atomic<int> written{0};
  std::atomic<bool> writer_done{false};
  absl::Status writer_status;
  std::thread writer([&] {
    struct Done {
      std::atomic<bool>& flag;
      ~Done() { flag.store(true); }
    } done{writer_done};
    for (int i = 0; i < kWrites; ++i) {
      absl::StatusOr<std::optional<Record>> got = store_->Get("g1");
      if (!got.ok() || !got->has_value()) {
        writer_status = absl::InternalError("g1 unreadable");
        return;
      }
      Record r = **got;
      ++r.version;
      r.generation.set_revision(r.generation.revision() + 1);
      r.generation.set_state(v1::Generation::STATE_GENERATING);
      absl::Status s = store_->Update(
          r, {MakeDelivery("g1", r.generation.revision(), kBase)});
      if (!s.ok()) {
        writer_status = s;
        return;
      }
      written.fetch_add(1);
    }
  });
  while (written.load() < kWrites / 4 && !writer_done.load()) {
    std::this_thread::yield();
  }
  absl::Status dropped = store_->DropDeliveries("g1");
  writer.join();
  ASSERT_TRUE(writer_status.ok()) << writer_status;
  ASSERT_TRUE(dropped.ok()) << dropped;
  EXPECT_EQ(store_->Get("g1").value()->generation.revision(), 1 + kWrites);
  EXPECT_EQ(store_->OutboxStats().value().first, 0);
  EXPECT_TRUE(store_->ClaimDeliveries("w", kBase, kBase + absl::Minutes(1), 100)
                  ->empty());
}

// ---- Samples ---------------------------------------------------------------

TEST_P(StoreConformanceTest, SamplesNewestFirstAndBounded) {
  constexpr int kAdded = kSamplesKept + 10;
  for (int i = 0; i < kAdded; ++i) {
    DurationSample s;
    s.model = "kling";
    s.duration_seconds = 5;
    // Out of order, to check the order is by `completed`.
    const int slot = (i * 7) % kAdded;
    s.completed = kBase + absl::Seconds(slot);
    s.took = absl::Seconds(300 + slot);
    ASSERT_TRUE(store_->AddSample(s).ok()) << i;
  }
  for (int i = 0; i < 3; ++i) {
    DurationSample s;
    s.model = "kling";
    s.duration_seconds = 10;
    s.took = absl::Minutes(13) + absl::Milliseconds(i);
    s.completed = kBase + absl::Seconds(i);
    ASSERT_TRUE(store_->AddSample(s).ok());
  }
  absl::StatusOr<std::vector<DurationSample>> all =
      store_->RecentSamples("kling", 5, 100000);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), static_cast<size_t>(kSamplesKept));
  for (size_t i = 0; i < all->size(); ++i) {
    const absl::Time want = kBase + absl::Seconds(kAdded - 1 - i);
    ASSERT_EQ((*all)[i].completed, want) << i;
    EXPECT_EQ((*all)[i].took, absl::Seconds(300 + kAdded - 1 - i));
    EXPECT_EQ((*all)[i].model, "kling");
    EXPECT_EQ((*all)[i].duration_seconds, 5);
  }
  absl::StatusOr<std::vector<DurationSample>> three =
      store_->RecentSamples("kling", 5, 3);
  ASSERT_TRUE(three.ok());
  ASSERT_EQ(three->size(), 3u);
  EXPECT_EQ((*three)[0].completed, kBase + absl::Seconds(kAdded - 1));
  absl::StatusOr<std::vector<DurationSample>> ten =
      store_->RecentSamples("kling", 10, 50);
  ASSERT_TRUE(ten.ok());
  ASSERT_EQ(ten->size(), 3u);
  EXPECT_EQ((*ten)[0].took, absl::Minutes(13) + absl::Milliseconds(2));
  EXPECT_TRUE(store_->RecentSamples("other", 5, 10)->empty());
}

// ---- Concurrency -----------------------------------------------------------

TEST_P(StoreConformanceTest, ConcurrentInsertsAllLand) {
  constexpr int kThreads = 4, kEach = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < kEach; ++i) {
        Record r = Make(Spec{
            absl::StrCat("t", t, "_", i), "a", kBase + absl::Milliseconds(i),
            v1::Generation::STATE_QUEUED, absl::StrCat("req-", t, "-", i)});
        EXPECT_TRUE(store_->Insert(r, Admission{}, nullptr).ok());
        EXPECT_TRUE(store_->Get(r.generation.id()).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  ListQuery q;
  q.page_size = 1000;
  absl::StatusOr<ListPage> page = store_->List(q);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->generations.size(), static_cast<size_t>(kThreads * kEach));
  absl::StatusOr<std::vector<Record>> claimed =
      store_->ClaimActive("A", kBase, kBase + absl::Minutes(1), 1000);
  ASSERT_TRUE(claimed.ok());
  EXPECT_EQ(claimed->size(), static_cast<size_t>(kThreads * kEach));
}

}  // namespace
}  // namespace videogen::store::conformance
