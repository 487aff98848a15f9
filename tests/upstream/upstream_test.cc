// AimlApiUpstream against a live in-process videogen-sim on loopback (and a
// tiny httplib server for answers the sim never gives).
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/sim/sim_server.h"
#include "server/upstream/aimlapi_upstream.h"

namespace videogen::upstream {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kKey[] = "sk-test-SECRET-7f3a9c";
constexpr char kWrongKey[] = "sk-wrong-SECRET-1b2c3d";
constexpr char kLegacyPost[] = "POST /v2/generate/video/kling/generation";
constexpr char kNewPost[] = "POST /v2/video/generations";
constexpr char kLegacyGet[] = "GET /v2/generate/video/kling/generation";

// Every error message any test sees, checked for secrets at the end of each.
class SecretCheck {
 public:
  void Note(const absl::Status& s) {
    if (s.ok()) return;
    absl::MutexLock lock(&mu_);
    messages_.emplace_back(s.message());
  }
  void ExpectClean() {
    absl::MutexLock lock(&mu_);
    for (const std::string& m : messages_) {
      EXPECT_THAT(m, Not(HasSubstr(kKey)));
      EXPECT_THAT(m, Not(HasSubstr(kWrongKey)));
      EXPECT_THAT(m, Not(HasSubstr("SECRET")));
    }
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return messages_.size();
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> messages_ ABSL_GUARDED_BY(mu_);
};

// Helpers shared by the sim tests and the scripted-server tests.
class ClientTest : public ::testing::Test {
 protected:
  void TearDown() override {
    secrets_.ExpectClean();
    up_.reset();
  }

  AimlApiOptions BaseOptions(std::string url) {
    AimlApiOptions o;
    o.base_url = std::move(url);
    o.api_key = kKey;
    o.backoff_base = absl::Milliseconds(5);
    o.backoff_max = absl::Milliseconds(50);
    o.max_attempts = 3;
    o.request_timeout = absl::Seconds(10);
    o.seed = 7;
    return o;
  }

  AimlApiUpstream& Up(AimlApiOptions o) {
    up_ = std::make_unique<AimlApiUpstream>(std::move(o));
    return *up_;
  }

  static SubmitRequest Request(std::string id = "gen-1") {
    SubmitRequest r;
    r.client_request_id = std::move(id);
    r.prompt = "a red fox running through snow";
    r.aspect_ratio = "16:9";
    r.duration_seconds = 5;
    return r;
  }

  // Submits, opens the gate as soon as `ready` runs, and waits for the one
  // answer; checks the threads callbacks run on and counts `ready` calls.
  absl::StatusOr<SubmitResult> SubmitSync(AimlApiUpstream& up, SubmitRequest r,
                                          int* ready_calls = nullptr) {
    std::promise<absl::StatusOr<SubmitResult>> p;
    auto f = p.get_future();
    std::atomic<int> readies{0};
    up.Submit(
        std::move(r),
        [&](std::shared_ptr<SubmitGate> gate) {
          EXPECT_NE(std::this_thread::get_id(), test_thread_);
          ++readies;
          gate->Send();
        },
        [&](absl::StatusOr<SubmitResult> s) {
          EXPECT_NE(std::this_thread::get_id(), test_thread_);
          p.set_value(std::move(s));
        });
    EXPECT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    absl::StatusOr<SubmitResult> s = f.get();
    secrets_.Note(s.status());
    if (ready_calls != nullptr) *ready_calls = readies;
    return s;
  }

  absl::StatusOr<Snapshot> PollSync(AimlApiUpstream& up, const std::string& id,
                                    std::string client_id = "gen-1") {
    std::promise<absl::StatusOr<Snapshot>> p;
    auto f = p.get_future();
    PollRequest r{id, std::move(client_id), "", ""};
    up.Poll(r, [&](absl::StatusOr<Snapshot> s) {
      EXPECT_NE(std::this_thread::get_id(), test_thread_);
      p.set_value(std::move(s));
    });
    EXPECT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    absl::StatusOr<Snapshot> s = f.get();
    secrets_.Note(s.status());
    return s;
  }

  absl::StatusOr<LogPage> LogsSync(AimlApiUpstream& up, LogQuery q) {
    std::promise<absl::StatusOr<LogPage>> p;
    auto f = p.get_future();
    up.ListLogs(std::move(q), [&](absl::StatusOr<LogPage> s) {
      EXPECT_NE(std::this_thread::get_id(), test_thread_);
      p.set_value(std::move(s));
    });
    EXPECT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    absl::StatusOr<LogPage> s = f.get();
    secrets_.Note(s.status());
    return s;
  }

  std::unique_ptr<AimlApiUpstream> up_;
  SecretCheck secrets_;
  const std::thread::id test_thread_ = std::this_thread::get_id();
};

class UpstreamTest : public ClientTest {
 protected:
  void SetUp() override { StartSim(sim::SimOptions{}); }

  void TearDown() override {
    ClientTest::TearDown();
    if (sim_) sim_->Stop();
  }

  void StartSim(sim::SimOptions o) {
    if (sim_) sim_->Stop();
    o.api_key = kKey;
    o.queued_for = absl::Milliseconds(100);
    o.generating_for = absl::Milliseconds(200);
    o.slow_delay = absl::Seconds(2);
    sim_ = std::make_unique<sim::SimServer>(o);
    ASSERT_TRUE(sim_->Start().ok());
  }

  AimlApiOptions Options() { return BaseOptions(sim_->base_url()); }

  using ClientTest::Up;
  AimlApiUpstream& Up() { return Up(Options()); }

  // Polls until a terminal state (or 10 s).
  Snapshot PollToEnd(AimlApiUpstream& up, const std::string& id,
                     std::set<std::string>* raw_seen = nullptr) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      absl::StatusOr<Snapshot> s = PollSync(up, id);
      EXPECT_TRUE(s.ok()) << s.status();
      if (!s.ok()) return {};
      if (raw_seen) raw_seen->insert(s->raw_status);
      if (s->state == TaskState::kCompleted || s->state == TaskState::kFailed) {
        return *s;
      }
      absl::SleepFor(absl::Milliseconds(40));
    }
    ADD_FAILURE() << "no terminal state for " << id;
    return {};
  }

  int64_t Count(const std::string& route) {
    auto stats = sim_->Stats();
    auto it = stats.requests_by_path.find(route);
    return it == stats.requests_by_path.end() ? 0 : it->second;
  }

  std::unique_ptr<sim::SimServer> sim_;
};

sim::FaultRule Fault(sim::Endpoint e, sim::FaultKind k, int every_nth) {
  sim::FaultRule r;
  r.endpoint = e;
  r.kind = k;
  r.every_nth = every_nth;
  return r;
}

TEST_F(UpstreamTest, SubmitOnBothPathsSendsHeadersAndBody) {
  AimlApiOptions legacy = Options();
  legacy.endpoint = EndpointFamily::kLegacy;
  SubmitRequest r = Request("gen-legacy.1");
  r.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  r.cfg_scale = 0.5;
  r.negative_prompt = "blurry";
  absl::StatusOr<SubmitResult> a = SubmitSync(Up(legacy), r);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(a->upstream_id, HasSubstr(":kling-video/v2/master"));
  EXPECT_EQ(a->status, "queued");

  AimlApiOptions fresh = Options();
  fresh.endpoint = EndpointFamily::kGenerations;
  absl::StatusOr<SubmitResult> b = SubmitSync(Up(fresh), Request("gen-new"));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->upstream_id.empty());

  sim::SimStats stats = sim_->Stats();
  EXPECT_EQ(stats.requests_by_path[kLegacyPost], 1);
  EXPECT_EQ(stats.requests_by_path[kNewPost], 1);
  EXPECT_EQ(stats.submits, 2);
  EXPECT_EQ(stats.client_request_id_by_id[a->upstream_id], "gen-legacy.1");
  EXPECT_EQ(stats.client_request_id_by_id[b->upstream_id], "gen-new");
  EXPECT_EQ(stats.traceparent_by_id[a->upstream_id], r.traceparent);
}

