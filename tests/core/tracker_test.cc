#include "server/core/tracker.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/generation_record.h"
#include "tests/core/fake_upstream.h"
#include "tests/core/test_util.h"

namespace videogen::core {
namespace {

using ::testing::ElementsAre;
using testing::FakeUpstream;
using ::testing::HasSubstr;
using testing::OrderLog;
using testing::RecordingSink;
using testing::Snap;
using testing::TestStore;
using upstream::TaskState;
using State = v1::Generation::State;

constexpr absl::Duration kInitialDelay = absl::Seconds(2);
constexpr absl::Duration kInterval = absl::Seconds(5);

TrackerOptions Options() {
  TrackerOptions o;
  o.poll_initial_delay = kInitialDelay;
  o.poll_interval = kInterval;
  o.poll_jitter = 0;
  o.error_backoff_initial = absl::Seconds(1);
  o.error_backoff_max = absl::Seconds(8);
  o.generation_deadline = absl::Minutes(30);
  o.seed = 42;
  return o;
}

v1::GenerateRequest Request(std::string request_id = "") {
  v1::GenerateRequest r;
  r.set_request_id(std::move(request_id));
  r.set_model("klingai/v2-master-text-to-video");
  r.set_prompt("a red fox running through snow");
  r.set_aspect_ratio("16:9");
  r.set_duration_seconds(5);
  r.set_cfg_scale(0.5f);
  (*r.mutable_labels())["team"] = "a";
  return r;
}

upstream::Snapshot Completed() {
  upstream::Snapshot s = Snap(TaskState::kCompleted, "completed");
  s.video = upstream::VideoInfo{"https://cdn.example/v.mp4", "video/mp4",
                                "v.mp4", 1234, 5.0};
  s.tokens_used = 120000;
  return s;
}

class TrackerTest : public ::testing::Test {
 protected:
  TrackerTest() { Restart(Options()); }

  void Restart(TrackerOptions options) {
    tracker_.reset();
    tracker_ = std::make_unique<Tracker>(options, &upstream_, &store_, &clock_);
  }

  // Creates and expects `done` to have run before Create returned.
  absl::StatusOr<GenerationPtr> CreateNow(const v1::GenerateRequest& r,
                                          RequestContext ctx = {}) {
    absl::StatusOr<GenerationPtr> out = absl::UnknownError("not called");
    bool called = false;
    tracker_->Create(r, ctx, [&](absl::StatusOr<GenerationPtr> g) {
      out = std::move(g);
      called = true;
    });
    EXPECT_TRUE(called);
    return out;
  }

  GenerationPtr MustCreate(const v1::GenerateRequest& r) {
    absl::StatusOr<GenerationPtr> g = CreateNow(r);
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? *g : nullptr;
  }

  // Moves the clock and runs the polls that are due.
  absl::Time Step(absl::Duration d) {
    clock_.Advance(d);
    return tracker_->RunDuePolls();
  }

  std::shared_ptr<RecordingSink> Watch(const std::string& id,
                                       int64_t after_revision = 0) {
    auto sink = std::make_shared<RecordingSink>();
    absl::StatusOr<Subscription> sub =
        tracker_->Subscribe(id, after_revision, sink);
    EXPECT_TRUE(sub.ok()) << sub.status();
    return sink;
  }

  store::Record Stored(const std::string& id) {
    auto r = store_.Get(id);
    EXPECT_TRUE(r.ok() && r->has_value());
    return r.ok() && r->has_value() ? **r : store::Record{};
  }

  FakeClock clock_;
  FakeUpstream upstream_;
  TestStore store_;
  std::unique_ptr<Tracker> tracker_;
};

// ---- Create ----------------------------------------------------------------

TEST_F(TrackerTest, CreateSubmitsAndReturnsQueuedRevisionOne) {
  const absl::Time start = clock_.Now();
  RequestContext ctx;
  ctx.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  absl::StatusOr<GenerationPtr> g = CreateNow(Request("r1"), ctx);
  ASSERT_TRUE(g.ok()) << g.status();
  const v1::Generation& gen = **g;
  EXPECT_EQ(gen.id().size(), 22u);
  for (char c : gen.id()) {
    EXPECT_TRUE(absl::ascii_isalnum(c) || c == '-' || c == '_') << gen.id();
  }
  EXPECT_EQ(gen.state(), v1::Generation::STATE_QUEUED);
  EXPECT_EQ(gen.revision(), 1);
  EXPECT_EQ(gen.upstream_id(), "up-1");
  EXPECT_EQ(gen.upstream_status(), "queued");
  EXPECT_FALSE(gen.done());
  EXPECT_EQ(gen.request().prompt(), "a red fox running through snow");
  EXPECT_EQ(gen.labels().at("team"), "a");
  EXPECT_EQ(FromTimestamp(gen.create_time()), start);
  EXPECT_EQ(FromTimestamp(gen.update_time()), start);

  ASSERT_EQ(upstream_.submit_count(), 1);
  const upstream::SubmitRequest s = upstream_.submits()[0];
  EXPECT_EQ(s.client_request_id, gen.id());
  EXPECT_EQ(s.prompt, "a red fox running through snow");
  EXPECT_EQ(s.model, "klingai/v2-master-text-to-video");
  EXPECT_EQ(s.aspect_ratio, "16:9");
  EXPECT_EQ(s.duration_seconds, 5);
  ASSERT_TRUE(s.cfg_scale.has_value());
  EXPECT_DOUBLE_EQ(*s.cfg_scale, 0.5);
  EXPECT_EQ(s.traceparent, ctx.traceparent);

  store::Record rec = Stored(gen.id());
  EXPECT_EQ(rec.generation.revision(), 1);
  EXPECT_EQ(rec.generation.upstream_id(), "up-1");
  EXPECT_EQ(rec.deadline, start + absl::Minutes(30));
}

TEST_F(TrackerTest, IdsAreUnique) {
  std::set<std::string> ids;
  for (int i = 0; i < 200; ++i) ids.insert(MustCreate(Request())->id());
  EXPECT_EQ(ids.size(), 200u);
}

// A leading '-' makes `videogen watch ID` parse the id as a flag. 1 in 64
// random ids would start with it, so 1,000 ids exercise the guard.
TEST_F(TrackerTest, IdsNeverStartWithADash) {
  for (int i = 0; i < 1000; ++i) {
    const std::string id = MustCreate(Request())->id();
    ASSERT_NE(id.front(), '-') << id;
  }
}

TEST_F(TrackerTest, PollLagIsReportedAgainstTheSchedule) {
  std::vector<absl::Duration> lags;
  TrackerOptions options = Options();
  options.on_poll_lag = [&](absl::Duration lag) { lags.push_back(lag); };
  Restart(options);
  MustCreate(Request());
  Step(kInitialDelay + absl::Seconds(3));  // the poller ran 3 s late
  ASSERT_EQ(lags.size(), 1u);
  EXPECT_EQ(lags[0], absl::Seconds(3));
}

TEST_F(TrackerTest, IntentIsStoredBeforeTheSubmitAnswers) {
  upstream_.HoldSubmits();
  bool called = false;
  tracker_->Create(Request("r1"), {},
                   [&](absl::StatusOr<GenerationPtr>) { called = true; });
  EXPECT_FALSE(called);
  ASSERT_EQ(upstream_.submit_count(), 1);
  const std::string id = upstream_.submits()[0].client_request_id;
  store::Record intent = Stored(id);
  EXPECT_EQ(intent.generation.revision(), 0);
  EXPECT_TRUE(intent.generation.upstream_id().empty());
  EXPECT_EQ(intent.generation.state(), v1::Generation::STATE_QUEUED);
  EXPECT_EQ(intent.deadline, clock_.Now() + absl::Minutes(30));

  upstream_.ResolveSubmits(upstream::SubmitResult{"up-9", "queued"});
  EXPECT_TRUE(called);
  EXPECT_EQ(Stored(id).generation.upstream_id(), "up-9");
  EXPECT_EQ(Stored(id).generation.revision(), 1);
}

TEST_F(TrackerTest, StoreFailureOnCreateSubmitsNothing) {
  store_.FailWrites(absl::UnavailableError("disk gone"));
  absl::StatusOr<GenerationPtr> g = CreateNow(Request("r1"));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(upstream_.submit_count(), 0);
}

TEST_F(TrackerTest, SubmitRejectionRemovesTheRecordAndAllowsRetry) {
  upstream_.set_submit_result(absl::FailedPreconditionError("out of credits"));
  absl::StatusOr<GenerationPtr> g = CreateNow(Request("r1"));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_.inner().size(), 0u);
  EXPECT_EQ(upstream_.poll_count(), 0);
  auto found = store_.GetByRequestId("r1");
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());

