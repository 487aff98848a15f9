#include "server/core/tracker.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/fanout_hub.h"
#include "server/core/generation_record.h"
#include "server/util/log.h"
#include "tests/core/fake_upstream.h"
#include "tests/core/test_util.h"

namespace videogen::core {
namespace {

using ::testing::ElementsAre;
using testing::FakeUpstream;
using ::testing::HasSubstr;
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
  o.reconcile_window = absl::Minutes(15);
  o.reconcile_interval = absl::Seconds(20);
  o.reconcile_rate_per_minute = 60;
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

absl::Status Ambiguous() {
  return absl::UnknownError("upstream answered 502 after the POST was sent");
}

// Captures what util::Log writes (the process's stderr) while it lives.
class CapturedLog {
 public:
  CapturedLog() {
    util::FlushLogs();
    std::fflush(stderr);
    path_ = ::testing::TempDir() + "tracker_test_log_XXXXXX";
    const int fd = ::mkstemp(path_.data());
    EXPECT_GE(fd, 0);
    saved_ = ::dup(STDERR_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
  }
  ~CapturedLog() {
    util::FlushLogs();
    std::fflush(stderr);
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    ::unlink(path_.c_str());
  }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;

  // Lines logged so far whose event is `event` and that name `generation_id`.
  int Count(const std::string& event, const std::string& generation_id) {
    util::FlushLogs();
    std::ifstream in(path_);
    std::stringstream text;
    text << in.rdbuf();
    const std::string ev = absl::StrCat("\"event\":\"", event, "\"");
    const std::string gid =
        absl::StrCat("\"generation_id\":\"", generation_id, "\"");
    int n = 0;
    for (absl::string_view line : absl::StrSplit(text.str(), '\n')) {
      if (absl::StrContains(line, ev) && absl::StrContains(line, gid)) ++n;
    }
    return n;
  }

 private:
  std::string path_;
  int saved_ = -1;
};

class TrackerTest : public ::testing::Test {
 protected:
  TrackerTest() { Restart(Options()); }
  ~TrackerTest() override { tracker_.reset(); }

  void Restart(TrackerOptions options) {
    tracker_.reset();
    options_ = std::move(options);
    tracker_ =
        std::make_unique<Tracker>(options_, &upstream_, &store_, &clock_);
    ASSERT_TRUE(tracker_->Recover().ok());
  }

  // Runs the loop until idle and lets the hub deliver.
  void Drive() {
    tracker_->RunUntilIdle();
    hub_.Flush();
  }
  void Step(absl::Duration d) {
    clock_.Advance(d);
    Drive();
  }

  absl::StatusOr<GenerationPtr> CreateNow(const v1::GenerateRequest& r,
                                          std::string tenant = "",
                                          store::Admission admission = {}) {
    absl::StatusOr<GenerationPtr> out = absl::UnknownError("not called");
    bool called = false;
    tracker_->Create(CreateRequest{r, std::move(tenant), admission, {}},
                     [&](absl::StatusOr<GenerationPtr> g) {
                       out = std::move(g);
                       called = true;
                     });
    Drive();
    EXPECT_TRUE(called);
    return out;
  }

  GenerationPtr MustCreate(const v1::GenerateRequest& r,
                           std::string tenant = "") {
    absl::StatusOr<GenerationPtr> g = CreateNow(r, std::move(tenant));
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? *g : nullptr;
  }

  std::shared_ptr<RecordingSink> Watch(const std::string& id,
                                       int64_t after_revision = 0) {
    auto sink = std::make_shared<RecordingSink>();
    absl::StatusOr<Subscription> sub =
        hub_.Subscribe(id, "", after_revision, sink);
    EXPECT_TRUE(sub.ok()) << sub.status();
    return sink;
  }

  store::Record Stored(const std::string& id) {
    auto r = store_.Get(id);
    EXPECT_TRUE(r.ok() && r->has_value()) << id;
    return r.ok() && r->has_value() ? **r : store::Record{};
  }

  FakeClock clock_;
  FakeUpstream upstream_;
  TestStore store_;
  FanoutHub hub_{&store_, &clock_};
  TrackerOptions options_;
  std::unique_ptr<Tracker> tracker_;
};

// ---- Create and submit -----------------------------------------------------

TEST_F(TrackerTest, CreateSubmitsOnceAndReturnsQueuedRevisionOne) {
  GenerationPtr g = MustCreate(Request("r1"));
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->state(), v1::Generation::STATE_QUEUED);
  EXPECT_EQ(g->revision(), 1);
  EXPECT_EQ(g->upstream_id(), "up-1");
  EXPECT_EQ(upstream_.submit_count(), 1);
  EXPECT_EQ(upstream_.submits()[0].client_request_id, g->id());
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.submit, store::SubmitPhase::kDone);
  EXPECT_EQ(r.generation.revision(), 1);
}

TEST_F(TrackerTest, IdsAreUniqueAndNeverStartWithADash) {
  std::set<std::string> ids;
  for (int i = 0; i < 200; ++i) {
    GenerationPtr g = MustCreate(Request());
    EXPECT_NE(g->id()[0], '-');
    ids.insert(g->id());
  }
  EXPECT_EQ(ids.size(), 200u);
}

TEST_F(TrackerTest, IntentIsRecordedAfterTheGateAndBeforeThePost) {
  upstream_.HoldGates();
  std::string id;
  tracker_->Create(CreateRequest{Request("r1"), "", {}, {}},
                   [&](absl::StatusOr<GenerationPtr> g) {
                     ASSERT_TRUE(g.ok());
                     id = (*g)->id();
                   });
  Drive();
  // Waiting for the rate limiter: recorded, not sent, invisible.
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->generations.size(), 1u);
  const std::string pending_id = listed->generations[0].id();
  EXPECT_EQ(Stored(pending_id).submit, store::SubmitPhase::kPending);
  EXPECT_EQ(upstream_.submit_count(), 0);
  upstream_.HoldSubmits();
  upstream_.OpenGates();
  Drive();
  EXPECT_EQ(upstream_.submit_count(), 1);
  store::Record sent = Stored(pending_id);
  EXPECT_EQ(sent.submit, store::SubmitPhase::kSent);
  EXPECT_EQ(sent.submit_time, clock_.Now());
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-7", "queued"});
  Drive();
  EXPECT_EQ(id, pending_id);
  EXPECT_EQ(Stored(id).submit, store::SubmitPhase::kDone);
}

TEST_F(TrackerTest, UnrecordableIntentSendsNothing) {
  upstream_.HoldGates();
  absl::StatusOr<GenerationPtr> out = absl::UnknownError("not called");
  tracker_->Create(CreateRequest{Request("r1"), "", {}, {}},
                   [&](absl::StatusOr<GenerationPtr> g) { out = g; });
  Drive();
  store_.FailWrites(absl::UnavailableError("disk full"));
  upstream_.OpenGates();
  Drive();
  EXPECT_EQ(upstream_.submit_count(), 0);
  EXPECT_EQ(upstream_.abandoned(), 1);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(out.status().message(), HasSubstr("nothing was sent"));
  // Once the store works again the record goes and the request_id is free.
  store_.FailWrites(absl::OkStatus());
  Step(absl::Seconds(10));
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->generations.empty());
  EXPECT_TRUE(CreateNow(Request("r1")).ok());
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, StoreFailureOnCreateSubmitsNothing) {
  store_.FailWrites(absl::UnavailableError("disk full"));
  absl::StatusOr<GenerationPtr> g = CreateNow(Request("r1"));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(upstream_.submits_started(), 0);
}