TEST_F(UpstreamTest, PollsToCompletionInTheFileShape) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok()) << s.status();
  std::set<std::string> seen;
  Snapshot done = PollToEnd(up, s->upstream_id, &seen);
  EXPECT_EQ(done.state, TaskState::kCompleted);
  EXPECT_EQ(done.raw_status, "completed");
  EXPECT_EQ(done.upstream_id, s->upstream_id);
  ASSERT_TRUE(done.video.has_value());
  EXPECT_THAT(done.video->url, HasSubstr("/files/"));
  EXPECT_EQ(done.video->content_type, "video/mp4");
  EXPECT_THAT(done.video->file_name, HasSubstr(".mp4"));
  EXPECT_GT(done.video->file_size_bytes, 0);
  EXPECT_FALSE(done.error.has_value());
  EXPECT_TRUE(seen.count("queued") || seen.count("generating")) << seen.size();
}

TEST_F(UpstreamTest, PollsToCompletionInTheUsageShape) {
  AimlApiOptions o = Options();
  o.endpoint = EndpointFamily::kGenerations;
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok()) << s.status();
  Snapshot done = PollToEnd(up, s->upstream_id);
  EXPECT_EQ(done.state, TaskState::kCompleted);
  ASSERT_TRUE(done.video.has_value());
  EXPECT_THAT(done.video->url, HasSubstr("/files/"));
  EXPECT_DOUBLE_EQ(done.video->duration_seconds, 5);
  EXPECT_EQ(done.tokens_used, 24000 * 5);
  EXPECT_FALSE(done.error.has_value());
}

TEST_F(UpstreamTest, TaskErrorIsAFailedSnapshotNotAnRpcError) {
  sim::SimOptions o;
  o.error_rate = 1;
  StartSim(o);
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok()) << s.status();
  Snapshot done = PollToEnd(up, s->upstream_id);
  EXPECT_EQ(done.state, TaskState::kFailed);
  EXPECT_EQ(done.raw_status, "error");
  ASSERT_TRUE(done.error.has_value());
  EXPECT_EQ(done.error->name, "GenerationError");
  EXPECT_THAT(done.error->message, HasSubstr("failed to render"));
}

TEST_F(UpstreamTest, OddStatusWordsMapToo) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok());
  sim_->SetFaults({Fault(sim::Endpoint::kPoll, sim::FaultKind::kOddStatus, 1)});
  std::set<std::string> seen;
  Snapshot done = PollToEnd(up, s->upstream_id, &seen);
  EXPECT_EQ(done.state, TaskState::kCompleted);
  EXPECT_EQ(done.raw_status, "succeeded");
  EXPECT_TRUE(seen.count("waiting") || seen.count("active"));
}

TEST_F(UpstreamTest, WrongKeyIsUnauthenticatedAndNotRetried) {
  AimlApiOptions o = Options();
  o.api_key = kWrongKey;
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.status().message(), HasSubstr("AIMLAPI_KEY"));
  absl::StatusOr<Snapshot> p = PollSync(up, "anything");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Count(kLegacyPost), 1);
  EXPECT_EQ(Count(kLegacyGet), 1);
  EXPECT_EQ(up.counters().retries, 0);
}

TEST_F(UpstreamTest, InvalidBodyIsInvalidArgumentWithTheUpstreamsReason) {
  AimlApiUpstream& up = Up();
  SubmitRequest r = Request();
  r.duration_seconds = 7;
  absl::StatusOr<SubmitResult> s = SubmitSync(up, r);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("duration must be 5 or 10"));
  EXPECT_THAT(s.status().message(), HasSubstr("HTTP 400"));
  EXPECT_EQ(Count(kLegacyPost), 1);
  EXPECT_EQ(sim_->Stats().submits, 0);
}

TEST_F(UpstreamTest, UnknownIdOnPollIsNotFoundAndNotRetried) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<Snapshot> p = PollSync(up, "no-such-job");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(p.status().message(), HasSubstr("no-such-job"));
  EXPECT_EQ(Count(kLegacyGet), 1);
}

TEST_F(UpstreamTest, ServerErrorsAreRetriedThenUnavailable) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok());
  struct Case {
    sim::FaultKind kind;
    absl::StatusCode code;
    const char* fault;
  } cases[] = {
      {sim::FaultKind::k500, absl::StatusCode::kUnavailable, "500"},
      {sim::FaultKind::k502, absl::StatusCode::kUnavailable, "502"},
      {sim::FaultKind::k503, absl::StatusCode::kUnavailable, "503"},
      {sim::FaultKind::k504, absl::StatusCode::kDeadlineExceeded, "504"},
      {sim::FaultKind::k429, absl::StatusCode::kResourceExhausted, "429"},
  };
  for (const Case& c : cases) {
    sim_->ResetStats();
    sim_->SetFaults({Fault(sim::Endpoint::kPoll, c.kind, 1)});
    AimlApiOptions o = Options();
    o.max_retry_after = absl::Seconds(5);
    AimlApiUpstream& u = Up(o);
    absl::StatusOr<Snapshot> p = PollSync(u, s->upstream_id);
    EXPECT_EQ(p.status().code(), c.code) << c.fault << " " << p.status();
    EXPECT_THAT(p.status().message(), HasSubstr("after 3 attempts"));
    EXPECT_EQ(sim_->Stats().polls_by_id[s->upstream_id], 3) << c.fault;
    EXPECT_EQ(sim_->Stats().faults_by_kind[c.fault], 3) << c.fault;
    EXPECT_EQ(u.counters().retries, 2) << c.fault;
  }
}

TEST_F(UpstreamTest, RetriesWithBackoffRecoverAndShowInSimStats) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request("gen-a"));
  ASSERT_TRUE(s.ok());
  // Every 2nd request fails: the first poll succeeds, the second needs a
  // retry, and so does the second submit.
  sim_->SetFaults({Fault(sim::Endpoint::kPoll, sim::FaultKind::k500, 2),
                   Fault(sim::Endpoint::kCreate, sim::FaultKind::k503, 2)});
  ASSERT_TRUE(PollSync(up, s->upstream_id).ok());
  absl::StatusOr<Snapshot> p = PollSync(up, s->upstream_id);
  ASSERT_TRUE(p.ok()) << p.status();
  // A create answered 503 may have made a job: never sent again.
  absl::StatusOr<SubmitResult> s2 = SubmitSync(up, Request("gen-b"));
  EXPECT_EQ(s2.status().code(), absl::StatusCode::kUnknown) << s2.status();
  EXPECT_THAT(s2.status().message(), HasSubstr("never resubmitted"));
  sim::SimStats stats = sim_->Stats();
  EXPECT_EQ(stats.polls_by_id[s->upstream_id], 3);
  EXPECT_EQ(stats.faults_by_kind["500"], 1);
  EXPECT_EQ(stats.faults_by_kind["503"], 1);
  EXPECT_EQ(stats.requests_by_path[kLegacyPost], 2);
  EXPECT_EQ(up.counters().retries, 1);
  EXPECT_EQ(up.counters().attempts["poll 5xx"], 1);
  EXPECT_EQ(up.counters().attempts["submit 5xx"], 1);
}

TEST_F(UpstreamTest, RetryAfterIsHonoured) {
  sim::SimOptions so;
  so.retry_after_seconds = 1;
  StartSim(so);
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok());
  sim_->SetFaults({Fault(sim::Endpoint::kPoll, sim::FaultKind::k429, 2)});
  ASSERT_TRUE(PollSync(up, s->upstream_id).ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<Snapshot> p = PollSync(up, s->upstream_id);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(p.ok()) << p.status();
  // Backoff alone is at most 50 ms here; Retry-After says 1 s.
  EXPECT_GE(took, absl::Milliseconds(950));
  EXPECT_EQ(sim_->Stats().faults_by_kind["429"], 1);
  EXPECT_EQ(sim_->Stats().polls_by_id[s->upstream_id], 3);
}