  upstream_.set_submit_result(upstream::SubmitResult{"up-2", "queued"});
  g = CreateNow(Request("r1"));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->upstream_id(), "up-2");
  EXPECT_EQ(upstream_.submit_count(), 2);
}

TEST_F(TrackerTest, SubmitRejectionReachesEveryWaiter) {
  upstream_.HoldSubmits();
  std::vector<absl::Status> results;
  for (int i = 0; i < 3; ++i) {
    tracker_->Create(Request("r1"), {}, [&](absl::StatusOr<GenerationPtr> g) {
      results.push_back(g.status());
    });
  }
  EXPECT_TRUE(results.empty());
  upstream_.ResolveSubmits(absl::UnauthenticatedError("bad key"));
  ASSERT_EQ(results.size(), 3u);
  for (const absl::Status& s : results) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(upstream_.submit_count(), 1);
}

// ---- Idempotency -----------------------------------------------------------

TEST_F(TrackerTest, SameRequestIdSameParametersJoins) {
  GenerationPtr a = MustCreate(Request("r1"));
  GenerationPtr b = MustCreate(Request("r1"));
  EXPECT_EQ(a->id(), b->id());
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, SameRequestIdDifferentParametersIsAlreadyExists) {
  GenerationPtr a = MustCreate(Request("r1"));
  v1::GenerateRequest other = Request("r1");
  other.set_prompt("a blue fox");
  absl::StatusOr<GenerationPtr> b = CreateNow(other);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(b.status().message(), HasSubstr("r1"));
  EXPECT_THAT(b.status().message(), HasSubstr("different parameters"));

  v1::GenerateRequest relabelled = Request("r1");
  (*relabelled.mutable_labels())["team"] = "b";
  EXPECT_EQ(CreateNow(relabelled).status().code(),
            absl::StatusCode::kAlreadyExists);
  v1::GenerateRequest no_cfg = Request("r1");
  no_cfg.clear_cfg_scale();
  EXPECT_EQ(CreateNow(no_cfg).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, EmptyRequestIdIsNotIdempotent) {
  EXPECT_NE(MustCreate(Request())->id(), MustCreate(Request())->id());
  EXPECT_EQ(upstream_.submit_count(), 2);
}

TEST_F(TrackerTest, FiftyRacingIdenticalCreatesSubmitOnce) {
  for (bool hold : {false, true}) {
    SCOPED_TRACE(hold ? "submit held" : "submit answers at once");
    if (hold) upstream_.HoldSubmits();
    const std::string rid = hold ? "race-held" : "race-now";
    const int before = upstream_.submit_count();
    absl::Mutex mu;
    std::vector<std::string> ids;
    std::atomic<int> errors{0};
    absl::Notification go;
    std::vector<std::thread> threads;
    for (int i = 0; i < 50; ++i) {
      threads.emplace_back([&] {
        go.WaitForNotification();
        tracker_->Create(Request(rid), {},
                         [&](absl::StatusOr<GenerationPtr> g) {
                           if (!g.ok()) {
                             ++errors;
                             return;
                           }
                           absl::MutexLock lock(&mu);
                           ids.push_back((*g)->id());
                         });
      });
    }
    go.Notify();
    for (std::thread& t : threads) t.join();
    if (hold) {
      upstream_.ResolveSubmits(upstream::SubmitResult{"up-race", "queued"});
    }
    EXPECT_EQ(upstream_.submit_count() - before, 1);
    EXPECT_EQ(errors.load(), 0);
    absl::MutexLock lock(&mu);
    ASSERT_EQ(ids.size(), 50u);
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 1u);
  }
}