TEST_F(TrackerTest, RefusedSubmitFreesTheRequestIdForARetry) {
  upstream_.set_submit_result(absl::InvalidArgumentError("400: bad prompt"));
  absl::StatusOr<GenerationPtr> g = CreateNow(Request("r1"));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->generations.empty());
  upstream_.set_submit_result(upstream::SubmitResult{"up-2", "queued"});
  EXPECT_TRUE(CreateNow(Request("r1")).ok());
  EXPECT_EQ(upstream_.submit_count(), 2);
}

TEST_F(TrackerTest, FailedDeleteOfARefusedSubmitLeavesNoPhantom) {
  upstream_.HoldSubmits();
  absl::StatusOr<GenerationPtr> first = absl::UnknownError("not called");
  tracker_->Create(CreateRequest{Request("r1"), "", {}, {}},
                   [&](absl::StatusOr<GenerationPtr> g) { first = g; });
  Drive();
  store_.FailWrites(absl::UnavailableError("disk full"));
  upstream_.ResolveSubmits(absl::FailedPreconditionError("403: no credits"));
  Drive();
  EXPECT_EQ(first.status().code(), absl::StatusCode::kFailedPrecondition);
  // A retry meanwhile gets the same refusal, not a phantom QUEUED.
  absl::StatusOr<GenerationPtr> retry = CreateNow(Request("r1"));
  EXPECT_EQ(retry.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(upstream_.submit_count(), 1);
  store_.FailWrites(absl::OkStatus());
  Step(absl::Seconds(10));
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->generations.empty());
}

TEST_F(TrackerTest, RefusalReachesEveryWaiter) {
  upstream_.HoldSubmits();
  std::vector<absl::Status> results;
  for (int i = 0; i < 3; ++i) {
    tracker_->Create(CreateRequest{Request("same"), "", {}, {}},
                     [&](absl::StatusOr<GenerationPtr> g) {
                       results.push_back(g.status());
                     });
  }
  Drive();
  EXPECT_TRUE(results.empty());
  upstream_.ResolveSubmits(absl::UnauthenticatedError("401"));
  Drive();
  ASSERT_EQ(results.size(), 3u);
  for (const absl::Status& s : results) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, SameRequestIdJoinsAndDifferentParametersIsAlreadyExists) {
  GenerationPtr a = MustCreate(Request("r1"));
  GenerationPtr b = MustCreate(Request("r1"));
  EXPECT_EQ(a->id(), b->id());
  v1::GenerateRequest other = Request("r1");
  other.set_prompt("something else");
  absl::StatusOr<GenerationPtr> c = CreateNow(other);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(c.status().message(), HasSubstr("different parameters"));
  EXPECT_EQ(upstream_.submit_count(), 1);
  // No request_id: not idempotent.
  EXPECT_NE(MustCreate(Request())->id(), MustCreate(Request())->id());
}

// Issue 15: a repeated request_id joins in every state, never submits again,
// and each replay is logged as `generation_replayed` (the gateway logs
// `generation_created` only for the first answer).
TEST_F(TrackerTest, ReplaysAreLoggedAsReplaysInEveryState) {
  CapturedLog log;
  // Answered, QUEUED at revision 1.
  GenerationPtr a = MustCreate(Request("a"));
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(MustCreate(Request("a"))->id(), a->id());
  EXPECT_EQ(log.Count("generation_replayed", a->id()), 1);
  // Unanswered (submit_unconfirmed, reconciling).
  upstream_.set_submit_result(Ambiguous());
  GenerationPtr b = MustCreate(Request("b"));
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(MustCreate(Request("b"))->id(), b->id());
  EXPECT_EQ(log.Count("generation_replayed", b->id()), 1);
  // Terminal.
  upstream_.PushPoll(Completed());
  Step(kInitialDelay);
  ASSERT_TRUE(Stored(a->id()).generation.done());
  EXPECT_TRUE(MustCreate(Request("a"))->done());
  EXPECT_EQ(log.Count("generation_replayed", a->id()), 2);
  // After a restart.
  Restart(Options());
  EXPECT_EQ(MustCreate(Request("a"))->id(), a->id());
  EXPECT_EQ(MustCreate(Request("b"))->id(), b->id());
  EXPECT_EQ(log.Count("generation_replayed", a->id()), 3);
  EXPECT_EQ(log.Count("generation_replayed", b->id()), 2);
  EXPECT_EQ(upstream_.submit_count(), 2);
}

// A repeated request_id that arrives while the first submit is still in
// flight waits for its answer: a replay too, and logged as one.
TEST_F(TrackerTest, AReplayWaitingForTheSubmitIsLoggedAsAReplay) {
  CapturedLog log;
  upstream_.HoldSubmits();
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    tracker_->Create(CreateRequest{Request("r1"), "", {}, {}},
                     [&](absl::StatusOr<GenerationPtr> g) {
                       ASSERT_TRUE(g.ok()) << g.status();
                       ids.push_back((*g)->id());
                     });
  }
  Drive();
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-1", "queued"});
  Drive();
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], ids[1]);
  EXPECT_EQ(ids[0], ids[2]);
  EXPECT_EQ(upstream_.submit_count(), 1);
  EXPECT_EQ(log.Count("generation_replayed", ids[0]), 2);
}

TEST_F(TrackerTest, RequestIdIsPerTenant) {
  GenerationPtr a = MustCreate(Request("r1"), "team-a");
  GenerationPtr b = MustCreate(Request("r1"), "team-b");
  EXPECT_NE(a->id(), b->id());
  EXPECT_EQ(a->tenant(), "team-a");
  EXPECT_EQ(b->tenant(), "team-b");
  EXPECT_EQ(upstream_.submit_count(), 2);
}

// The upstream client's rate limiter lets tenants take turns (issue 17):
// submits and polls say whose they are.
TEST_F(TrackerTest, SubmitsAndPollsCarryTheTenant) {
  upstream_.PushPoll(Completed());
  GenerationPtr g = MustCreate(Request(), "team-a");
  Step(kInitialDelay);
  ASSERT_EQ(upstream_.submits().size(), 1u);
  EXPECT_EQ(upstream_.submits()[0].tenant, "team-a");
  ASSERT_EQ(upstream_.poll_count(), 1);
  EXPECT_EQ(upstream_.polls()[0].tenant, "team-a");
  EXPECT_EQ(upstream_.polls()[0].client_request_id, g->id());
  EXPECT_TRUE(Stored(g->id()).generation.done());
}

TEST_F(TrackerTest, FiftyRacingIdenticalCreatesSubmitOnce) {
  upstream_.HoldSubmits();
  std::atomic<int> answered{0};
  std::set<std::string> ids;
  absl::Mutex mu;
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&] {
      tracker_->Create(CreateRequest{Request("race"), "", {}, {}},
                       [&](absl::StatusOr<GenerationPtr> g) {
                         ASSERT_TRUE(g.ok()) << g.status();
                         absl::MutexLock lock(&mu);
                         ids.insert((*g)->id());
                         ++answered;
                       });
    });
  }
  for (auto& t : threads) t.join();
  Drive();
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-r", "queued"});
  Drive();
  EXPECT_EQ(answered.load(), 50);
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, IdempotencyHoldsAfterTerminalAndAcrossRestart) {
  upstream_.PushPoll(Completed());
  GenerationPtr g = MustCreate(Request("r1"));
  Step(kInitialDelay);
  EXPECT_TRUE(Stored(g->id()).generation.done());
  Restart(Options());
  GenerationPtr again = MustCreate(Request("r1"));
  EXPECT_EQ(again->id(), g->id());
  EXPECT_TRUE(again->done());
  EXPECT_EQ(upstream_.submit_count(), 1);
}

