// AimlApiUpstream against a live in-process videogen-sim on loopback (and a
// tiny httplib server for answers the sim never gives).
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
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

class UpstreamTest : public ::testing::Test {
 protected:
  void SetUp() override { StartSim(sim::SimOptions{}); }

  void TearDown() override {
    secrets_.ExpectClean();
    up_.reset();
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

  AimlApiOptions Options() {
    AimlApiOptions o;
    o.base_url = sim_->base_url();
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
  AimlApiUpstream& Up() { return Up(Options()); }

  static SubmitRequest Request(std::string id = "gen-1") {
    SubmitRequest r;
    r.client_request_id = std::move(id);
    r.prompt = "a red fox running through snow";
    r.aspect_ratio = "16:9";
    r.duration_seconds = 5;
    return r;
  }

  // Runs a call and waits for its one callback; checks the thread it ran on.
  absl::StatusOr<SubmitResult> SubmitSync(AimlApiUpstream& up,
                                          SubmitRequest r) {
    std::promise<absl::StatusOr<SubmitResult>> p;
    auto f = p.get_future();
    up.Submit(std::move(r), [&](absl::StatusOr<SubmitResult> s) {
      EXPECT_NE(std::this_thread::get_id(), test_thread_);
      p.set_value(std::move(s));
    });
    EXPECT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    absl::StatusOr<SubmitResult> s = f.get();
    secrets_.Note(s.status());
    return s;
  }

  absl::StatusOr<Snapshot> PollSync(AimlApiUpstream& up, const std::string& id,
                                    std::string client_id = "gen-1") {
    std::promise<absl::StatusOr<Snapshot>> p;
    auto f = p.get_future();
    PollRequest r{id, std::move(client_id), ""};
    up.Poll(r, [&](absl::StatusOr<Snapshot> s) {
      EXPECT_NE(std::this_thread::get_id(), test_thread_);
      p.set_value(std::move(s));
    });
    EXPECT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    absl::StatusOr<Snapshot> s = f.get();
    secrets_.Note(s.status());
    return s;
  }

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
  std::unique_ptr<AimlApiUpstream> up_;
  SecretCheck secrets_;
  const std::thread::id test_thread_ = std::this_thread::get_id();
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
  absl::StatusOr<SubmitResult> s2 = SubmitSync(up, Request("gen-b"));
  ASSERT_TRUE(s2.ok()) << s2.status();
  sim::SimStats stats = sim_->Stats();
  EXPECT_EQ(stats.polls_by_id[s->upstream_id], 3);
  EXPECT_EQ(stats.faults_by_kind["500"], 1);
  EXPECT_EQ(stats.faults_by_kind["503"], 1);
  EXPECT_EQ(stats.requests_by_path[kLegacyPost], 3);
  EXPECT_EQ(stats.submits, 2);
  EXPECT_EQ(up.counters().retries, 2);
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
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(s.status().message(), HasSubstr("may or may not exist"));
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
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("may or may not exist"));
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
  absl::StatusOr<SubmitResult> s = SubmitSync(up, Request());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("--upstream_url"));
  EXPECT_THAT(s.status().message(), Not(HasSubstr("may or may not")));
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
  EXPECT_THAT(bad.status().message(), HasSubstr("may or may not exist"));
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
  constexpr int kPolls = 1000;
  absl::Mutex mu;
  int done = 0, ok = 0, wrong = 0;
  std::set<std::thread::id> threads;
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int i = t; i < kPolls; i += 4) {
        const std::string id = ids[i % ids.size()];
        up.Poll(PollRequest{id, "gen", ""},
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
  // Keep-alive: 1,020 requests over at most max_connections connections.
  EXPECT_GE(c.connections_opened, 1);
  EXPECT_LE(c.connections_opened, 16);
}

TEST_F(UpstreamTest, RateLimitSpacesRequests) {
  AimlApiOptions o = Options();
  o.rate_limit_per_second = 20;
  o.rate_limit_burst = 1;
  AimlApiUpstream& up = Up(o);
  std::atomic<int> done{0};
  const absl::Time start = absl::Now();
  for (int i = 0; i < 10; ++i) {
    up.Poll(PollRequest{"x", "gen", ""},
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
    up->Poll(PollRequest{"x", "gen", ""}, [&](absl::StatusOr<Snapshot> s) {
      ++calls;
      if (s.status().code() == absl::StatusCode::kCancelled) ++cancelled;
    });
  }
  std::string submit_message;
  up->Submit(Request(), [&](absl::StatusOr<SubmitResult> s) {
    ++calls;
    if (s.status().code() == absl::StatusCode::kCancelled) ++cancelled;
    submit_message = std::string(s.status().message());
  });
  absl::SleepFor(absl::Milliseconds(200));
  up.reset();
  EXPECT_EQ(calls, 11);
  EXPECT_EQ(cancelled, 11);
  EXPECT_THAT(submit_message, HasSubstr("shutting down"));
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
    up.Poll(PollRequest{"t1", "gen", ""}, [&](absl::StatusOr<Snapshot> s) {
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

}  // namespace
}  // namespace videogen::upstream