TEST_F(TrackerTest, IdempotencyHoldsAfterTheGenerationIsTerminal) {
  GenerationPtr g = MustCreate(Request("r1"));
  tracker_->Cancel(g->id()).IgnoreError();
  GenerationPtr again = MustCreate(Request("r1"));
  EXPECT_EQ(again->id(), g->id());
  EXPECT_EQ(again->state(), v1::Generation::STATE_CANCELLED);
  v1::GenerateRequest other = Request("r1");
  other.set_duration_seconds(10);
  EXPECT_EQ(CreateNow(other).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, IdempotencySurvivesRestart) {
  GenerationPtr g = MustCreate(Request("r1"));
  Restart(Options());
  ASSERT_TRUE(tracker_->Recover().ok());
  GenerationPtr again = MustCreate(Request("r1"));
  EXPECT_EQ(again->id(), g->id());
  EXPECT_EQ(upstream_.submit_count(), 1);
}

// ---- Transitions -----------------------------------------------------------

TEST_F(TrackerTest, FirstPollWaitsForTheInitialDelay) {
  const absl::Time start = clock_.Now();
  GenerationPtr g = MustCreate(Request());
  EXPECT_EQ(tracker_->RunDuePolls(), start + kInitialDelay);
  EXPECT_EQ(upstream_.poll_count(), 0);
  Step(kInitialDelay - absl::Milliseconds(1));
  EXPECT_EQ(upstream_.poll_count(), 0);
  Step(absl::Milliseconds(1));
  ASSERT_EQ(upstream_.poll_count(), 1);
  EXPECT_EQ(upstream_.polls()[0].upstream_id, "up-1");
  EXPECT_EQ(upstream_.polls()[0].client_request_id, g->id());
}

TEST_F(TrackerTest, QueuedGeneratingCompleted) {
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  const absl::Time next = Step(kInitialDelay);
  EXPECT_EQ(next, clock_.Now() + kInterval);
  upstream_.PushPoll(Completed());
  EXPECT_EQ(Step(kInterval), absl::InfiniteFuture());

  std::vector<EventPtr> events = sink->events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0]->type(), v1::GenerationEvent::TYPE_UPDATE);
  EXPECT_EQ(events[0]->generation().state(), v1::Generation::STATE_GENERATING);
  EXPECT_EQ(events[0]->generation().revision(), 2);
  EXPECT_EQ(events[0]->generation().upstream_status(), "generating");
  const v1::Generation& done = events[1]->generation();
  EXPECT_EQ(done.state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(done.revision(), 3);
  EXPECT_TRUE(done.done());
  EXPECT_EQ(done.video().url(), "https://cdn.example/v.mp4");
  EXPECT_EQ(done.video().content_type(), "video/mp4");
  EXPECT_EQ(done.video().file_size_bytes(), 1234);
  EXPECT_EQ(done.usage().tokens_used(), 120000);
  EXPECT_FALSE(done.has_error());
  EXPECT_EQ(FromTimestamp(done.update_time()), clock_.Now());
  EXPECT_EQ(FromTimestamp(events[1]->observe_time()), clock_.Now());

  // Terminal: no more polls, and Get reads it back from the store.
  Step(absl::Hours(1));
  EXPECT_EQ(upstream_.poll_count(), 2);
  absl::StatusOr<GenerationPtr> got = tracker_->Get(g->id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)->revision(), 3);
  EXPECT_EQ(Stored(g->id()).generation.state(),
            v1::Generation::STATE_COMPLETED);
}

TEST_F(TrackerTest, QueuedStraightToCompleted) {
  GenerationPtr g = MustCreate(Request());
  upstream_.PushPoll(Completed());
  Step(kInitialDelay);
  auto got = tracker_->Get(g->id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)->state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ((*got)->revision(), 2);
}

TEST_F(TrackerTest, GeneratingToFailedCarriesTheUpstreamError) {
  GenerationPtr g = MustCreate(Request());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "active"));
  Step(kInitialDelay);
  upstream::Snapshot failed = Snap(TaskState::kFailed, "error");
  failed.error = upstream::TaskError{"ContentPolicy", "prompt rejected"};
  upstream_.PushPoll(failed);
  Step(kInterval);
  auto got = tracker_->Get(g->id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)->state(), v1::Generation::STATE_FAILED);
  EXPECT_TRUE((*got)->done());
  EXPECT_EQ((*got)->error().code(), 13);
  EXPECT_EQ((*got)->error().reason(), "UPSTREAM_TASK_ERROR");
  EXPECT_THAT((*got)->error().message(), HasSubstr("ContentPolicy"));
  EXPECT_THAT((*got)->error().message(), HasSubstr("prompt rejected"));
  EXPECT_EQ((*got)->revision(), 3);
}

TEST_F(TrackerTest, QueuedToFailedAndGeneratingToCancelled) {
  GenerationPtr a = MustCreate(Request());
  GenerationPtr b = MustCreate(Request());
  upstream_.PushPoll(Snap(TaskState::kFailed, "failed"));      // a
  upstream_.PushPoll(Snap(TaskState::kGenerating, "active"));  // b
  Step(kInitialDelay);
  auto got_a = tracker_->Get(a->id());
  ASSERT_TRUE(got_a.ok());
  EXPECT_EQ((*got_a)->state(), v1::Generation::STATE_FAILED);
  EXPECT_EQ((*got_a)->error().reason(), "UPSTREAM_TASK_ERROR");
  EXPECT_THAT((*got_a)->error().message(), HasSubstr("failed"));
  EXPECT_EQ((*tracker_->Get(b->id()))->state(),
            v1::Generation::STATE_GENERATING);
  absl::StatusOr<GenerationPtr> c = tracker_->Cancel(b->id());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->state(), v1::Generation::STATE_CANCELLED);
  EXPECT_EQ((*c)->revision(), 3);
  EXPECT_EQ((*c)->upstream_status(), "active");
}

TEST_F(TrackerTest, UnsetCfgScaleStaysUnsetUpstream) {
  v1::GenerateRequest r = Request();
  r.clear_cfg_scale();
  MustCreate(r);
  ASSERT_EQ(upstream_.submit_count(), 1);
  EXPECT_FALSE(upstream_.submits()[0].cfg_scale.has_value());
}

TEST_F(TrackerTest, PollNotFoundFails) {
  GenerationPtr g = MustCreate(Request());
  upstream_.PushPoll(absl::NotFoundError("404 from upstream"));
  Step(kInitialDelay);
  auto got = tracker_->Get(g->id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)->state(), v1::Generation::STATE_FAILED);
  EXPECT_EQ((*got)->error().code(), 5);
  EXPECT_EQ((*got)->error().reason(), "UPSTREAM_NOT_FOUND");
  Step(absl::Hours(1));
  EXPECT_EQ(upstream_.poll_count(), 1);
}

TEST_F(TrackerTest, UnchangedPollMakesNoEventAndNoWrite) {
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  const int puts = store_.put_count();
  upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  Step(kInitialDelay);
  Step(kInterval);
  EXPECT_EQ(upstream_.poll_count(), 2);
  EXPECT_EQ(sink->size(), 0u);
  EXPECT_EQ(store_.put_count(), puts);
  EXPECT_EQ((*tracker_->Get(g->id()))->revision(), 1);
}