TEST_F(TrackerTest, QuotaRefusalSubmitsNothing) {
  store::Admission limits;
  limits.max_concurrent = 1;
  ASSERT_TRUE(CreateNow(Request(), "t", limits).ok());
  absl::StatusOr<GenerationPtr> g = CreateNow(Request(), "t", limits);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(upstream_.submits_started(), 1);
}

TEST_F(TrackerTest, OneTenantsBurstDoesNotStarveAnother) {
  TrackerOptions o = Options();
  o.max_outstanding_submits = 1;
  Restart(o);
  upstream_.HoldSubmits();
  for (int i = 0; i < 20; ++i) {
    tracker_->Create(CreateRequest{Request(), "busy", {}, {}},
                     [](absl::StatusOr<GenerationPtr>) {});
  }
  tracker_->Create(CreateRequest{Request(), "quiet", {}, {}},
                   [](absl::StatusOr<GenerationPtr>) {});
  Drive();
  std::vector<std::string> tenants;
  for (int i = 0; i < 21; ++i) {
    upstream_.ResolveSubmits(upstream::SubmitResult{"up", "queued"});
    Drive();
  }
  // Who was sent, in order: the quiet tenant is served second, not last.
  std::vector<upstream::SubmitRequest> sent = upstream_.submits();
  ASSERT_EQ(sent.size(), 21u);
  int quiet_position = -1;
  for (size_t i = 0; i < sent.size(); ++i) {
    auto r = store_.Get(sent[i].client_request_id);
    ASSERT_TRUE(r.ok() && r->has_value());
    if ((*r)->generation.tenant() == "quiet") quiet_position = i;
  }
  EXPECT_GE(quiet_position, 0);
  EXPECT_LE(quiet_position, 1);
}

TEST_F(TrackerTest, ATenantsWaitingSubmitsDoNotHoldBackAnothersCreate) {
  // Issue 17: the flooding tenant's submits wait in the upstream (its rate
  // limiter sends that tenant's polls first); the cap is per tenant, so
  // another tenant's create still reaches the upstream at once.
  TrackerOptions o = Options();
  o.max_outstanding_submits = 2;
  Restart(o);
  upstream_.HoldGates();
  upstream_.HoldSubmits();
  for (int i = 0; i < 10; ++i) {
    tracker_->Create(CreateRequest{Request(), "busy", {}, {}},
                     [](absl::StatusOr<GenerationPtr>) {});
  }
  Drive();
  EXPECT_EQ(upstream_.submits_started(), 2);
  tracker_->Create(CreateRequest{Request(), "quiet", {}, {}},
                   [](absl::StatusOr<GenerationPtr>) {});
  Drive();
  EXPECT_EQ(upstream_.submits_started(), 3);
  upstream_.OpenGates();
  Drive();
  std::vector<upstream::SubmitRequest> sent = upstream_.submits();
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_EQ(sent[2].tenant, "quiet");
  // The busy tenant's next ones go as its own answers come back.
  for (int i = 0; i < 5 && upstream_.submit_count() < 11; ++i) {
    upstream_.ResolveSubmits(upstream::SubmitResult{"up", "queued"});
    Drive();
  }
  EXPECT_EQ(upstream_.submit_count(), 11);
}

// ---- Spend safety: unanswered submits
// -----------------------------------------

TEST_F(TrackerTest, AmbiguousSubmitIsNeverResentAndIsFoundInTheUsageLog) {
  upstream_.set_submit_result(Ambiguous());
  GenerationPtr g = MustCreate(Request("r1"));
  EXPECT_EQ(g->state(), v1::Generation::STATE_QUEUED);
  EXPECT_EQ(g->revision(), 1);
  EXPECT_EQ(g->upstream_status(), "submit_unconfirmed");
  EXPECT_TRUE(g->upstream_id().empty());
  // Retrying the same request_id joins; nothing is sent again.
  EXPECT_EQ(MustCreate(Request("r1"))->id(), g->id());
  EXPECT_EQ(upstream_.submit_count(), 1);
  // The log row shows up late (the analytics pipeline lags).
  upstream::LogRow row;
  row.client_request_id = g->id();
  row.inference_id = "up-found";
  row.cost_credits = 210;
  upstream_.AddLogRow(row);
  Step(Options().reconcile_interval);
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.upstream_id(), "up-found");
  EXPECT_EQ(r.generation.upstream_status(), "submit_confirmed");
  EXPECT_EQ(r.generation.usage().credits_used(), 210);
  EXPECT_EQ(r.submit, store::SubmitPhase::kDone);
  // Polled with the adopted id from here on (that poll is in flight now).
  ASSERT_EQ(upstream_.pending_poll_count(), 1);
  upstream_.ResolvePolls(Completed());
  Drive();
  ASSERT_GE(upstream_.poll_count(), 1);
  EXPECT_EQ(upstream_.polls().back().upstream_id, "up-found");
  EXPECT_TRUE(Stored(g->id()).generation.done());
  EXPECT_EQ(upstream_.submit_count(), 1);
  // The queries asked for the right model in a window around the submit.
  upstream::LogQuery q = upstream_.log_queries().front();
  EXPECT_THAT(q.models, ElementsAre("klingai/v2-master-text-to-video"));
  EXPECT_LE(q.start, FromTimestamp(g->create_time()));
}

TEST_F(TrackerTest, AmbiguousSubmitNotFoundFailsAfterTheWindow) {
  upstream_.set_submit_result(Ambiguous());
  GenerationPtr g = MustCreate(Request("r1"));
  for (absl::Duration t; t < absl::Minutes(16); t += absl::Seconds(20)) {
    Step(absl::Seconds(20));
  }
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_FAILED);
  EXPECT_EQ(r.generation.error().reason(), "SUBMIT_UNCONFIRMED");
  EXPECT_THAT(r.generation.error().message(), HasSubstr("may still have run"));
  EXPECT_EQ(upstream_.submit_count(), 1);
  // About one pass per interval, never above the rate.
  EXPECT_LE(upstream_.log_queries().size(), 16u * 60 / 20 + 2);
}

TEST_F(TrackerTest, OnePassServesEveryPendingSubmit) {
  upstream_.set_submit_result(Ambiguous());
  upstream_.HoldGates();
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    tracker_->Create(CreateRequest{Request(), "", {}, {}},
                     [&](absl::StatusOr<GenerationPtr> g) {
                       ASSERT_TRUE(g.ok());
                       ids.push_back((*g)->id());
                     });
  }
  Drive();
  // Fill the log before the submits answer, so the first pass finds them.
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  for (const auto& g : listed->generations) {
    upstream::LogRow row;
    row.client_request_id = g.id();
    row.inference_id = "up-" + g.id();
    upstream_.AddLogRow(row);
  }
  for (int i = 0; i < 150; ++i) {  // unrelated rows: the pass pages
    upstream::LogRow row;
    row.client_request_id = "someone-else-" + std::to_string(i);
    row.inference_id = "x";
    upstream_.AddLogRow(row);
  }
  upstream_.OpenGates();
  Drive();
  for (int i = 0; i < 5; ++i) Step(absl::Seconds(1));
  ASSERT_EQ(ids.size(), 10u);
  for (const std::string& id : ids) {
    EXPECT_EQ(Stored(id).generation.upstream_id(), "up-" + id);
  }
  EXPECT_LE(upstream_.log_queries().size(), 4u);
}