TEST_F(UpstreamTest, RetryAfterBeyondTheLimitEndsRetries) {
  sim::SimOptions so;
  so.retry_after_seconds = 120;
  StartSim(so);
  AimlApiUpstream& up = Up();
  sim_->SetFaults({Fault(sim::Endpoint::kCreate, sim::FaultKind::k429, 1)});
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.status().message(), HasSubstr("retry after 2m"));
  EXPECT_EQ(RetryAfterOf(s.status()), absl::Seconds(120));
  EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kNotCreated);
  EXPECT_EQ(Count(kLegacyPost), 1);
}

TEST_F(UpstreamTest, PollTimeoutsAreRetriedThenDeadlineExceeded) {
  AimlApiOptions o = Options();
  o.request_timeout = absl::Milliseconds(300);
  o.max_attempts = 2;
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok());
  sim_->SetFaults({Fault(sim::Endpoint::kPoll, sim::FaultKind::kSlow, 1)});
  absl::StatusOr<Snapshot> p = PollSync(up, s->upstream_id);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kDeadlineExceeded)
      << p.status();
  EXPECT_THAT(p.status().message(), HasSubstr("in time"));
  EXPECT_EQ(sim_->Stats().polls_by_id[s->upstream_id], 2);
}

TEST_F(UpstreamTest, SubmitTimeoutIsNotResentBecauseTheJobMayExist) {
  AimlApiOptions o = Options();
  o.request_timeout = absl::Milliseconds(300);
  AimlApiUpstream& up = Up(o);
  sim_->SetFaults({Fault(sim::Endpoint::kCreate, sim::FaultKind::kSlow, 1)});
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnknown);
  EXPECT_THAT(s.status().message(), HasSubstr("in time"));
  EXPECT_THAT(s.status().message(), HasSubstr("never resubmitted"));
  EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kMaybeCreated);
  EXPECT_EQ(Count(kLegacyPost), 1);
  EXPECT_EQ(up.counters().retries, 0);
}

TEST_F(UpstreamTest, ResetAfterSubmitIsNotResentButPollsRetry) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> first = SubmitSync(up, Request());
  ASSERT_TRUE(first.ok());
  sim_->SetFaults({Fault(sim::Endpoint::kCreate, sim::FaultKind::kReset, 1),
                   Fault(sim::Endpoint::kPoll, sim::FaultKind::kReset, 2)});
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnknown) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("may have created the job"));
  EXPECT_EQ(Count(kLegacyPost), 2);
  EXPECT_EQ(sim_->Stats().submits, 2);  // the job was made all the same
  ASSERT_TRUE(PollSync(up, first->upstream_id).ok());
  absl::StatusOr<Snapshot> p = PollSync(up, first->upstream_id);
  EXPECT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(sim_->Stats().polls_by_id[first->upstream_id], 3);
}

TEST_F(UpstreamTest, ConnectionRefusedIsRetriedThenUnavailable) {
  int port = 0;
  {
    sim::SimServer closed{sim::SimOptions{}};
    ASSERT_TRUE(closed.Start().ok());
    port = closed.port();
  }
  AimlApiOptions o = Options();
  o.base_url = absl::StrCat("http://127.0.0.1:", port);
  AimlApiUpstream& up = Up(o);
  int readies = 0;
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request(), &readies);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("--upstream_url"));
  EXPECT_THAT(s.status().message(), HasSubstr("nothing was sent"));
  EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kNotCreated);
  EXPECT_EQ(readies, 1);  // retries reuse the open gate
  absl::StatusOr<Snapshot> p = PollSync(up, "x");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(up.counters().retries, 4);
  EXPECT_EQ(up.counters().attempts["submit transport"], 3);
}

TEST_F(UpstreamTest, MalformedJsonIsAnErrorNeverACrash) {
  AimlApiOptions o = Options();
  o.max_attempts = 2;
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok());
  sim_->SetFaults(
      {Fault(sim::Endpoint::kPoll, sim::FaultKind::kMalformedJson, 1),
       Fault(sim::Endpoint::kCreate, sim::FaultKind::kMalformedJson, 1)});
  absl::StatusOr<Snapshot> p = PollSync(up, s->upstream_id);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(p.status().message(), HasSubstr("not valid JSON"));
  EXPECT_EQ(sim_->Stats().polls_by_id[s->upstream_id], 2);
  absl::StatusOr<SubmitResult> bad = SubmitSync(up, Request());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnknown);
  EXPECT_THAT(bad.status().message(), HasSubstr("never resubmitted"));
  EXPECT_EQ(Count(kLegacyPost), 2);
}

TEST_F(UpstreamTest, IdsWithColonAndSlashReachTheSimByteForByte) {
  AimlApiUpstream& up = Up();
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok());
  ASSERT_THAT(s->upstream_id, HasSubstr(":"));
  ASSERT_THAT(s->upstream_id, HasSubstr("/"));
  absl::StatusOr<Snapshot> p = PollSync(up, s->upstream_id);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->upstream_id, s->upstream_id);
  const std::string odd = "a:b/c?d=e&f=g#h %2F+ü";
  absl::StatusOr<Snapshot> q = PollSync(up, odd);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kNotFound);
  sim::SimStats stats = sim_->Stats();
  EXPECT_EQ(stats.polls_by_id[s->upstream_id], 1);
  EXPECT_EQ(stats.polls_by_id[odd], 1);
  EXPECT_EQ(stats.polls_by_id.size(), 2u);
}

TEST_F(UpstreamTest, AThousandConcurrentPollsThroughOneLoop) {
  AimlApiOptions o = Options();
  o.max_connections = 16;
  AimlApiUpstream& up = Up(o);
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<SubmitResult> s =
        SubmitSync(up, Request(absl::StrCat("gen-", i)));
    ASSERT_TRUE(s.ok()) << s.status();
    ids.push_back(s->upstream_id);
  }
  // Every submit opens its own connection (never a reused one).
  const int64_t by_submits = up.counters().connections_opened;
  EXPECT_EQ(by_submits, 20);
  constexpr int kPolls = 1000;
  absl::Mutex mu;
  int done = 0, ok = 0, wrong = 0;
  std::set<std::thread::id> threads;
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int i = t; i < kPolls; i += 4) {
        const std::string id = ids[i % ids.size()];
        up.Poll(PollRequest{id, "gen", "", ""},
                [&, id](absl::StatusOr<Snapshot> s) {
                  absl::MutexLock lock(&mu);
                  ++done;
                  threads.insert(std::this_thread::get_id());
                  if (s.ok()) ++ok;
                  if (s.ok() && s->upstream_id != id) ++wrong;
                  secrets_.Note(s.status());
                });
      }
    });
  }
  for (auto& c : callers) c.join();
  {
    absl::MutexLock lock(&mu);
    auto all = [&] { return done == kPolls; };
    mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60));
    EXPECT_EQ(done, kPolls);
    EXPECT_EQ(ok, kPolls);
    EXPECT_EQ(wrong, 0);
    EXPECT_EQ(threads.size(), 1u);  // every callback on the one loop thread
  }
  int64_t polls = 0;
  for (const auto& [id, n] : sim_->Stats().polls_by_id) polls += n;
  EXPECT_EQ(polls, kPolls);
  UpstreamCounters c = up.counters();
  EXPECT_EQ(c.in_flight, 0);
  EXPECT_EQ(c.queued, 0);
  EXPECT_EQ(c.calls_finished, c.calls_started);
  // Keep-alive: 1,000 polls over at most max_connections new connections
  // (they also reuse the ones the submits left in the pool).
  EXPECT_GE(c.connections_opened - by_submits, 0);
  EXPECT_LE(c.connections_opened - by_submits, 16);
}