TEST_F(TrackerTest, StatusOnlyChangeIsAnEvent) {
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  upstream_.PushPoll(Snap(TaskState::kQueued, "waiting"));
  Step(kInitialDelay);
  ASSERT_EQ(sink->size(), 1u);
  EXPECT_EQ(sink->last()->generation().state(), v1::Generation::STATE_QUEUED);
  EXPECT_EQ(sink->last()->generation().upstream_status(), "waiting");
  EXPECT_EQ(sink->last()->generation().revision(), 2);
}

TEST_F(TrackerTest, UnknownStatusKeepsStateAndShowsTheRawString) {
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kUnknown, "rendering-frames"));
  upstream_.PushPoll(Snap(TaskState::kUnknown, "rendering-frames"));
  Step(kInitialDelay);
  Step(kInterval);
  Step(kInterval);
  EXPECT_THAT(sink->revisions(), ElementsAre(2, 3));
  const v1::Generation& last = sink->last()->generation();
  EXPECT_EQ(last.state(), v1::Generation::STATE_GENERATING);
  EXPECT_EQ(last.upstream_status(), "rendering-frames");
  EXPECT_FALSE(last.done());
}

TEST_F(TrackerTest, GeneratingDoesNotGoBackToQueued) {
  GenerationPtr g = MustCreate(Request());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  Step(kInitialDelay);
  Step(kInterval);
  auto got = tracker_->Get(g->id());
  EXPECT_EQ((*got)->state(), v1::Generation::STATE_GENERATING);
  EXPECT_EQ((*got)->upstream_status(), "queued");
}

TEST_F(TrackerTest, TerminalStateNeverChanges) {
  v1::Generation g;
  g.set_state(v1::Generation::STATE_COMPLETED);
  g.set_done(true);
  EXPECT_FALSE(ApplySnapshot(Snap(TaskState::kFailed, "error"), &g));
  EXPECT_FALSE(MarkCancelled(&g));
  EXPECT_FALSE(MarkFailed(4, "DEADLINE_EXCEEDED", "late", &g));
  EXPECT_EQ(g.state(), v1::Generation::STATE_COMPLETED);
  EXPECT_FALSE(g.has_error());
}

// ---- Schedule: one poll in flight, backoff, deadline -----------------------

TEST_F(TrackerTest, OnlyOnePollInFlight) {
  GenerationPtr g = MustCreate(Request());
  Step(kInitialDelay);
  ASSERT_EQ(upstream_.pending_poll_count(), 1);
  Step(absl::Minutes(5));
  Step(absl::Minutes(5));
  EXPECT_EQ(upstream_.poll_count(), 1);
  upstream_.ResolvePolls(Snap(TaskState::kGenerating, "generating"));
  EXPECT_EQ((*tracker_->Get(g->id()))->state(),
            v1::Generation::STATE_GENERATING);
  Step(kInterval);
  EXPECT_EQ(upstream_.poll_count(), 2);
}

TEST_F(TrackerTest, ErrorsBackOffExponentiallyUpToTheMax) {
  GenerationPtr g = MustCreate(Request());
  std::vector<absl::Duration> gaps;
  absl::Time next = Step(kInitialDelay);
  for (int i = 0; i < 6; ++i) {
    // Polls answer UNAVAILABLE; RunDuePolls reports the next due time.
    upstream_.ResolvePolls(absl::UnavailableError("503"));
    next = tracker_->RunDuePolls();
    gaps.push_back(next - clock_.Now());
    clock_.Advance(next - clock_.Now());
    tracker_->RunDuePolls();
  }
  EXPECT_THAT(
      gaps, ElementsAre(absl::Seconds(1), absl::Seconds(2), absl::Seconds(4),
                        absl::Seconds(8), absl::Seconds(8), absl::Seconds(8)));
  // A success resets to the normal interval.
  upstream_.ResolvePolls(Snap(TaskState::kQueued, "queued"));
  EXPECT_EQ(tracker_->RunDuePolls(), clock_.Now() + kInterval);
  EXPECT_FALSE((*tracker_->Get(g->id()))->done());
}

TEST_F(TrackerTest, BackoffGrowsWithJitter) {
  TrackerOptions o = Options();
  o.poll_jitter = 0.2;
  o.error_backoff_max = absl::Seconds(64);
  Restart(o);
  MustCreate(Request());
  Step(kInitialDelay);
  std::vector<absl::Duration> gaps;
  for (int i = 0; i < 6; ++i) {
    upstream_.ResolvePolls(absl::DeadlineExceededError("timeout"));
    const absl::Time next = tracker_->RunDuePolls();
    gaps.push_back(next - clock_.Now());
    clock_.Advance(next - clock_.Now());
    tracker_->RunDuePolls();
  }
  for (size_t i = 1; i < gaps.size(); ++i) {
    EXPECT_GT(gaps[i], gaps[i - 1]) << i;
  }
  EXPECT_GE(gaps[0], absl::Milliseconds(800));
  EXPECT_LE(gaps[0], absl::Milliseconds(1200));
}

TEST_F(TrackerTest, IntervalJitterStaysInRange) {
  TrackerOptions o = Options();
  o.poll_jitter = 0.2;
  Restart(o);
  MustCreate(Request());
  Step(kInitialDelay);
  std::set<int64_t> distinct;
  for (int i = 0; i < 20; ++i) {
    upstream_.ResolvePolls(Snap(TaskState::kQueued, "queued"));
    const absl::Duration gap = tracker_->RunDuePolls() - clock_.Now();
    EXPECT_GE(gap, absl::Seconds(4));
    EXPECT_LE(gap, absl::Seconds(6));
    distinct.insert(absl::ToInt64Milliseconds(gap));
    Step(gap);
  }
  EXPECT_GT(distinct.size(), 1u);
}