TEST_F(TrackerTest, UsageLog429BacksOffAsTold) {
  upstream_.set_submit_result(Ambiguous());
  absl::Status limited = absl::ResourceExhaustedError("429");
  limited.SetPayload("videogen/retry-after", absl::Cord("45"));
  upstream_.PushLogError(limited);
  GenerationPtr g = MustCreate(Request("r1"));
  ASSERT_EQ(upstream_.log_queries().size(), 1u);
  Step(absl::Seconds(40));
  EXPECT_EQ(upstream_.log_queries().size(), 1u);
  upstream::LogRow row;
  row.client_request_id = g->id();
  row.inference_id = "up-late";
  upstream_.AddLogRow(row);
  Step(absl::Seconds(6));
  EXPECT_EQ(upstream_.log_queries().size(), 2u);
  EXPECT_EQ(Stored(g->id()).generation.upstream_id(), "up-late");
}

// Issue 15: --reconcile_rate. Many unanswered submits and a usage log of
// many pages: the requests are spaced by the rate (never more than
// `rate` in any minute), passes do not run back to back past it, and the
// requests go on as the clock moves.
TEST_F(TrackerTest, UsageLogRequestsNeverExceedTheRate) {
  TrackerOptions o = Options();
  o.reconcile_rate_per_minute = 6;          // one request per 10 s
  o.reconcile_interval = absl::Seconds(1);  // only the rate holds back
  Restart(o);
  // 1000 other jobs: a pass needs 10 pages of 100.
  for (int i = 0; i < 1000; ++i) {
    upstream::LogRow row;
    row.client_request_id = "someone-else-" + std::to_string(i);
    row.inference_id = "x";
    upstream_.AddLogRow(row);
  }
  upstream_.set_submit_result(Ambiguous());
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) ids.push_back(MustCreate(Request())->id());
  std::vector<absl::Time> sent_at;  // when each usage-log request left
  auto record = [&] {
    while (sent_at.size() < upstream_.log_queries().size()) {
      sent_at.push_back(clock_.Now());
    }
  };
  record();
  EXPECT_EQ(sent_at.size(), 1u);
  // Held back: the loop running again at the same instant sends nothing.
  for (int i = 0; i < 5; ++i) Drive();
  record();
  EXPECT_EQ(sent_at.size(), 1u);
  for (int s = 0; s < 300; ++s) {
    Step(absl::Seconds(1));
    record();
  }
  // ... and not stopped: about one every 10 s over the 5 minutes.
  EXPECT_GE(sent_at.size(), 30u);
  EXPECT_LE(sent_at.size(), 31u);
  int max_offset = 0;
  for (const upstream::LogQuery& q : upstream_.log_queries()) {
    max_offset = std::max(max_offset, q.offset);
  }
  EXPECT_EQ(max_offset, 900);  // the passes did page through the log
  // The jobs show up in the log: found by later passes, at the same rate.
  for (const std::string& id : ids) {
    upstream::LogRow row;
    row.client_request_id = id;
    row.inference_id = "up-" + id;
    upstream_.AddLogRow(row);
  }
  for (int s = 0; s < 180; ++s) {
    Step(absl::Seconds(1));
    record();
  }
  for (const std::string& id : ids) {
    EXPECT_EQ(Stored(id).generation.upstream_id(), "up-" + id);
  }
  size_t most = 0;  // the most requests in any minute
  absl::Duration busiest;
  for (size_t i = 0; i < sent_at.size(); ++i) {
    size_t in_minute = 0;
    for (size_t j = i;
         j < sent_at.size() && sent_at[j] < sent_at[i] + absl::Minutes(1);
         ++j) {
      ++in_minute;
    }
    if (in_minute > most) {
      most = in_minute;
      busiest = sent_at[i] - sent_at[0];
    }
  }
  EXPECT_LE(most, 6u) << "in the minute from +" << busiest;
  EXPECT_EQ(upstream_.submit_count(), 30);
}

// ---- Recovery --------------------------------------------------------------

TEST_F(TrackerTest, RecoveryResendsOnlyWhatNeverLeft) {
  // Three generations stopped in three submit phases.
  upstream_.HoldGates();
  for (int i = 0; i < 3; ++i) {
    tracker_->Create(
        CreateRequest{Request("r" + std::to_string(i)), "", {}, {}},
        [](absl::StatusOr<GenerationPtr>) {});
  }
  Drive();
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->generations.size(), 3u);
  std::vector<std::string> ids;
  for (const auto& g : listed->generations) ids.push_back(g.id());
  auto set_phase = [&](const std::string& id, store::SubmitPhase p) {
    store::Record r = Stored(id);
    r.submit = p;
    r.submit_time = clock_.Now();
    ++r.version;
    ASSERT_TRUE(store_.inner().Update(r, {}).ok());
  };
  set_phase(ids[1], store::SubmitPhase::kSent);
  set_phase(ids[2], store::SubmitPhase::kUnconfirmed);
  // "kill -9": a new tracker over the same store, an upstream that answers.
  tracker_.reset();
  FakeUpstream fresh;
  upstream::LogRow row;
  row.client_request_id = ids[1];
  row.inference_id = "up-was-sent";
  fresh.AddLogRow(row);
  tracker_ = std::make_unique<Tracker>(Options(), &fresh, &store_, &clock_);
  ASSERT_TRUE(tracker_->Recover().ok());
  Drive();
  EXPECT_EQ(fresh.submit_count(), 1);  // only the never-sent one
  EXPECT_EQ(fresh.submits()[0].client_request_id, ids[0]);
  EXPECT_EQ(Stored(ids[0]).generation.upstream_id(), "up-1");
  EXPECT_EQ(Stored(ids[1]).generation.upstream_id(), "up-was-sent");
  EXPECT_EQ(Stored(ids[2]).submit, store::SubmitPhase::kUnconfirmed);
  for (int i = 0; i < 50; ++i) Step(absl::Seconds(20));
  EXPECT_EQ(Stored(ids[2]).generation.error().reason(), "SUBMIT_UNCONFIRMED");
  EXPECT_EQ(fresh.submit_count(), 1);
  tracker_.reset();
}

TEST_F(TrackerTest, RecoverResumesPollingAndFailsPastTheDeadline) {
  GenerationPtr a = MustCreate(Request());
  Step(absl::Minutes(10));
  GenerationPtr b = MustCreate(Request());
  upstream_.ResolvePolls(Snap(TaskState::kGenerating, "generating"));
  tracker_.reset();
  clock_.Advance(absl::Minutes(25));  // a is past its 30 min deadline
  Restart(Options());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Drive();
  EXPECT_EQ(Stored(a->id()).generation.error().reason(), "DEADLINE_EXCEEDED");
  EXPECT_FALSE(Stored(b->id()).generation.done());
}