TEST_F(UpstreamTest, RateLimitSpacesRequests) {
  AimlApiOptions o = Options();
  o.rate_limit_per_second = 20;
  o.rate_limit_burst = 1;
  AimlApiUpstream& up = Up(o);
  std::atomic<int> done{0};
  const absl::Time start = absl::Now();
  for (int i = 0; i < 10; ++i) {
    up.Poll(PollRequest{"x", "gen", "", ""},
            [&](absl::StatusOr<Snapshot>) { ++done; });
  }
  while (done < 10 && absl::Now() - start < absl::Seconds(10)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(done, 10);
  // 9 tokens at 20/s take 450 ms; allow for coarse timers.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(400));
}

TEST_F(UpstreamTest, ShutdownCancelsEveryPendingCallExactlyOnce) {
  sim_->SetFaults({Fault(sim::Endpoint::kPoll, sim::FaultKind::kSlow, 1),
                   Fault(sim::Endpoint::kCreate, sim::FaultKind::kSlow, 1)});
  AimlApiOptions o = Options();
  o.max_in_flight = 4;  // the rest wait in the queue
  auto up = std::make_unique<AimlApiUpstream>(o);
  std::atomic<int> cancelled{0}, calls{0};
  for (int i = 0; i < 10; ++i) {
    up->Poll(PollRequest{"x", "gen", "", ""}, [&](absl::StatusOr<Snapshot> s) {
      ++calls;
      if (s.status().code() == absl::StatusCode::kCancelled) ++cancelled;
    });
  }
  // The submit waits for a slot behind the polls: it never got a gate.
  std::atomic<int> readies{0};
  absl::Status submit_status;
  up->Submit(
      Request(), [&](std::shared_ptr<SubmitGate>) { ++readies; },
      [&](absl::StatusOr<SubmitResult> s) {
        ++calls;
        if (s.status().code() == absl::StatusCode::kCancelled) ++cancelled;
        submit_status = s.status();
      });
  absl::SleepFor(absl::Milliseconds(200));
  up.reset();
  EXPECT_EQ(calls, 11);
  EXPECT_EQ(cancelled, 11);
  EXPECT_EQ(readies, 0);
  EXPECT_THAT(submit_status.message(), HasSubstr("shutting down"));
  EXPECT_EQ(ClassifySubmitError(submit_status), SubmitOutcome::kNotCreated);
}

TEST_F(UpstreamTest, ShutdownWithThePostInFlightIsUnknown) {
  sim_->SetFaults({Fault(sim::Endpoint::kCreate, sim::FaultKind::kSlow, 1)});
  auto up = std::make_unique<AimlApiUpstream>(Options());
  std::promise<absl::Status> done;
  up->Submit(
      Request(), [](std::shared_ptr<SubmitGate> g) { g->Send(); },
      [&](absl::StatusOr<SubmitResult> s) { done.set_value(s.status()); });
  // Wait until the sim holds the POST (it sleeps in the slow fault).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Count(kLegacyPost) == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(Count(kLegacyPost), 1);
  up.reset();
  absl::Status s = done.get_future().get();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
  EXPECT_THAT(s.message(), HasSubstr("in flight"));
  EXPECT_EQ(ClassifySubmitError(s), SubmitOutcome::kMaybeCreated);
}

TEST_F(UpstreamTest, HostileHeaderValuesAreDroppedAndBadUtf8IsReplaced) {
  AimlApiUpstream& up = Up();
  SubmitRequest r = Request("bad id\r\nX-Evil: 1");
  r.traceparent = "00-abc\r\nX-Evil: 2";
  r.prompt = "a fox \xff\xfe in snow";
  absl::StatusOr<SubmitResult> s = SubmitSync(up, r);
  ASSERT_TRUE(s.ok()) << s.status();
  sim::SimStats stats = sim_->Stats();
  EXPECT_EQ(stats.client_request_id_by_id.count(s->upstream_id), 0u);
  EXPECT_EQ(stats.traceparent_by_id.count(s->upstream_id), 0u);
}

TEST_F(UpstreamTest, KeyWithControlCharactersFailsWithoutARequest) {
  AimlApiOptions o = Options();
  o.api_key = "sk-SECRET\r\nX-Evil: 1";
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<Snapshot> p = PollSync(up, "x");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Count(kLegacyPost) + Count(kLegacyGet), 0);
}

TEST_F(UpstreamTest, AttemptHookSeesEveryAttempt) {
  absl::Mutex mu;
  std::vector<AttemptRecord> records;
  AimlApiOptions o = Options();
  o.on_attempt = [&](const AttemptRecord& r) {
    absl::MutexLock lock(&mu);
    records.push_back(r);
  };
  AimlApiUpstream& up = Up(o);
  sim_->SetFaults({Fault(sim::Endpoint::kPoll, sim::FaultKind::k500, 1)});
  absl::StatusOr<Snapshot> p = PollSync(up, "x");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnavailable);
  absl::MutexLock lock(&mu);
  ASSERT_EQ(records.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(records[i].kind, CallKind::kPoll);
    EXPECT_EQ(records[i].http_status, 500);
    EXPECT_EQ(records[i].attempt, i + 1);
    EXPECT_GE(records[i].latency, absl::ZeroDuration());
  }
}

// A tiny server for answers the sim never gives: 403, odd bodies, an
// upstream that echoes the key back, and a concurrency probe.
class TinyServer {
 public:
  TinyServer() {
    server_.Post(".*", [this](const httplib::Request& req,
                              httplib::Response& res) { Answer(req, res); });
    server_.Get(".*", [this](const httplib::Request& req,
                             httplib::Response& res) { Answer(req, res); });
    server_.set_keep_alive_timeout(1);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) absl::SleepFor(absl::Milliseconds(1));
  }
  ~TinyServer() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }
  int max_active() {
    absl::MutexLock lock(&mu_);
    return max_active_;
  }
  int requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  void set_answer(int status, std::string body) {
    absl::MutexLock lock(&mu_);
    status_ = status;
    body_ = std::move(body);
  }
  void set_delay(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    delay_ = d;
  }

 private:
  void Answer(const httplib::Request& req, httplib::Response& res) {
    int status;
    std::string body;
    absl::Duration delay;
    {
      absl::MutexLock lock(&mu_);
      ++requests_;
      max_active_ = std::max(max_active_, ++active_);
      status = status_;
      body = absl::StrReplaceAll(
          body_, {{"$AUTH", req.get_header_value("Authorization")}});
      delay = delay_;
    }
    absl::SleepFor(delay);
    res.status = status;
    res.set_content(body, "application/json");
    absl::MutexLock lock(&mu_);
    --active_;
  }

  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex mu_;
  int status_ ABSL_GUARDED_BY(mu_) = 200;
  std::string body_ ABSL_GUARDED_BY(mu_) = R"({"id":"t1","status":"queued"})";
  absl::Duration delay_ ABSL_GUARDED_BY(mu_);
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int max_active_ ABSL_GUARDED_BY(mu_) = 0;
  int requests_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST_F(UpstreamTest, OutOfCreditsIsFailedPreconditionWithStringStatusCode) {
  TinyServer tiny;
  tiny.set_answer(403, R"({"message":"Insufficient credits","path":"/v2/x",
      "requestId":"req-42","statusCode":"403","timestamp":"t"})");
  AimlApiOptions o = Options();
  o.base_url = tiny.url();
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("Insufficient credits"));
  EXPECT_THAT(s.status().message(), HasSubstr("req-42"));
  EXPECT_THAT(s.status().message(), HasSubstr("credits"));
  EXPECT_EQ(tiny.requests(), 1);
  up_.reset();  // closes keep-alive connections before the server stops
}