TEST_F(TrackerTest, DeadlineFailsTheGeneration) {
  TrackerOptions o = Options();
  o.generation_deadline = absl::Seconds(12);
  Restart(o);
  const absl::Time start = clock_.Now();
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  for (int i = 0; i < 10; ++i)
    upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  Step(kInitialDelay);  // t=2
  Step(kInterval);      // t=7
  // Next poll would be at t=12, which is the deadline itself.
  EXPECT_EQ(tracker_->RunDuePolls(), start + absl::Seconds(12));
  Step(kInterval);
  ASSERT_EQ(sink->size(), 1u);
  const v1::Generation& last = sink->last()->generation();
  EXPECT_EQ(last.state(), v1::Generation::STATE_FAILED);
  EXPECT_EQ(last.error().code(), 4);
  EXPECT_EQ(last.error().reason(), "DEADLINE_EXCEEDED");
  EXPECT_THAT(last.error().message(), HasSubstr("12s"));
  EXPECT_EQ(upstream_.poll_count(), 2);
  Step(absl::Hours(1));
  EXPECT_EQ(upstream_.poll_count(), 2);
}

// ---- Cancel ----------------------------------------------------------------

TEST_F(TrackerTest, CancelStopsPollingAndNotifies) {
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  Step(kInitialDelay);  // a poll is in flight
  absl::StatusOr<GenerationPtr> c = tracker_->Cancel(g->id());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->state(), v1::Generation::STATE_CANCELLED);
  EXPECT_TRUE((*c)->done());
  EXPECT_EQ((*c)->revision(), 2);
  EXPECT_FALSE((*c)->has_error());
  ASSERT_EQ(sink->size(), 1u);
  EXPECT_EQ(sink->last()->generation().state(),
            v1::Generation::STATE_CANCELLED);

  // The late poll answer changes nothing; no more polls.
  upstream_.ResolvePolls(Completed());
  Step(absl::Hours(1));
  EXPECT_EQ(upstream_.poll_count(), 1);
  EXPECT_EQ(sink->size(), 1u);

  absl::StatusOr<GenerationPtr> again = tracker_->Cancel(g->id());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->revision(), 2);
  EXPECT_EQ((*again)->state(), v1::Generation::STATE_CANCELLED);
  EXPECT_EQ(Stored(g->id()).generation.state(),
            v1::Generation::STATE_CANCELLED);
}

TEST_F(TrackerTest, CancelWhileSubmittingAnswersTheCreators) {
  upstream_.HoldSubmits();
  absl::StatusOr<GenerationPtr> created = absl::UnknownError("not called");
  tracker_->Create(Request("r1"), {},
                   [&](absl::StatusOr<GenerationPtr> g) { created = g; });
  const std::string id = upstream_.submits()[0].client_request_id;
  ASSERT_TRUE(tracker_->Cancel(id).ok());
  ASSERT_TRUE(created.ok());
  EXPECT_EQ((*created)->state(), v1::Generation::STATE_CANCELLED);
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-late", "queued"});
  Step(absl::Hours(1));
  EXPECT_EQ(upstream_.poll_count(), 0);
  EXPECT_EQ(Stored(id).generation.state(), v1::Generation::STATE_CANCELLED);
}

TEST_F(TrackerTest, UnknownIdsAreNotFound) {
  EXPECT_EQ(tracker_->Cancel("nope").status().code(),
            absl::StatusCode::kNotFound);
  absl::Status s = tracker_->Get("nope").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "generation \"nope\" not found");
  auto sink = std::make_shared<RecordingSink>();
  EXPECT_EQ(tracker_->Subscribe("nope", 0, sink).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(TrackerTest, CancelStoreFailureLeavesTheGenerationRunning) {
  GenerationPtr g = MustCreate(Request());
  store_.FailWrites(absl::UnavailableError("disk gone"));
  EXPECT_EQ(tracker_->Cancel(g->id()).status().code(),
            absl::StatusCode::kUnavailable);
  store_.FailWrites(absl::OkStatus());
  EXPECT_EQ((*tracker_->Get(g->id()))->state(), v1::Generation::STATE_QUEUED);
  Step(kInitialDelay);
  EXPECT_EQ(upstream_.poll_count(), 1);
}

// ---- Subscriptions ---------------------------------------------------------

TEST_F(TrackerTest, SubscribeSendsSnapshotOnlyWhenNewer) {
  GenerationPtr g = MustCreate(Request());
  auto fresh = Watch(g->id(), 0);
  auto current = Watch(g->id(), 1);
  ASSERT_EQ(fresh->size(), 1u);
  EXPECT_EQ(fresh->last()->type(), v1::GenerationEvent::TYPE_SNAPSHOT);
  EXPECT_EQ(fresh->last()->generation().revision(), 1);
  EXPECT_EQ(current->size(), 0u);
}

TEST_F(TrackerTest, SubscribeToTerminalFinishesAtOnce) {
  GenerationPtr g = MustCreate(Request());
  ASSERT_TRUE(tracker_->Cancel(g->id()).ok());
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = tracker_->Subscribe(g->id(), 0, sink);
  ASSERT_TRUE(sub.ok());
  EXPECT_TRUE(sub->finished);
  EXPECT_EQ(sub->id, 0u);
  ASSERT_EQ(sink->size(), 1u);
  EXPECT_EQ(sink->last()->type(), v1::GenerationEvent::TYPE_SNAPSHOT);
  EXPECT_EQ(sink->last()->generation().state(),
            v1::Generation::STATE_CANCELLED);

  auto seen = std::make_shared<RecordingSink>();
  sub = tracker_->Subscribe(g->id(), 2, seen);
  ASSERT_TRUE(sub.ok());
  EXPECT_TRUE(sub->finished);
  EXPECT_EQ(seen->size(), 0u);
}

TEST_F(TrackerTest, ThousandWatchersShareOnePoller) {
  auto run = [&](int watchers) {
    const int polls_before = upstream_.poll_count();
    GenerationPtr g = MustCreate(Request());
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (int i = 0; i < watchers; ++i) sinks.push_back(Watch(g->id(), 1));
    upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
    upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
    upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
    upstream_.PushPoll(Completed());
    Step(kInitialDelay);
    for (int i = 0; i < 5; ++i) Step(kInterval);
    for (const auto& s : sinks) {
      EXPECT_THAT(s->revisions(), ElementsAre(2, 3));
    }
    // Every sink got the very same event objects.
    for (const auto& s : sinks) {
      EXPECT_EQ(s->events()[0].get(), sinks[0]->events()[0].get());
    }
    return upstream_.poll_count() - polls_before;
  };
  const int one = run(1);
  const int thousand = run(1000);
  EXPECT_EQ(one, 4);
  EXPECT_EQ(thousand, one);
}

TEST_F(TrackerTest, RevisionsGoUpByOneAndResumeHasNoDuplicatesOrGaps) {
  GenerationPtr g = MustCreate(Request());
  auto first = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = tracker_->Subscribe(g->id(), 0, first);
  ASSERT_TRUE(sub.ok());
  const std::vector<std::string> statuses = {"waiting", "active", "x-1",
                                             "x-2",     "x-3",    "x-4"};
  const TaskState states[] = {TaskState::kQueued,  TaskState::kGenerating,
                              TaskState::kUnknown, TaskState::kUnknown,
                              TaskState::kUnknown, TaskState::kUnknown};
  upstream_.PushPoll(Snap(states[0], statuses[0]));
  upstream_.PushPoll(Snap(states[1], statuses[1]));
  Step(kInitialDelay);
  Step(kInterval);
  // The client drops its stream after revision 3 and resumes from there.
  tracker_->Unsubscribe(sub->id);
  const int64_t last_seen = first->revisions().back();
  EXPECT_EQ(last_seen, 3);
  auto resumed = Watch(g->id(), last_seen);
  EXPECT_EQ(resumed->size(), 0u);  // nothing new yet: no duplicate
  for (int i = 2; i < 6; ++i) {
    upstream_.PushPoll(Snap(states[i], statuses[i]));
    Step(kInterval);
  }
  upstream_.PushPoll(Completed());
  Step(kInterval);
  std::vector<int64_t> all = first->revisions();
  for (int64_t r : resumed->revisions()) all.push_back(r);
  std::vector<int64_t> expected;
  for (int64_t r = 1; r <= 8; ++r) expected.push_back(r);
  EXPECT_EQ(all, expected);
  EXPECT_EQ(first->events()[0]->type(), v1::GenerationEvent::TYPE_SNAPSHOT);

  // Resuming after changes were missed: one SNAPSHOT of the newest state.
  auto late = Watch(g->id(), 4);
  EXPECT_THAT(late->revisions(), ElementsAre(8));
  EXPECT_EQ(late->last()->type(), v1::GenerationEvent::TYPE_SNAPSHOT);
  // Store revisions match.
  EXPECT_EQ(Stored(g->id()).generation.revision(), 8);
}

TEST_F(TrackerTest, TerminalEventDropsSubscriptions) {
  GenerationPtr g = MustCreate(Request());
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = tracker_->Subscribe(g->id(), 1, sink);
  ASSERT_TRUE(sub.ok());
  EXPECT_FALSE(sub->finished);
  ASSERT_TRUE(tracker_->Cancel(g->id()).ok());
  EXPECT_EQ(sink.use_count(), 1);  // the tracker let go of it
  tracker_->Unsubscribe(sub->id);  // harmless
}

TEST_F(TrackerTest, UnsubscribeStopsDelivery) {
  GenerationPtr g = MustCreate(Request());
  auto sink = std::make_shared<RecordingSink>();
  auto all = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = tracker_->Subscribe(g->id(), 1, sink);
  Subscription fh = tracker_->SubscribeAll(Filter{}, all);
  ASSERT_TRUE(sub.ok());
  tracker_->Unsubscribe(sub->id);
  tracker_->Unsubscribe(fh.id);
  const size_t all_before = all->size();
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);
  EXPECT_EQ(sink->size(), 0u);
  EXPECT_EQ(all->size(), all_before);
}