// ---- Polls -----------------------------------------------------------------

TEST_F(TrackerTest, QueuedGeneratingCompletedWithOnePollerAndEveryRevision) {
  GenerationPtr g = MustCreate(Request());
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 1000; ++i) sinks.push_back(Watch(g->id()));
  Step(kInitialDelay - absl::Milliseconds(1));
  EXPECT_EQ(upstream_.poll_count(), 0);
  upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Completed());
  Step(absl::Milliseconds(1));
  for (int i = 0; i < 3; ++i) Step(kInterval);
  EXPECT_EQ(upstream_.poll_count(), 4);
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(r.generation.revision(), 3);
  EXPECT_EQ(r.generation.video().url(), "https://cdn.example/v.mp4");
  EXPECT_EQ(r.generation.usage().tokens_used(), 120000);
  for (const auto& sink : sinks) {
    EXPECT_THAT(sink->revisions(), ElementsAre(1, 2, 3));
  }
  EXPECT_EQ(hub_.subscriptions(), 0);  // terminal ends every subscription
}

TEST_F(TrackerTest, UnchangedPollWritesNothing) {
  GenerationPtr g = MustCreate(Request());
  const int writes = store_.update_count();
  upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  Step(kInitialDelay);
  EXPECT_EQ(store_.update_count(), writes);
  EXPECT_EQ(Stored(g->id()).generation.revision(), 1);
}

TEST_F(TrackerTest, UnknownStatusKeepsStateAndGeneratingNeverGoesBack) {
  GenerationPtr g = MustCreate(Request());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kUnknown, "rendering_pass_2"));
  upstream_.PushPoll(Snap(TaskState::kQueued, "queued"));
  Step(kInitialDelay);
  Step(kInterval);
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_GENERATING);
  EXPECT_EQ(r.generation.upstream_status(), "rendering_pass_2");
  Step(kInterval);
  EXPECT_EQ(Stored(g->id()).generation.state(),
            v1::Generation::STATE_GENERATING);
}

TEST_F(TrackerTest, TaskErrorAndLostJobFail) {
  GenerationPtr a = MustCreate(Request());
  upstream::Snapshot err = Snap(TaskState::kFailed, "error");
  err.error = upstream::TaskError{"ContentPolicy", "prompt refused"};
  upstream_.PushPoll(err);
  Step(kInitialDelay);
  store::Record r = Stored(a->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_FAILED);
  EXPECT_THAT(r.generation.error().message(), HasSubstr("prompt refused"));
  GenerationPtr b = MustCreate(Request());
  upstream_.PushPoll(absl::NotFoundError("404"));
  Step(kInitialDelay);
  EXPECT_EQ(Stored(b->id()).generation.error().reason(), "UPSTREAM_NOT_FOUND");
}

TEST_F(TrackerTest, OnlyOnePollInFlightAndErrorsBackOff) {
  GenerationPtr g = MustCreate(Request());
  Step(kInitialDelay);
  EXPECT_EQ(upstream_.pending_poll_count(), 1);
  Step(kInterval * 3);
  EXPECT_EQ(upstream_.poll_count(), 1);  // still waiting for the first
  upstream_.ResolvePolls(absl::UnavailableError("503"));
  Drive();
  // Backoff 1 s, 2 s, 4 s, 8 s, 8 s (max).
  std::vector<int> polls_at;
  for (int s = 1; s <= 30; ++s) {
    const int before = upstream_.poll_count();
    Step(absl::Seconds(1));
    if (upstream_.poll_count() > before) {
      polls_at.push_back(s);
      upstream_.ResolvePolls(absl::UnavailableError("503"));
      Drive();
    }
  }
  EXPECT_THAT(polls_at, ElementsAre(1, 3, 7, 15, 23));
  EXPECT_FALSE(Stored(g->id()).generation.done());
}

TEST_F(TrackerTest, DeadlineFailsTheGeneration) {
  GenerationPtr g = MustCreate(Request());
  for (int i = 0; i < 31 * 12; ++i) {
    upstream_.ResolvePolls(Snap(TaskState::kGenerating, "generating"));
    Step(kInterval);
  }
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_FAILED);
  EXPECT_EQ(r.generation.error().reason(), "DEADLINE_EXCEEDED");
  EXPECT_EQ(r.generation.error().code(), 4);
}

// ---- Cancel and concurrent writers -----------------------------------------

TEST_F(TrackerTest, CancelStopsPollingAndIsScopedToTheTenant) {
  GenerationPtr g = MustCreate(Request(), "a");
  auto sink = Watch(g->id());
  EXPECT_EQ(tracker_->Cancel(g->id(), "b").status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<GenerationPtr> c = tracker_->Cancel(g->id(), "a");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->state(), v1::Generation::STATE_CANCELLED);
  EXPECT_EQ((*c)->revision(), 2);
  Drive();
  Step(kInitialDelay + kInterval);
  EXPECT_EQ(upstream_.poll_count(), 0);
  EXPECT_THAT(sink->revisions(), ElementsAre(1, 2));
  // Cancelling again returns it unchanged.
  EXPECT_EQ((*tracker_->Cancel(g->id(), ""))->revision(), 2);
  EXPECT_EQ(tracker_->Cancel("nope", "").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(TrackerTest, CancelRacingAPollResultLosesNothing) {
  GenerationPtr g = MustCreate(Request());
  Step(kInitialDelay);  // a poll is in flight
  ASSERT_TRUE(tracker_->Cancel(g->id(), "").ok());
  upstream_.ResolvePolls(Snap(TaskState::kGenerating, "generating"));
  Drive();
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_CANCELLED);
  EXPECT_EQ(r.generation.revision(), 2);
}

TEST_F(TrackerTest, AnotherWritersChangeIsNotOverwritten) {
  GenerationPtr g = MustCreate(Request());
  // Someone else (another replica) writes a new revision meanwhile.
  store::Record other = Stored(g->id());
  other.generation.set_upstream_status("seen_elsewhere");
  Bump(clock_.Now(), &other.generation);
  ++other.version;
  ASSERT_TRUE(store_.inner().Update(other, {}).ok());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.revision(), 3);  // 1, theirs 2, ours 3
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_GENERATING);
}