TEST_F(UpstreamTest, KeyEchoedByTheUpstreamNeverReachesAnyMessage) {
  TinyServer tiny;
  AimlApiOptions o = Options();
  o.base_url = tiny.url();
  AimlApiUpstream& up = Up(o);
  for (int status : {400, 401, 403, 404, 429, 500, 503}) {
    tiny.set_answer(status, R"({"message":"you sent $AUTH","statusCode":1})");
    absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(s.status().message(), HasSubstr("[redacted]")) << status;
    absl::StatusOr<Snapshot> p = PollSync(up, "id");
    EXPECT_FALSE(p.ok());
    EXPECT_THAT(p.status().message(), HasSubstr("[redacted]")) << status;
  }
  EXPECT_GT(secrets_.size(), 13u);  // TearDown checks every message
  up_.reset();
}

TEST_F(UpstreamTest, ConcurrencyCapBoundsRequestsInFlight) {
  TinyServer tiny;
  tiny.set_delay(absl::Milliseconds(50));
  tiny.set_answer(200, R"({"id":"t1","status":"active"})");
  AimlApiOptions o = Options();
  o.base_url = tiny.url();
  o.max_in_flight = 2;
  AimlApiUpstream& up = Up(o);
  std::atomic<int> ok{0};
  for (int i = 0; i < 12; ++i) {
    up.Poll(PollRequest{"t1", "gen", "", ""}, [&](absl::StatusOr<Snapshot> s) {
      if (s.ok() && s->state == TaskState::kGenerating) ++ok;
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ok < 12 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(ok, 12);
  EXPECT_LE(tiny.max_active(), 2);
  EXPECT_GE(tiny.max_active(), 1);
  up_.reset();
}

// A raw HTTP/1.1 server on loopback whose every answer is scripted: it can
// reset a connection without one answer byte or hang, which httplib
// cannot, and it counts exactly what arrived, including any resend that
// libcurl makes on its own. It binds at construction and accepts only after
// Listen(), so that connecting before then is refused.
class ScriptedServer {
 public:
  struct Request {
    int connection = 0;  // which TCP connection carried it (1, 2, ...)
    std::string method;
    std::string target;
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
  };
  struct Action {
    enum Kind { kAnswer, kReset, kHang } kind = kAnswer;
    int status = 200;
    std::string body = R"({"id":"job-1","status":"queued"})";
    std::vector<std::string> headers;  // "Name: value"
  };
  // Runs on a connection thread; `index` counts requests from 0.
  using Script = std::function<Action(const Request&, int index)>;

  explicit ScriptedServer(Script script, bool listen = true)
      : script_(std::move(script)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (listen) Listen();
  }

  ~ScriptedServer() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);
      threads.swap(threads_);
    }
    for (std::thread& t : threads) t.join();
    close(fd_);
  }

  // Starts accepting; safe to call twice and from any thread.
  void Listen() {
    if (listening_.exchange(true)) return;
    EXPECT_EQ(listen(fd_, 64), 0);
    acceptor_ = std::thread([this] { Accept(); });
  }

  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

  std::vector<Request> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  int Count(absl::string_view method) {
    int n = 0;
    for (const Request& r : requests()) n += r.method == method;
    return n;
  }

 private:
  void Accept() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const int conn = accept(fd_, nullptr, nullptr);
      if (conn < 0) continue;
      absl::MutexLock lock(&mu_);
      open_fds_.insert(conn);
      const int id = ++connections_;
      threads_.emplace_back([this, conn, id] { Serve(conn, id); });
    }
  }

  // Reads into `buf` until `done()`; false on EOF, error or stop.
  bool ReadUntil(int fd, std::string* buf, const std::function<bool()>& done) {
    char chunk[4096];
    while (!done()) {
      pollfd p{fd, POLLIN, 0};
      if (stop_) return false;
      if (poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = read(fd, chunk, sizeof chunk);
      if (n <= 0) return false;
      buf->append(chunk, static_cast<size_t>(n));
    }
    return true;
  }

  void Serve(int fd, int connection) {
    std::string buf;
    while (!stop_) {
      if (!ReadUntil(fd, &buf, [&] {
            return buf.find("\r\n\r\n") != std::string::npos;
          })) {
        break;
      }
      const size_t head_end = buf.find("\r\n\r\n");
      Request req;
      req.connection = connection;
      std::vector<std::string> lines =
          absl::StrSplit(buf.substr(0, head_end), "\r\n");
      std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
      req.method = first[0];
      req.target = first.size() > 1 ? first[1] : "";
      for (size_t i = 1; i < lines.size(); ++i) {
        const size_t colon = lines[i].find(':');
        if (colon == std::string::npos) continue;
        req.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
            std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
      }
      size_t length = 0;
      if (req.headers.count("content-length")) {
        length = std::stoul(req.headers["content-length"]);
      }
      buf.erase(0, head_end + 4);
      if (!ReadUntil(fd, &buf, [&] { return buf.size() >= length; })) break;
      req.body = buf.substr(0, length);
      buf.erase(0, length);
      int index;
      {
        absl::MutexLock lock(&mu_);
        index = static_cast<int>(requests_.size());
        requests_.push_back(req);
      }
      const Action action = script_(req, index);
      if (action.kind == Action::kReset) {
        linger l{1, 0};  // close with RST, no answer byte
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        break;
      }
      if (action.kind == Action::kHang) {
        std::string ignored;
        ReadUntil(fd, &ignored, [] { return false; });  // until peer or stop
        break;
      }
      std::string out =
          absl::StrCat("HTTP/1.1 ", action.status, " Scripted\r\n",
                       "Content-Type: application/json\r\nContent-Length: ",
                       action.body.size(), "\r\n");
      for (const std::string& h : action.headers) {
        absl::StrAppend(&out, h, "\r\n");
      }
      absl::StrAppend(&out, "\r\n", action.body);
      if (write(fd, out.data(), out.size()) !=
          static_cast<ssize_t>(out.size())) {
        break;
      }
    }
    absl::MutexLock lock(&mu_);
    open_fds_.erase(fd);
    close(fd);
  }

  const Script script_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> listening_{false};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<Request> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::set<int> open_fds_ ABSL_GUARDED_BY(mu_);
  int connections_ ABSL_GUARDED_BY(mu_) = 0;
};

using Action = ScriptedServer::Action;

Action Answer(int status, std::string body,
              std::vector<std::string> headers = {}) {
  Action a;
  a.status = status;
  a.body = std::move(body);
  a.headers = std::move(headers);
  return a;
}

Action Kind(Action::Kind kind) {
  Action a;
  a.kind = kind;
  return a;
}

// "a=1&b=x%2Fy&b=z" -> {{"a","1"},{"b","x/y"},{"b","z"}}, in order.
std::vector<std::pair<std::string, std::string>> QueryParams(
    const std::string& target) {
  std::vector<std::pair<std::string, std::string>> out;
  const size_t q = target.find('?');
  if (q == std::string::npos) return out;
  for (absl::string_view part : absl::StrSplit(target.substr(q + 1), '&')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, '=');
    std::string decoded;
    for (size_t i = 0; i < kv.second.size(); ++i) {
      if (kv.second[i] == '%' && i + 2 < kv.second.size()) {
        decoded += static_cast<char>(
            std::stoi(kv.second.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        decoded += kv.second[i];
      }
    }
    out.emplace_back(kv.first, decoded);
  }
  return out;
}

class FaultTest : public ClientTest {};

TEST_F(FaultTest, ConnectRefusedIsRetriedAndTheOneRequestThenSucceeds) {
  ScriptedServer server(
      [](const ScriptedServer::Request&, int) {
        return Answer(201, R"({"id":"job-1","status":"queued"})");
      },
      /*listen=*/false);
  AimlApiOptions o = BaseOptions(server.url());
  // The first attempt is refused; the server starts listening right after.
  o.on_attempt = [&server](const AttemptRecord& r) {
    if (r.kind == CallKind::kSubmit && r.http_status == 0) server.Listen();
  };
  AimlApiUpstream& up = Up(o);
  int readies = 0;
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request(), &readies);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->upstream_id, "job-1");
  EXPECT_EQ(readies, 1);
  EXPECT_EQ(server.Count("POST"), 1);
  EXPECT_EQ(up.counters().retries, 1);
  EXPECT_EQ(up.counters().attempts["submit transport"], 1);
  EXPECT_EQ(up.counters().attempts["submit 2xx"], 1);
}