TEST_F(TrackerTest, FirehoseFiltersOnStatesAndLabels) {
  auto everything = std::make_shared<RecordingSink>();
  tracker_->SubscribeAll(Filter{}, everything);

  v1::GenerateRequest a = Request();
  v1::GenerateRequest b = Request();
  (*b.mutable_labels())["team"] = "b";
  GenerationPtr ga = MustCreate(a);
  GenerationPtr gb = MustCreate(b);
  GenerationPtr gc = MustCreate(a);
  ASSERT_TRUE(tracker_->Cancel(gc->id()).ok());
  // Created (rev 1 each) and one cancel, all seen by the unfiltered firehose.
  EXPECT_EQ(everything->size(), 4u);

  Filter team_a;
  team_a.labels["team"] = "a";
  auto only_a = std::make_shared<RecordingSink>();
  tracker_->SubscribeAll(team_a, only_a);
  // Snapshot of the non-terminal team-a generation only.
  ASSERT_EQ(only_a->size(), 1u);
  EXPECT_EQ(only_a->last()->type(), v1::GenerationEvent::TYPE_SNAPSHOT);
  EXPECT_EQ(only_a->last()->generation().id(), ga->id());

  Filter generating;
  generating.states = {v1::Generation::STATE_GENERATING};
  auto only_generating = std::make_shared<RecordingSink>();
  tracker_->SubscribeAll(generating, only_generating);
  EXPECT_EQ(only_generating->size(), 0u);

  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);  // both move to GENERATING
  upstream_.PushPoll(Completed());
  upstream_.PushPoll(Completed());
  Step(kInterval);  // both complete

  std::vector<std::string> a_ids;
  for (const EventPtr& e : only_a->events()) {
    EXPECT_EQ(e->generation().labels().at("team"), "a");
    a_ids.push_back(e->generation().id());
  }
  EXPECT_EQ(a_ids.size(), 3u);  // snapshot, GENERATING, COMPLETED
  ASSERT_EQ(only_generating->size(), 2u);
  for (const EventPtr& e : only_generating->events()) {
    EXPECT_EQ(e->type(), v1::GenerationEvent::TYPE_UPDATE);
    EXPECT_EQ(e->generation().state(), v1::Generation::STATE_GENERATING);
  }
  EXPECT_EQ(everything->size(), 8u);
}

TEST_F(TrackerTest, FirehoseHidesSubmitsInFlight) {
  upstream_.HoldSubmits();
  tracker_->Create(Request(), {}, [](absl::StatusOr<GenerationPtr>) {});
  auto all = std::make_shared<RecordingSink>();
  tracker_->SubscribeAll(Filter{}, all);
  EXPECT_EQ(all->size(), 0u);
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-1", "queued"});
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->last()->generation().revision(), 1);
}