// Issue 14: a revision is announced only once it is durable. A poll answer
// whose write fails reaches no watcher and leaves the in-memory record as
// it was; after a restart the revisions go on from what the store holds, a
// watcher resuming with after_revision=1 gets the terminal event, and no
// revision number ever stands for two different contents.
TEST_F(TrackerTest, FailedWriteIsNeverAnnouncedAndNoRevisionIsReused) {
  GenerationPtr g = MustCreate(Request("r1"));
  ASSERT_NE(g, nullptr);
  const std::string id = g->id();
  auto watcher = Watch(id);
  auto firehose = std::make_shared<RecordingSink>();
  ASSERT_TRUE(hub_.SubscribeAll(Filter{}, firehose).ok());
  ASSERT_THAT(watcher->revisions(), ElementsAre(1));
  ASSERT_THAT(firehose->revisions(), ElementsAre(1));

  // GENERATING cannot be written: nobody hears of it.
  store_.FailWrites(absl::UnavailableError("disk full"));
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);
  ASSERT_EQ(upstream_.poll_count(), 1);
  EXPECT_THAT(watcher->revisions(), ElementsAre(1));
  EXPECT_THAT(firehose->revisions(), ElementsAre(1));
  EXPECT_EQ(Stored(id).generation.revision(), 1);
  // The store works again: the next answer (the same) is written, as
  // revision 2, because the failed write changed nothing in memory either.
  store_.FailWrites(absl::OkStatus());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(Options().error_backoff_initial);
  ASSERT_EQ(upstream_.poll_count(), 2);
  EXPECT_THAT(watcher->revisions(), ElementsAre(1, 2));
  EXPECT_EQ(Stored(id).generation.state(), v1::Generation::STATE_GENERATING);

  // COMPLETED cannot be written: not announced either.
  store_.FailWrites(absl::UnavailableError("disk full"));
  upstream_.PushPoll(Completed());
  Step(kInterval);
  ASSERT_EQ(upstream_.poll_count(), 3);
  EXPECT_THAT(watcher->revisions(), ElementsAre(1, 2));
  EXPECT_THAT(firehose->revisions(), ElementsAre(1, 2));
  EXPECT_EQ(Stored(id).generation.revision(), 2);
  EXPECT_FALSE(Stored(id).generation.done());
  int64_t announced = 0;
  for (const auto& sink : {watcher, firehose}) {
    for (int64_t r : sink->revisions()) announced = std::max(announced, r);
  }

  // Restart: a new process (tracker and hub) over the same store.
  tracker_.reset();
  store_.FailWrites(absl::OkStatus());
  clock_.Advance(absl::Seconds(3));
  FanoutHub hub(&store_, &clock_);
  auto resumed = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = hub.Subscribe(id, "", 1, resumed);
  ASSERT_TRUE(sub.ok()) << sub.status();
  upstream_.PushPoll(Completed());
  Restart(Options());
  Drive();
  hub.Flush();
  ASSERT_FALSE(resumed->events().empty());
  EXPECT_TRUE(resumed->last()->generation().done());
  EXPECT_EQ(resumed->last()->generation().state(),
            v1::Generation::STATE_COMPLETED);
  EXPECT_GT(resumed->last()->generation().revision(), announced);
  EXPECT_EQ(resumed->revisions().front(), 2);  // nothing at or below 1
  // Every revision anyone was told about means one content: the durable one.
  std::map<int64_t, v1::Generation> seen;
  for (const auto& sink : {watcher, firehose, resumed}) {
    for (const EventPtr& e : sink->events()) {
      auto [it, first] =
          seen.emplace(e->generation().revision(), e->generation());
      EXPECT_TRUE(first || google::protobuf::util::MessageDifferencer::Equals(
                               it->second, e->generation()))
          << "revision " << e->generation().revision() << " announced as\n"
          << it->second.DebugString() << "and as\n"
          << e->generation().DebugString();
    }
  }
  store::Record final_record = Stored(id);
  ASSERT_TRUE(seen.count(final_record.generation.revision()));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      seen[final_record.generation.revision()], final_record.generation));
  EXPECT_EQ(upstream_.submit_count(), 1);
}

// ---- Fan-out hub -----------------------------------------------------------