// A listener that never accepts, with its accept queue full: the kernel
// drops further SYNs, so a connect hangs until curl's connect timeout.
class FullBacklog {
 public:
  FullBacklog() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(fd_, 0), 0);
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    for (int i = 0; i < 4; ++i) {
      const int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      fillers_.push_back(c);
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ~FullBacklog() {
    for (int c : fillers_) close(c);
    close(fd_);
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::vector<int> fillers_;
};

TEST_F(FaultTest, ConnectTimeoutNeverSentIsRetriedThenUnavailable) {
  FullBacklog blackhole;
  AimlApiOptions o = BaseOptions(blackhole.url());
  o.connect_timeout = absl::Milliseconds(200);
  o.max_attempts = 2;
  AimlApiUpstream& up = Up(o);
  int readies = 0;
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request(), &readies);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("nothing was sent"));
  EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kNotCreated);
  EXPECT_EQ(readies, 1);
  EXPECT_EQ(up.counters().retries, 1);
  EXPECT_EQ(up.counters().attempts["submit transport"], 2);
}

TEST_F(FaultTest, Submit429IsRetriedThenSucceeds) {
  ScriptedServer server([](const ScriptedServer::Request&, int i) {
    return i == 0 ? Answer(429, R"({"message":"Too many requests"})")
                  : Answer(201, R"({"id":"job-2","status":"queued"})");
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  int readies = 0;
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request("gen-429"), &readies);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->upstream_id, "job-2");
  EXPECT_EQ(readies, 1);
  std::vector<ScriptedServer::Request> reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  for (const auto& r : reqs) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.headers.at("x-client-request-id"), "gen-429");
    EXPECT_EQ(r.body, reqs[0].body);
  }
  EXPECT_EQ(up.counters().retries, 1);
}

TEST_F(FaultTest, AmbiguousHttpAnswersAreUnknownAndSentOnce) {
  for (int status : {500, 502, 503, 504, 408, 303}) {
    ScriptedServer server([status](const ScriptedServer::Request&, int) {
      return Answer(status, R"({"message":"upstream broke","statusCode":"x"})");
    });
    AimlApiUpstream& up = Up(BaseOptions(server.url()));
    absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnknown) << status;
    EXPECT_THAT(s.status().message(), HasSubstr("may have created the job"));
    EXPECT_THAT(s.status().message(), HasSubstr("never resubmitted"));
    EXPECT_THAT(s.status().message(), HasSubstr("upstream broke"));
    EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kMaybeCreated);
    EXPECT_EQ(server.Count("POST"), 1) << status;
    EXPECT_EQ(up.counters().retries, 0) << status;
    up_.reset();
  }
}

TEST_F(FaultTest, RefusalsAreNotCreatedAndSentOnce) {
  struct Case {
    int status;
    absl::StatusCode code;
  } cases[] = {{400, absl::StatusCode::kInvalidArgument},
               {401, absl::StatusCode::kUnauthenticated},
               {403, absl::StatusCode::kFailedPrecondition}};
  for (const Case& c : cases) {
    ScriptedServer server([&c](const ScriptedServer::Request&, int) {
      return Answer(c.status, R"({"message":"no"})");
    });
    AimlApiUpstream& up = Up(BaseOptions(server.url()));
    absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
    EXPECT_EQ(s.status().code(), c.code) << c.status;
    EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kNotCreated);
    EXPECT_EQ(server.Count("POST"), 1);
    up_.reset();
  }
}

TEST_F(FaultTest, SuccessWithoutAnIdIsUnknownAndSentOnce) {
  for (const char* body : {R"({"status":"queued"})", "", "{\"id\":null}"}) {
    ScriptedServer server([body](const ScriptedServer::Request&, int) {
      return Answer(201, body);
    });
    AimlApiUpstream& up = Up(BaseOptions(server.url()));
    absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnknown) << body;
    EXPECT_THAT(s.status().message(), HasSubstr("never resubmitted"));
    EXPECT_EQ(server.Count("POST"), 1) << body;
    up_.reset();
  }
}

TEST_F(FaultTest, ResetWithNoAnswerByteIsUnknownAndNotResentByLibcurl) {
  // A poll first leaves a keep-alive connection open. Were the POST sent on
  // it, libcurl would resend it on a new connection by itself after this
  // reset; the submit's fresh connection prevents that.
  ScriptedServer server([](const ScriptedServer::Request& r, int) {
    if (r.method == "GET")
      return Answer(200, R"({"id":"a","status":"active"})");
    return Kind(Action::kReset);
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  ASSERT_TRUE(PollSync(up, "a").ok());
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnknown) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("after it was sent"));
  EXPECT_EQ(ClassifySubmitError(s.status()), SubmitOutcome::kMaybeCreated);
  EXPECT_EQ(server.Count("POST"), 1);
  std::vector<ScriptedServer::Request> reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_NE(reqs[1].connection, reqs[0].connection);
  // Polls still retry a reset.
  ASSERT_TRUE(PollSync(up, "a").ok());
}

TEST_F(FaultTest, TimeoutAfterSendingIsUnknownAndSentOnce) {
  ScriptedServer server(
      [](const ScriptedServer::Request&, int) { return Kind(Action::kHang); });
  AimlApiOptions o = BaseOptions(server.url());
  o.request_timeout = absl::Milliseconds(300);
  AimlApiUpstream& up = Up(o);
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnknown) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("in time"));
  EXPECT_EQ(server.Count("POST"), 1);
  EXPECT_EQ(up.counters().retries, 0);
  up_.reset();
}

TEST_F(FaultTest, NothingLeavesBeforeSend) {
  ScriptedServer server([](const ScriptedServer::Request& r, int) {
    if (r.method == "GET")
      return Answer(200, R"({"id":"p","status":"queued"})");
    return Answer(201, R"({"id":"job-3","status":"queued"})");
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  std::promise<std::shared_ptr<SubmitGate>> gate_p;
  std::promise<absl::StatusOr<SubmitResult>> done_p;
  up.Submit(
      Request(),
      [&](std::shared_ptr<SubmitGate> g) { gate_p.set_value(std::move(g)); },
      [&](absl::StatusOr<SubmitResult> s) { done_p.set_value(std::move(s)); });
  std::shared_ptr<SubmitGate> gate = gate_p.get_future().get();
  EXPECT_EQ(up.counters().awaiting_send, 1);
  // A poll through the same loop and server finishes; the POST did not go.
  ASSERT_TRUE(PollSync(up, "p").ok());
  EXPECT_EQ(server.Count("POST"), 0);
  EXPECT_EQ(server.Count("GET"), 1);
  gate->Send();  // from the test thread
  gate->Send();  // later decisions do nothing
  gate->Abandon();
  absl::StatusOr<SubmitResult> s = done_p.get_future().get();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->upstream_id, "job-3");
  EXPECT_EQ(server.Count("POST"), 1);
  EXPECT_EQ(up.counters().awaiting_send, 0);
}

TEST_F(FaultTest, AbandonAnswersAbortedAndFreesTheSlot) {
  ScriptedServer server([](const ScriptedServer::Request&, int) {
    return Answer(201, R"({"id":"job-b","status":"queued"})");
  });
  AimlApiOptions o = BaseOptions(server.url());
  o.max_in_flight = 1;
  AimlApiUpstream& up = Up(o);
  std::promise<std::shared_ptr<SubmitGate>> gate_a;
  std::promise<absl::Status> done_a;
  up.Submit(
      Request("gen-a"),
      [&](std::shared_ptr<SubmitGate> g) { gate_a.set_value(std::move(g)); },
      [&](absl::StatusOr<SubmitResult> s) { done_a.set_value(s.status()); });
  std::shared_ptr<SubmitGate> a = gate_a.get_future().get();
  std::atomic<bool> b_ready{false};
  std::promise<absl::StatusOr<SubmitResult>> done_b;
  up.Submit(
      Request("gen-b"),
      [&](std::shared_ptr<SubmitGate> g) {
        b_ready = true;
        g->Send();
      },
      [&](absl::StatusOr<SubmitResult> s) { done_b.set_value(std::move(s)); });
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(b_ready);  // A holds the only slot
  a->Abandon();
  absl::Status sa = done_a.get_future().get();
  EXPECT_EQ(sa.code(), absl::StatusCode::kAborted) << sa;
  EXPECT_EQ(ClassifySubmitError(sa), SubmitOutcome::kNotCreated);
  absl::StatusOr<SubmitResult> sb = done_b.get_future().get();
  ASSERT_TRUE(sb.ok()) << sb.status();
  EXPECT_TRUE(b_ready);
  std::vector<ScriptedServer::Request> reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].headers.at("x-client-request-id"), "gen-b");
}