TEST_F(TrackerTest, EveryChangeIsStoredBeforeItIsAnnounced) {
  OrderLog log;
  TestStore store(&log);
  Tracker tracker(Options(), &upstream_, &store, &clock_);
  auto firehose = std::make_shared<RecordingSink>(&log);
  tracker.SubscribeAll(Filter{}, firehose);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    tracker.Create(Request(), {}, [&](absl::StatusOr<GenerationPtr> g) {
      ASSERT_TRUE(g.ok());
      ids.push_back((*g)->id());
      auto sink = std::make_shared<RecordingSink>(&log);
      ASSERT_TRUE(tracker.Subscribe((*g)->id(), 1, sink).ok());
    });
  }
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kUnknown, "odd"));
  upstream_.PushPoll(absl::NotFoundError("gone"));
  clock_.Advance(kInitialDelay);
  tracker.RunDuePolls();
  upstream_.PushPoll(Completed());
  upstream_.PushPoll(Completed());
  clock_.Advance(kInterval);
  tracker.RunDuePolls();
  EXPECT_TRUE(tracker.Cancel(ids[0]).ok());  // already terminal: no event

  std::vector<std::string> entries = log.entries();
  int events = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (!absl::StartsWith(entries[i], "event:")) continue;
    ++events;
    const std::string put = "put:" + entries[i].substr(6);
    auto it = std::find(entries.begin(), entries.begin() + i, put);
    EXPECT_NE(it, entries.begin() + i) << entries[i] << " before its write";
  }
  EXPECT_GE(events, 10);
}

TEST_F(TrackerTest, StoreFailureDuringPollRetriesLater) {
  GenerationPtr g = MustCreate(Request());
  auto sink = Watch(g->id(), 1);
  store_.FailWrites(absl::UnavailableError("disk full"));
  upstream_.PushPoll(Completed());
  Step(kInitialDelay);
  EXPECT_EQ(sink->size(), 0u);  // not stored, so not announced
  EXPECT_FALSE((*tracker_->Get(g->id()))->done());
  store_.FailWrites(absl::OkStatus());
  upstream_.PushPoll(Completed());
  Step(absl::Seconds(1));  // error_backoff_initial
  ASSERT_EQ(sink->size(), 1u);
  EXPECT_EQ(sink->last()->generation().state(),
            v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(sink->last()->generation().revision(), 2);
}

// ---- Recover ---------------------------------------------------------------

store::Record RecordAt(absl::Time now, std::string id, std::string upstream_id,
                       int64_t revision) {
  store::Record r;
  r.generation.set_id(std::move(id));
  r.generation.set_state(v1::Generation::STATE_QUEUED);
  r.generation.set_revision(revision);
  r.generation.set_upstream_id(std::move(upstream_id));
  *r.generation.mutable_request() = Request("rec-" + r.generation.id());
  *r.generation.mutable_create_time() = ToTimestamp(now);
  *r.generation.mutable_update_time() = ToTimestamp(now);
  r.deadline = now + absl::Minutes(30);
  return r;
}

TEST_F(TrackerTest, RecoverFailsInterruptedSubmitsWithoutResubmitting) {
  ASSERT_TRUE(store_.Put(RecordAt(clock_.Now(), "intent", "", 0)).ok());
  Restart(Options());
  ASSERT_TRUE(tracker_->Recover().ok());
  Step(absl::Hours(1));
  EXPECT_EQ(upstream_.submit_count(), 0);
  EXPECT_EQ(upstream_.poll_count(), 0);
  const v1::Generation g = Stored("intent").generation;
  EXPECT_EQ(g.state(), v1::Generation::STATE_FAILED);
  EXPECT_TRUE(g.done());
  EXPECT_EQ(g.revision(), 1);
  EXPECT_EQ(g.error().code(), 2);
  EXPECT_EQ(g.error().reason(), "SUBMIT_INTERRUPTED");
  EXPECT_THAT(g.error().message(), HasSubstr("new request_id"));
  // The same request_id now returns the failed generation, not a new job.
  absl::StatusOr<GenerationPtr> again = CreateNow(Request("rec-intent"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->id(), "intent");
  EXPECT_EQ(upstream_.submit_count(), 0);
}

TEST_F(TrackerTest, RecoverResumesPolling) {
  ASSERT_TRUE(store_.Put(RecordAt(clock_.Now(), "q1", "up-q1", 1)).ok());
  Restart(Options());
  ASSERT_TRUE(tracker_->Recover().ok());
  auto sink = Watch("q1", 1);
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  tracker_->RunDuePolls();  // due at once
  ASSERT_EQ(upstream_.poll_count(), 1);
  EXPECT_EQ(upstream_.polls()[0].upstream_id, "up-q1");
  EXPECT_THAT(sink->revisions(), ElementsAre(2));
  upstream_.PushPoll(Completed());
  Step(kInterval);
  EXPECT_THAT(sink->revisions(), ElementsAre(2, 3));
  EXPECT_EQ(upstream_.submit_count(), 0);
  EXPECT_TRUE(Stored("q1").generation.done());
}

TEST_F(TrackerTest, RecoverPastTheDeadlineFails) {
  store::Record old = RecordAt(clock_.Now() - absl::Hours(1), "old", "up-o", 1);
  ASSERT_TRUE(store_.Put(old).ok());
  Restart(Options());
  ASSERT_TRUE(tracker_->Recover().ok());
  tracker_->RunDuePolls();
  EXPECT_EQ(upstream_.poll_count(), 0);
  EXPECT_EQ(Stored("old").generation.error().reason(), "DEADLINE_EXCEEDED");
}

// ---- Misc ------------------------------------------------------------------

TEST_F(TrackerTest, ListIsNewestFirst) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(MustCreate(Request())->id());
    clock_.Advance(absl::Seconds(1));
  }
  store::ListQuery q;
  q.page_size = 2;
  absl::StatusOr<store::ListPage> page = tracker_->List(q);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->generations.size(), 2u);
  EXPECT_EQ(page->generations[0].id(), ids[2]);
  EXPECT_EQ(page->generations[1].id(), ids[1]);
  EXPECT_TRUE(page->next.has_value());
}

TEST_F(TrackerTest, CountByState) {
  MustCreate(Request());
  GenerationPtr b = MustCreate(Request());
  ASSERT_TRUE(tracker_->Cancel(b->id()).ok());
  auto counts = tracker_->CountByState();
  EXPECT_EQ(counts[v1::Generation::STATE_QUEUED], 1);
  EXPECT_EQ(counts[v1::Generation::STATE_CANCELLED], 1);
}

TEST_F(TrackerTest, LateCallbacksAfterDestructionAreIgnored) {
  upstream_.HoldSubmits();
  tracker_->Create(Request(), {}, [](absl::StatusOr<GenerationPtr>) {});
  upstream_.set_submit_result(upstream::SubmitResult{"up-2", "queued"});
  MustCreate(Request());
  Step(kInitialDelay);  // one poll in flight
  ASSERT_EQ(upstream_.pending_poll_count(), 1);
  tracker_.reset();
  upstream_.ResolvePolls(Completed());
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-1", "queued"});
  SUCCEED();
}