TEST_F(TrackerTest, SubscribeSendsASnapshotOnlyWhenNewer) {
  GenerationPtr g = MustCreate(Request());
  EXPECT_EQ(Watch(g->id(), 0)->size(), 1u);
  EXPECT_EQ(Watch(g->id(), 1)->size(), 0u);
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> too_new = hub_.Subscribe(g->id(), "", 5, sink);
  EXPECT_EQ(too_new.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(hub_.Subscribe("missing", "", 0, sink).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(hub_.Subscribe(g->id(), "other-tenant", 0, sink).status().code(),
            absl::StatusCode::kNotFound);
}

EventPtr TypedEvent(v1::GenerationEvent::Type type, int64_t revision) {
  auto e = std::make_shared<v1::GenerationEvent>();
  e->set_type(type);
  e->mutable_generation()->set_id("g");
  e->mutable_generation()->set_revision(revision);
  return e;
}

// The hub's UPDATE of a change that raced Subscribe arrives first, then
// Subscribe's newer SNAPSHOT: the sink sends them as SNAPSHOT, UPDATE.
TEST(SnapshotFirstTest, RetypesWhatTheRaceDeliveredOutOfTurn) {
  SnapshotFirst types;
  EventPtr update = TypedEvent(v1::GenerationEvent::TYPE_UPDATE, 2);
  EventPtr first = types.Type(update);
  EXPECT_EQ(first->type(), v1::GenerationEvent::TYPE_SNAPSHOT);
  EXPECT_EQ(first->generation().revision(), 2);
  EXPECT_EQ(update->type(), v1::GenerationEvent::TYPE_UPDATE);  // a copy
  EventPtr second =
      types.Type(TypedEvent(v1::GenerationEvent::TYPE_SNAPSHOT, 3));
  EXPECT_EQ(second->type(), v1::GenerationEvent::TYPE_UPDATE);
  EXPECT_EQ(second->generation().revision(), 3);
}

// Without a race nothing is copied: watchers keep sharing the hub's event.
TEST(SnapshotFirstTest, SharesEventsThatAlreadyHaveTheirType) {
  SnapshotFirst types;
  EventPtr snapshot = TypedEvent(v1::GenerationEvent::TYPE_SNAPSHOT, 1);
  EXPECT_EQ(types.Type(snapshot), snapshot);
  types.Subscribed();
  EventPtr update = TypedEvent(v1::GenerationEvent::TYPE_UPDATE, 2);
  EXPECT_EQ(types.Type(update), update);

  // Resumed at the current revision: no SNAPSHOT was due, so the first
  // change after Subscribe stays an UPDATE.
  SnapshotFirst resumed;
  resumed.Subscribed();
  EXPECT_EQ(resumed.Type(update), update);
}

TEST_F(TrackerTest, SubscribeToATerminalGenerationFinishesAtOnce) {
  upstream_.PushPoll(Completed());
  GenerationPtr g = MustCreate(Request());
  Step(kInitialDelay);
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = hub_.Subscribe(g->id(), "", 0, sink);
  ASSERT_TRUE(sub.ok());
  EXPECT_TRUE(sub->finished);
  EXPECT_EQ(sink->size(), 1u);
  EXPECT_TRUE(sink->last()->generation().done());
}

TEST_F(TrackerTest, ResumeHasNoDuplicatesOrGaps) {
  GenerationPtr g = MustCreate(Request());
  auto early = Watch(g->id());
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);
  auto resumed = Watch(g->id(), 1);
  upstream_.PushPoll(Snap(TaskState::kUnknown, "odd"));
  upstream_.PushPoll(Completed());
  Step(kInterval);
  Step(kInterval);
  EXPECT_THAT(early->revisions(), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(resumed->revisions(), ElementsAre(2, 3, 4));
}

TEST_F(TrackerTest,
       FirehoseFiltersByTenantStateAndLabelAndHidesSubmitsInFlight) {
  auto all = std::make_shared<RecordingSink>();
  ASSERT_TRUE(hub_.SubscribeAll(Filter{}, all).ok());
  auto tenant_a = std::make_shared<RecordingSink>();
  ASSERT_TRUE(hub_.SubscribeAll(Filter{"a", {}, {}}, tenant_a).ok());
  auto generating = std::make_shared<RecordingSink>();
  Filter f;
  f.states = {v1::Generation::STATE_GENERATING};
  ASSERT_TRUE(hub_.SubscribeAll(f, generating).ok());
  auto labelled = std::make_shared<RecordingSink>();
  Filter lf;
  lf.labels = {{"team", "zzz"}};
  ASSERT_TRUE(hub_.SubscribeAll(lf, labelled).ok());

  upstream_.HoldSubmits();
  tracker_->Create(CreateRequest{Request(), "a", {}, {}},
                   [](absl::StatusOr<GenerationPtr>) {});
  Drive();
  EXPECT_EQ(all->size(), 0u);  // revision 0 is invisible
  upstream_.ResolveSubmits(upstream::SubmitResult{"up-a", "queued"});
  Drive();
  upstream_.set_submit_result(upstream::SubmitResult{"up-b", "queued"});
  MustCreate(Request(), "b");
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);
  EXPECT_EQ(all->size(), 4u);
  EXPECT_EQ(tenant_a->size(), 2u);
  EXPECT_EQ(generating->size(), 2u);
  EXPECT_EQ(labelled->size(), 0u);
  // A late firehose starts with snapshots of what is running.
  auto late = std::make_shared<RecordingSink>();
  ASSERT_TRUE(hub_.SubscribeAll(Filter{}, late).ok());
  EXPECT_EQ(late->size(), 2u);
  EXPECT_EQ(late->events()[0]->type(), v1::GenerationEvent::TYPE_SNAPSHOT);
}

TEST_F(TrackerTest, UnsubscribeStopsDelivery) {
  GenerationPtr g = MustCreate(Request());
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<Subscription> sub = hub_.Subscribe(g->id(), "", 0, sink);
  ASSERT_TRUE(sub.ok());
  hub_.Unsubscribe(sub->id);
  upstream_.PushPoll(Snap(TaskState::kGenerating, "generating"));
  Step(kInitialDelay);
  EXPECT_THAT(sink->revisions(), ElementsAre(1));
}

// ---- Hooks: outbox, estimator, mirror --------------------------------------

class FakeEstimator final : public Estimator {
 public:
  v1::GenerationEstimate Estimate(const v1::Generation& g,
                                  absl::Time now) override {
    v1::GenerationEstimate e;
    *e.mutable_expected_complete_time() = ToTimestamp(now + absl::Minutes(5));
    e.set_samples(static_cast<int>(observed.size()));
    (void)g;
    return e;
  }
  void Observe(const v1::Generation& g, absl::Time) override {
    observed.push_back(g.id());
  }
  std::vector<std::string> observed;
};

class FakeMirror final : public media::Mirror {
 public:
  void Copy(media::MirrorJob job, media::MirrorCallback done) override {
    jobs.push_back(job);
    pending.push_back(std::move(done));
  }
  std::vector<media::MirrorJob> jobs;
  std::vector<media::MirrorCallback> pending;
};

TEST_F(TrackerTest, OutboxEstimateAndMirrorHooks) {
  FakeEstimator estimator;
  FakeMirror mirror;
  int kicks = 0;
  TrackerOptions o = Options();
  o.estimator = &estimator;
  o.mirror = &mirror;
  o.outbox_for = [](const v1::Generation& g) {
    std::vector<store::Delivery> out;
    if (g.done()) {
      store::Delivery d;
      d.generation_id = g.id();
      d.revision = g.revision();
      d.url = "https://hooks.example/x";
      d.body = "{}";
      out.push_back(d);
    }
    return out;
  };
  o.on_outbox = [&kicks] { ++kicks; };
  Restart(o);
  GenerationPtr g = MustCreate(Request());
  EXPECT_TRUE(g->has_estimate());
  upstream_.PushPoll(Completed());
  Step(kInitialDelay);
  // Completed upstream, but not announced before the copy.
  EXPECT_EQ(Stored(g->id()).generation.state(), v1::Generation::STATE_QUEUED);
  ASSERT_EQ(mirror.jobs.size(), 1u);
  EXPECT_EQ(mirror.jobs[0].url, "https://cdn.example/v.mp4");
  EXPECT_EQ(mirror.jobs[0].expected_size, 1234);
  media::MirrorResult copied{"/v1/media/" + g->id(), "abc123", 1234};
  mirror.pending[0](copied);
  Drive();
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(r.generation.video().mirror_url(), "/v1/media/" + g->id());
  EXPECT_EQ(r.generation.video().sha256(), "abc123");
  EXPECT_FALSE(r.generation.has_estimate());
  EXPECT_THAT(estimator.observed, ElementsAre(g->id()));
  EXPECT_EQ(kicks, 1);
  auto deliveries = store_.ClaimDeliveries("w", clock_.Now(),
                                           clock_.Now() + absl::Minutes(1), 10);
  ASSERT_TRUE(deliveries.ok());
  ASSERT_EQ(deliveries->size(), 1u);
  EXPECT_EQ((*deliveries)[0].revision, r.generation.revision());
}

TEST_F(TrackerTest, FailedMirrorStillCompletesWithTheReason) {
  FakeMirror mirror;
  TrackerOptions o = Options();
  o.mirror = &mirror;
  Restart(o);
  GenerationPtr g = MustCreate(Request());
  upstream_.PushPoll(Completed());
  Step(kInitialDelay);
  ASSERT_EQ(mirror.pending.size(), 1u);
  mirror.pending[0](absl::UnavailableError("upstream answered 404"));
  Drive();
  store::Record r = Stored(g->id());
  EXPECT_EQ(r.generation.state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(r.generation.video().url(), "https://cdn.example/v.mp4");
  EXPECT_EQ(r.generation.video().mirror_error(), "upstream answered 404");
  EXPECT_TRUE(r.generation.video().mirror_url().empty());
}

TEST_F(TrackerTest, CountByState) {
  MustCreate(Request());
  GenerationPtr b = MustCreate(Request());
  ASSERT_TRUE(tracker_->Cancel(b->id(), "").ok());
  Drive();
  auto counts = tracker_->CountByState();
  EXPECT_EQ(counts[v1::Generation::STATE_QUEUED], 1);
}

TEST_F(TrackerTest, LateCallbacksAfterDestructionAreIgnored) {
  MustCreate(Request());
  Step(kInitialDelay);
  ASSERT_EQ(upstream_.pending_poll_count(), 1);
  tracker_.reset();
  upstream_.ResolvePolls(Snap(TaskState::kGenerating, "generating"));
  SUCCEED();
}

// On a shared store a stopping replica (SIGTERM) hands its poll leases
// back, so another replica claims its generations at its next lease tick
// rather than after --lease_duration.
TEST_F(TrackerTest, StopOnASharedStoreReleasesItsLeases) {
  TrackerOptions o = Options();
  o.shared_store = true;
  o.owner = "replica-a";
  o.lease_duration = absl::Seconds(30);
  Restart(o);
  GenerationPtr g = MustCreate(Request());
  ASSERT_NE(g, nullptr);
  absl::StatusOr<std::optional<store::Record>> before = store_.Get(g->id());
  ASSERT_TRUE(before.ok() && before->has_value());
  EXPECT_EQ((*before)->owner, "replica-a");
  EXPECT_GT((*before)->lease_until, clock_.Now());
  // Held: another replica cannot claim it yet.
  absl::StatusOr<std::vector<store::Record>> early = store_.ClaimActive(
      "replica-b", clock_.Now(), clock_.Now() + absl::Seconds(30), 10);
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(early->empty());

  tracker_->Stop();
  absl::StatusOr<std::optional<store::Record>> after = store_.Get(g->id());
  ASSERT_TRUE(after.ok() && after->has_value());
  EXPECT_LE((*after)->lease_until, clock_.Now());
  absl::StatusOr<std::vector<store::Record>> claimed = store_.ClaimActive(
      "replica-b", clock_.Now(), clock_.Now() + absl::Seconds(30), 10);
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].generation.id(), g->id());
}