// Issue 17: tenants take turns at the rate limit, and each tenant's waiting
// polls go before its waiting submits. The only slot is held by an
// undecided gate while everything queues, so the order the server sees
// comes from the admission order alone (no timing).
TEST_F(FaultTest, TenantsTakeTurnsAndPollsPassTheirOwnQueuedSubmits) {
  ScriptedServer server([](const ScriptedServer::Request& r, int) {
    if (absl::StartsWith(r.target, "/v2/logs")) {
      return Answer(200, R"({"data":[],"pagination":{"limit":100,"offset":0,)"
                         R"("total":0,"has_more":false}})");
    }
    if (r.method == "GET") {
      return Answer(200, R"({"id":"p","status":"generating"})");
    }
    return Answer(201, R"({"id":"job","status":"queued"})");
  });
  AimlApiOptions o = BaseOptions(server.url());
  o.max_in_flight = 1;
  o.rate_limit_per_second = 50;
  o.rate_limit_burst = 1;
  AimlApiUpstream& up = Up(o);
  auto submit = [&up](const std::string& id, const std::string& tenant,
                      std::atomic<int>* done) {
    SubmitRequest r = Request(id);
    r.tenant = tenant;
    up.Submit(
        std::move(r), [](std::shared_ptr<SubmitGate> g) { g->Send(); },
        [done](absl::StatusOr<SubmitResult> s) {
          EXPECT_TRUE(s.ok()) << s.status();
          ++*done;
        });
  };
  // The flooding tenant's first submit holds the only slot, gate undecided.
  std::promise<std::shared_ptr<SubmitGate>> held_p;
  std::atomic<int> done{0};
  SubmitRequest first = Request("flood-0");
  first.tenant = "flood";
  up.Submit(
      std::move(first),
      [&](std::shared_ptr<SubmitGate> g) { held_p.set_value(std::move(g)); },
      [&](absl::StatusOr<SubmitResult> s) {
        EXPECT_TRUE(s.ok()) << s.status();
        ++done;
      });
  std::shared_ptr<SubmitGate> held = held_p.get_future().get();
  // Queued behind it, in this order: three more of flood's submits, one of
  // quiet's, then polls of both tenants (flood's first) and a usage-log
  // page.
  for (int i = 1; i <= 3; ++i) {
    submit(absl::StrCat("flood-", i), "flood", &done);
  }
  submit("quiet-0", "quiet", &done);
  for (int i = 0; i < 3; ++i) {
    up.Poll(PollRequest{"p", absl::StrCat("poll-flood-", i), "", "flood"},
            [&](absl::StatusOr<Snapshot> s) {
              EXPECT_TRUE(s.ok()) << s.status();
              ++done;
            });
  }
  up.Poll(PollRequest{"p", "poll-quiet-0", "", "quiet"},
          [&](absl::StatusOr<Snapshot> s) {
            EXPECT_TRUE(s.ok()) << s.status();
            ++done;
          });
  LogQuery q;
  q.end = absl::Now();
  q.start = q.end - absl::Minutes(30);
  up.ListLogs(q, [&](absl::StatusOr<LogPage> s) {
    EXPECT_TRUE(s.ok()) << s.status();
    ++done;
  });
  EXPECT_EQ(up.counters().queued, 9);
  EXPECT_EQ(server.requests().size(), 0u);
  held->Send();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (done < 10 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(done, 10);

  std::vector<std::string> order;  // what arrived, by client id or "logs"
  for (const ScriptedServer::Request& r : server.requests()) {
    auto id = r.headers.find("x-client-request-id");
    order.push_back(id != r.headers.end() ? id->second : "logs");
  }
  // The lanes ("#usage-log" < "flood" < "quiet") take turns, starting after
  // flood (served last); on its turn a tenant sends its polls before its
  // submits. So quiet's poll and create each wait for one call of flood at
  // most, not for flood's backlog, and flood's polls pass its own queued
  // submits. FIFO would have been flood-1..3, quiet-0, then the reads.
  EXPECT_THAT(order, ::testing::ElementsAre("flood-0", "poll-quiet-0", "logs",
                                            "poll-flood-0", "quiet-0",
                                            "poll-flood-1", "poll-flood-2",
                                            "flood-1", "flood-2", "flood-3"));
  EXPECT_EQ(server.Count("POST"), 5);
}

TEST_F(FaultTest, ADroppedGateIsAnAbandon) {
  ScriptedServer server([](const ScriptedServer::Request&, int) {
    return Answer(201, R"({"id":"job","status":"queued"})");
  });
  AimlApiOptions o = BaseOptions(server.url());
  o.max_in_flight = 1;
  AimlApiUpstream& up = Up(o);
  std::promise<absl::Status> dropped;
  up.Submit(
      Request("gen-dropped"), [](std::shared_ptr<SubmitGate>) {},
      [&](absl::StatusOr<SubmitResult> s) { dropped.set_value(s.status()); });
  EXPECT_EQ(dropped.get_future().get().code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(SubmitSync(up, Request("gen-next")).ok());
  EXPECT_EQ(server.Count("POST"), 1);
}

TEST_F(FaultTest, DestroyedBeforeReadyIsCancelledAndLateSendIsHarmless) {
  ScriptedServer server([](const ScriptedServer::Request&, int) {
    return Answer(201, R"({"id":"job","status":"queued"})");
  });
  AimlApiOptions o = BaseOptions(server.url());
  o.max_in_flight = 1;
  auto up = std::make_unique<AimlApiUpstream>(o);
  std::promise<std::shared_ptr<SubmitGate>> gate_a;
  std::atomic<int> a_calls{0}, b_calls{0}, b_readies{0};
  absl::Status sa, sb;
  up->Submit(
      Request("gen-a"),
      [&](std::shared_ptr<SubmitGate> g) { gate_a.set_value(std::move(g)); },
      [&](absl::StatusOr<SubmitResult> s) {
        ++a_calls;
        sa = s.status();
      });
  std::shared_ptr<SubmitGate> a = gate_a.get_future().get();
  up->Submit(
      Request("gen-b"), [&](std::shared_ptr<SubmitGate>) { ++b_readies; },
      [&](absl::StatusOr<SubmitResult> s) {
        ++b_calls;
        sb = s.status();
      });
  up.reset();
  EXPECT_EQ(a_calls, 1);
  EXPECT_EQ(b_calls, 1);
  EXPECT_EQ(b_readies, 0);
  EXPECT_EQ(sa.code(), absl::StatusCode::kCancelled) << sa;
  EXPECT_THAT(sa.message(), HasSubstr("never sent"));
  EXPECT_EQ(sb.code(), absl::StatusCode::kCancelled) << sb;
  a->Send();  // the client is gone: nothing happens
  a.reset();
  EXPECT_EQ(server.Count("POST"), 0);
}

TEST_F(FaultTest, CreditHeadersReachTheResultAndTheSnapshot) {
  ScriptedServer server([](const ScriptedServer::Request& r, int) {
    if (r.method == "GET") {
      return Answer(200, R"({"id":"job","status":"completed",
          "video":{"url":"https://cdn/x.mp4"}})",
                    {"x-aimlapi-credits-used: 42"});
    }
    return Answer(201, R"({"id":"job","status":"queued"})",
                  {"X-Aimlapi-Credits-Used: 1680000",
                   "x-aimlapi-usd-spent: 0.84", "x-inference-id: job"});
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->credits_used, 1680000);
  EXPECT_DOUBLE_EQ(s->usd_spent, 0.84);
  absl::StatusOr<Snapshot> p = PollSync(up, "job");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->credits_used, 42);
}