TEST_F(TrackerTest, PollerThreadRunsPollsOnItsOwn) {
  TrackerOptions o = Options();
  o.poll_initial_delay = absl::ZeroDuration();
  Restart(o);
  tracker_->StartPoller();
  auto sink = std::make_shared<RecordingSink>();
  tracker_->SubscribeAll(Filter{}, sink);
  upstream_.PushPoll(Completed());
  MustCreate(Request());
  // The fake clock does not move: the poll was due at creation time.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (sink->size() < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  tracker_->StopPoller();
  ASSERT_EQ(sink->size(), 2u);
  EXPECT_TRUE(sink->last()->generation().done());
  tracker_->StopPoller();  // idempotent
}

TEST(TrackerRealClockTest, PollerFollowsAGenerationToTheEnd) {
  SystemClock clock;
  FakeUpstream upstream;
  TestStore store;
  TrackerOptions o = Options();
  o.poll_initial_delay = absl::Milliseconds(20);
  o.poll_interval = absl::Milliseconds(20);
  o.poll_jitter = 0.2;
  o.error_backoff_initial = absl::Milliseconds(20);
  Tracker tracker(o, &upstream, &store, &clock);
  tracker.StartPoller();
  upstream.PushPoll(Snap(TaskState::kQueued, "queued"));
  upstream.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream.PushPoll(absl::UnavailableError("blip"));
  upstream.PushPoll(Completed());
  absl::Notification created;
  std::string id;
  tracker.Create(Request(), {}, [&](absl::StatusOr<GenerationPtr> g) {
    ASSERT_TRUE(g.ok());
    id = (*g)->id();
    created.Notify();
  });
  ASSERT_TRUE(created.WaitForNotificationWithTimeout(absl::Seconds(30)));
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(tracker.Subscribe(id, 0, sink).ok());
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while ((sink->last() == nullptr || !sink->last()->generation().done()) &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  tracker.StopPoller();
  ASSERT_NE(sink->last(), nullptr);
  EXPECT_EQ(sink->last()->generation().state(),
            v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(upstream.poll_count(), 4);
  std::vector<int64_t> revs = sink->revisions();
  EXPECT_TRUE(std::is_sorted(revs.begin(), revs.end()));
  EXPECT_EQ(std::set<int64_t>(revs.begin(), revs.end()).size(), revs.size());
}

}  // namespace
}  // namespace videogen::core

namespace videogen::core {
namespace {

// Many threads at once against a real poller thread and an upstream that
// answers on its own thread, as the curl loop does. Checks the invariants
// that must hold whatever the interleaving (and gives TSan something to see).
TEST(TrackerStressTest, ConcurrentClientsPollerAndUpstreamThread) {
  SystemClock clock;
  FakeUpstream upstream;
  upstream.HoldSubmits();
  TestStore store;
  TrackerOptions o = Options();
  o.poll_initial_delay = absl::Milliseconds(1);
  o.poll_interval = absl::Milliseconds(2);
  o.poll_jitter = 0.5;
  o.error_backoff_initial = absl::Milliseconds(1);
  Tracker tracker(o, &upstream, &store, &clock);
  tracker.StartPoller();

  std::atomic<bool> stop{false};
  std::thread answerer([&] {
    const absl::StatusOr<upstream::Snapshot> answers[] = {
        Snap(TaskState::kQueued, "queued"),
        Snap(TaskState::kGenerating, "generating"),
        absl::UnavailableError("503"),
        Snap(TaskState::kUnknown, "odd"),
        Completed(),
    };
    int n = 0;
    while (!stop.load()) {
      upstream.ResolveSubmits(upstream::SubmitResult{"up-s", "queued"});
      upstream.ResolvePolls(answers[n++ % 5]);
      absl::SleepFor(absl::Microseconds(300));
    }
    upstream.ResolveSubmits(upstream::SubmitResult{"up-s", "queued"});
  });

  auto firehose = std::make_shared<RecordingSink>();
  tracker.SubscribeAll(Filter{}, firehose);
  absl::Mutex mu;
  std::set<std::string> created_ids;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 40; ++i) {
        // Half the request_ids collide across clients.
        const std::string rid = i % 2 == 0 ? "shared-" + std::to_string(i) : "";
        absl::Notification done;
        std::string id;
        tracker.Create(Request(rid), {}, [&](absl::StatusOr<GenerationPtr> g) {
          if (g.ok()) id = (*g)->id();
          done.Notify();
        });
        ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
        ASSERT_FALSE(id.empty());
        auto sink = std::make_shared<RecordingSink>();
        absl::StatusOr<Subscription> sub = tracker.Subscribe(id, 0, sink);
        ASSERT_TRUE(sub.ok()) << sub.status();
        if ((i + c) % 7 == 0) tracker.Cancel(id).IgnoreError();
        if ((i + c) % 5 == 0 && !sub->finished) tracker.Unsubscribe(sub->id);
        EXPECT_TRUE(tracker.Get(id).ok());
        absl::MutexLock lock(&mu);
        created_ids.insert(id);
        sinks.push_back(sink);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  // Let everything run to a terminal state.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    auto counts = tracker.CountByState();
    if (counts[v1::Generation::STATE_QUEUED] == 0 &&
        counts[v1::Generation::STATE_GENERATING] == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  tracker.StopPoller();
  stop = true;
  answerer.join();

  EXPECT_EQ(upstream.submit_count(), static_cast<int>(created_ids.size()));
  for (const std::string& id : created_ids) {
    auto g = tracker.Get(id);
    ASSERT_TRUE(g.ok());
    EXPECT_TRUE((*g)->done()) << id;
  }
  for (const auto& sink : sinks) {
    std::vector<EventPtr> events = sink->events();
    for (size_t i = 1; i < events.size(); ++i) {
      EXPECT_EQ(events[i]->type(), v1::GenerationEvent::TYPE_UPDATE);
      EXPECT_EQ(events[i]->generation().revision(),
                events[i - 1]->generation().revision() + 1);
      EXPECT_FALSE(events[i - 1]->generation().done());
    }
  }
  // The firehose saw every generation's changes in revision order.
  std::map<std::string, int64_t> last;
  for (const EventPtr& e : firehose->events()) {
    int64_t& prev = last[e->generation().id()];
    EXPECT_EQ(e->generation().revision(), prev + 1);
    prev = e->generation().revision();
  }
  EXPECT_EQ(last.size(), created_ids.size());
}

}  // namespace
}  // namespace videogen::core