TEST_F(TrackerTest, StopAnswersWaitingCreatesUnavailable) {
  upstream_.HoldSubmits();
  absl::StatusOr<GenerationPtr> out = absl::UnknownError("not called");
  tracker_->Create(CreateRequest{Request("r1"), "", {}, {}},
                   [&](absl::StatusOr<GenerationPtr> g) { out = g; });
  Drive();
  tracker_->Stop();
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<GenerationPtr> after = absl::UnknownError("not called");
  tracker_->Create(CreateRequest{Request("r2"), "", {}, {}},
                   [&](absl::StatusOr<GenerationPtr> g) { after = g; });
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  // The POST that left stays recorded as sent, for reconciliation.
  auto listed = store_.List(store::ListQuery{});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->generations.size(), 1u);
  EXPECT_EQ(Stored(listed->generations[0].id()).submit,
            store::SubmitPhase::kSent);
}

// ---- Threads ---------------------------------------------------------------

TEST(TrackerThreadTest, LoopThreadFollowsAGenerationToTheEnd) {
  SystemClock clock;
  FakeUpstream upstream;
  TestStore store;
  FanoutHub hub(&store, &clock);
  TrackerOptions o = Options();
  o.poll_initial_delay = absl::Milliseconds(5);
  o.poll_interval = absl::Milliseconds(5);
  Tracker tracker(o, &upstream, &store, &clock);
  ASSERT_TRUE(tracker.Recover().ok());
  tracker.Start();
  upstream.PushPoll(Snap(TaskState::kGenerating, "generating"));
  upstream.PushPoll(Completed());
  absl::Notification created;
  std::string id;
  tracker.Create(CreateRequest{Request(), "", {}, {}},
                 [&](absl::StatusOr<GenerationPtr> g) {
                   ASSERT_TRUE(g.ok());
                   id = (*g)->id();
                   created.Notify();
                 });
  ASSERT_TRUE(created.WaitForNotificationWithTimeout(absl::Seconds(10)));
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up) {
    auto r = store.Get(id);
    if (r.ok() && r->has_value() && (*r)->generation.done()) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  auto r = store.Get(id);
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->generation.state(), v1::Generation::STATE_COMPLETED);
  tracker.Stop();
}

// Submit, poll, cancel, watch and unwatch from several threads with random
// delays; every watcher must see strictly increasing revisions that end in
// the terminal state, and every generation must have been submitted once.
TEST(TrackerStressTest, ConcurrentClientsLoopHubAndUpstreamThread) {
  SystemClock clock;
  FakeUpstream upstream;
  upstream.HoldSubmits();
  TestStore store;
  FanoutHub hub(&store, &clock);
  TrackerOptions o = Options();
  o.poll_initial_delay = absl::Milliseconds(1);
  o.poll_interval = absl::Milliseconds(2);
  o.poll_jitter = 0.5;
  o.error_backoff_initial = absl::Milliseconds(1);
  o.max_outstanding_submits = 8;
  Tracker tracker(o, &upstream, &store, &clock);
  ASSERT_TRUE(tracker.Recover().ok());
  tracker.Start();

  std::atomic<bool> stop{false};
  std::thread answerer([&] {
    const absl::StatusOr<upstream::Snapshot> answers[] = {
        Snap(TaskState::kQueued, "queued"),
        Snap(TaskState::kGenerating, "generating"),
        absl::UnavailableError("503"),
        Snap(TaskState::kUnknown, "odd"),
        Completed(),
    };
    std::mt19937 rng(7);
    while (!stop.load()) {
      upstream.ResolveSubmits(upstream::SubmitResult{"up-s", "queued"});
      upstream.ResolvePolls(answers[rng() % 5]);
      absl::SleepFor(absl::Microseconds(100 + rng() % 400));
    }
    upstream.ResolveSubmits(upstream::SubmitResult{"up-s", "queued"});
  });

  auto firehose = std::make_shared<RecordingSink>();
  ASSERT_TRUE(hub.SubscribeAll(Filter{}, firehose).ok());
  absl::Mutex mu;
  std::set<std::string> created_ids;
  std::vector<std::pair<std::shared_ptr<RecordingSink>, bool>> watchers;
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(c);
      for (int i = 0; i < 40; ++i) {
        const std::string rid = i % 2 == 0 ? "shared-" + std::to_string(i) : "";
        absl::Notification done;
        std::string id;
        tracker.Create(CreateRequest{Request(rid), "", {}, {}},
                       [&](absl::StatusOr<GenerationPtr> g) {
                         if (g.ok()) id = (*g)->id();
                         done.Notify();
                       });
        ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
        ASSERT_FALSE(id.empty());
        absl::SleepFor(absl::Microseconds(rng() % 500));
        auto sink = std::make_shared<RecordingSink>();
        absl::StatusOr<Subscription> sub = hub.Subscribe(id, "", 0, sink);
        ASSERT_TRUE(sub.ok()) << sub.status();
        bool watched_to_end = true;
        if ((i + c) % 7 == 0) tracker.Cancel(id, "").IgnoreError();
        if ((i + c) % 5 == 0 && !sub->finished) {
          absl::SleepFor(absl::Microseconds(rng() % 300));
          hub.Unsubscribe(sub->id);
          watched_to_end = false;
        }
        absl::MutexLock lock(&mu);
        created_ids.insert(id);
        watchers.emplace_back(sink, watched_to_end);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    auto counts = tracker.CountByState();
    if (counts[v1::Generation::STATE_QUEUED] == 0 &&
        counts[v1::Generation::STATE_GENERATING] == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  tracker.Stop();
  stop = true;
  answerer.join();
  hub.Flush();

  EXPECT_EQ(upstream.submit_count(), static_cast<int>(created_ids.size()));
  for (const std::string& id : created_ids) {
    auto r = store.Get(id);
    ASSERT_TRUE(r.ok() && r->has_value());
    EXPECT_TRUE((*r)->generation.done()) << id;
  }
  for (const auto& [sink, to_end] : watchers) {
    std::vector<EventPtr> events = sink->events();
    ASSERT_FALSE(events.empty());
    for (size_t i = 1; i < events.size(); ++i) {
      EXPECT_GT(events[i]->generation().revision(),
                events[i - 1]->generation().revision());
      EXPECT_FALSE(events[i - 1]->generation().done());
    }
    if (to_end) {
      EXPECT_TRUE(events.back()->generation().done());
    }
  }
  std::map<std::string, int64_t> last;
  for (const EventPtr& e : firehose->events()) {
    int64_t& prev = last[e->generation().id()];
    EXPECT_GT(e->generation().revision(), prev);
    prev = e->generation().revision();
  }
  EXPECT_EQ(last.size(), created_ids.size());
}

}  // namespace
}  // namespace videogen::core