TEST_F(FaultTest, ListLogsSendsTheWindowFiltersAndPagesAndParsesRows) {
  ScriptedServer server([](const ScriptedServer::Request& r, int) {
    const bool second = absl::StrContains(r.target, "offset=2");
    return Answer(
        200,
        absl::StrCat(
            R"({"data":[{"created":"2026-01-02T03:04:05Z","status":"succeeded",)",
            R"("model":"klingai/v2-master-text-to-video",)",
            R"("cost":{"usd":0.84,"credits":1680000},"request_id":"r1",)",
            R"("inference_id":"inf:kling/v2","client_request_id":)",
            second ? R"(null}],)" : R"("gen-1"}],)",
            R"("pagination":{"limit":2,"offset":)", second ? "2" : "0",
            R"(,"total":3,"has_more":)", second ? "false" : "true", "}}"));
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  LogQuery q;
  q.start = absl::FromUnixMillis(1767323045500);  // 2026-01-02T03:04:05.5Z
  q.end = q.start + absl::Minutes(30);
  q.models = {"klingai/v2-master-text-to-video", "kling-video/v1.6/pro"};
  q.limit = 2;
  absl::StatusOr<LogPage> first = LogsSync(up, q);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->rows.size(), 1u);
  EXPECT_TRUE(first->has_more);
  EXPECT_EQ(first->total, 3);
  EXPECT_EQ(first->rows[0].client_request_id, "gen-1");
  EXPECT_EQ(first->rows[0].inference_id, "inf:kling/v2");
  EXPECT_EQ(first->rows[0].cost_credits, 1680000);
  q.offset = 2;
  absl::StatusOr<LogPage> second = LogsSync(up, q);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->has_more);
  EXPECT_EQ(second->rows[0].client_request_id, "");  // null

  std::vector<ScriptedServer::Request> reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(reqs[i].method, "GET");
    EXPECT_TRUE(absl::StartsWith(reqs[i].target, "/v2/logs?"))
        << reqs[i].target;
    EXPECT_EQ(reqs[i].headers.at("authorization"),
              absl::StrCat("Bearer ", kKey));
    EXPECT_EQ(reqs[i].headers.count("x-client-request-id"), 0u);
    using P = std::pair<std::string, std::string>;
    EXPECT_EQ(QueryParams(reqs[i].target),
              (std::vector<P>{{"start", "2026-01-02T03:04:05Z"},
                              {"end", "2026-01-02T03:34:06Z"},
                              {"model", "klingai/v2-master-text-to-video"},
                              {"model", "kling-video/v1.6/pro"},
                              {"limit", "2"},
                              {"offset", i == 0 ? "0" : "2"}}));
  }
  // Values are percent-encoded on the wire.
  EXPECT_THAT(reqs[0].target, HasSubstr("model=kling-video%2Fv1.6%2Fpro"));
  EXPECT_THAT(reqs[0].target, HasSubstr("start=2026-01-02T03%3A04%3A05Z"));
}

TEST_F(FaultTest, ListLogs429IsResourceExhaustedWithRetryAfterAndNoRetry) {
  ScriptedServer server([](const ScriptedServer::Request&, int i) {
    return Answer(429, R"({"message":"Too many requests","statusCode":429})",
                  i == 0 ? std::vector<std::string>{"Retry-After: 7"}
                         : std::vector<std::string>{});
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  LogQuery q;
  q.start = absl::Now() - absl::Hours(1);
  q.end = absl::Now();
  absl::StatusOr<LogPage> a = LogsSync(up, q);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::string(*a.status().GetPayload(kRetryAfterPayload)), "7");
  EXPECT_EQ(RetryAfterOf(a.status()), absl::Seconds(7));
  EXPECT_EQ(server.Count("GET"), 1);
  absl::StatusOr<LogPage> b = LogsSync(up, q);  // no Retry-After header
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(RetryAfterOf(b.status()).has_value());
  EXPECT_EQ(server.Count("GET"), 2);
  EXPECT_EQ(up.counters().retries, 0);
}

TEST_F(FaultTest, ListLogsRetries5xxAndRefusesBadWindowsLocally) {
  ScriptedServer server([](const ScriptedServer::Request&, int) {
    return Answer(503, R"({"message":"down"})");
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  LogQuery q;
  q.start = absl::Now() - absl::Hours(1);
  q.end = absl::Now();
  absl::StatusOr<LogPage> a = LogsSync(up, q);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.Count("GET"), 3);
  LogQuery reversed = q;
  std::swap(reversed.start, reversed.end);
  EXPECT_EQ(LogsSync(up, reversed).status().code(),
            absl::StatusCode::kInvalidArgument);
  LogQuery too_long = q;
  too_long.start = q.end - absl::Hours(24 * 93);
  EXPECT_EQ(LogsSync(up, too_long).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.Count("GET"), 3);
}

TEST_F(FaultTest, ControlCharactersAndTheKeyNeverLeaveAPollAnswer) {
  ScriptedServer server([](const ScriptedServer::Request& r, int) {
    const std::string auth = r.headers.at("authorization");
    return Answer(
        200,
        absl::StrCat(
            R"({"id":"job","status":"generating\u001b[0m",)",
            R"("error":{"name":"Bad\u0007Name","message":"line1\r\n)",
            R"(line2 \u009b2J )", auth, R"("},)",
            R"("video":{"url":"https://cdn/x.mp4\r\nX-Evil: 1",)",
            R"("content_type":"video/mp4\u0000","file_name":"x\u007f.mp4"}})"));
  });
  AimlApiUpstream& up = Up(BaseOptions(server.url()));
  absl::StatusOr<Snapshot> p = PollSync(up, "job");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->raw_status, "generating[0m");
  ASSERT_TRUE(p->error.has_value());
  EXPECT_EQ(p->error->name, "Bad Name");
  EXPECT_EQ(p->error->message, "line1 line2  2J Bearer [redacted]");
  ASSERT_TRUE(p->video.has_value());
  EXPECT_EQ(p->video->url, "https://cdn/x.mp4X-Evil: 1");
  EXPECT_EQ(p->video->content_type, "video/mp4");
  EXPECT_EQ(p->video->file_name, "x.mp4");
}

TEST_F(FaultTest, KeyOverPlainHttpToAnotherHostIsRefusedWithoutARequest) {
  // 192.0.2.1 is TEST-NET-1: never contacted, the call fails before.
  AimlApiUpstream& up = Up(BaseOptions("http://192.0.2.1:9"));
  std::atomic<int> readies{0};
  std::promise<absl::Status> done;
  up.Submit(
      Request(), [&](std::shared_ptr<SubmitGate>) { ++readies; },
      [&](absl::StatusOr<SubmitResult> s) { done.set_value(s.status()); });
  absl::Status s = done.get_future().get();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("plain http"));
  EXPECT_EQ(ClassifySubmitError(s), SubmitOutcome::kNotCreated);
  EXPECT_EQ(readies, 0);
  EXPECT_EQ(PollSync(up, "x").status().code(),
            absl::StatusCode::kFailedPrecondition);
  LogQuery q;
  q.start = absl::Now() - absl::Hours(1);
  q.end = absl::Now();
  EXPECT_EQ(LogsSync(up, q).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(up.counters().attempts.empty());
}

}  // namespace
}  // namespace videogen::upstream
