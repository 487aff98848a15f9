// Spend safety end to end (issue 15, design.md §5): the real server against
// the real simulator with faults that make the upstream job and then spoil
// the answer, a kill -9 with submits in flight, and a submit that never
// created anything. What counts is what the sim saw: its job count and its
// usage log (one row per job, keyed by the X-Client-Request-Id we sent).
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "httplib.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

using v1::Generation;
using v1::GenerationEvent;
using Stub = v1::VideoGeneration::Stub;

// Reconciliation at test speed: a pass every 500 ms, well under the sim's
// 200 log requests per minute.
const std::vector<std::string> kFastReconcile = {"--reconcile_interval=500ms",
                                                 "--reconcile_rate=120"};

std::vector<std::string> Concat(std::vector<std::string> a,
                                const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

v1::GenerateRequest Request(const std::string& request_id) {
  v1::GenerateRequest r = SimpleRequest(absl::StrCat("clip ", request_id));
  r.set_request_id(request_id);
  r.set_duration_seconds(5);
  return r;
}

grpc::Status CreateGen(Stub* stub, const v1::GenerateRequest& r,
                       Generation* out,
                       absl::Duration timeout = absl::Seconds(30)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return stub->CreateGeneration(&ctx, r, out);
}

// Watches `id` to its end; the last generation seen (state UNSPECIFIED when
// the stream failed or timed out).
Generation WatchToEnd(Stub* stub, const std::string& id,
                      absl::Duration timeout = absl::Seconds(45)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::WatchGenerationRequest req;
  req.set_id(id);
  auto reader = stub->WatchGeneration(&ctx, req);
  StreamResult r = ReadAll(reader.get());
  Generation last;
  for (const GenerationEvent& e : r.events) {
    if (e.type() != GenerationEvent::TYPE_HEARTBEAT) last = e.generation();
  }
  EXPECT_TRUE(r.status.ok()) << id << ": " << r.status.error_message();
  if (!r.status.ok()) return Generation();
  return last;
}

// Watches every id at once (one thread each); id -> last generation.
std::map<std::string, Generation> WatchAllToEnd(
    Stub* stub, const std::vector<std::string>& ids) {
  std::vector<Generation> last(ids.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < ids.size(); ++i) {
    threads.emplace_back([&, i] { last[i] = WatchToEnd(stub, ids[i]); });
  }
  for (auto& t : threads) t.join();
  std::map<std::string, Generation> out;
  for (size_t i = 0; i < ids.size(); ++i) out[ids[i]] = last[i];
  return out;
}

int64_t SimSubmits(const Sim& sim) {
  nlohmann::json stats = sim.Stats();
  return stats.contains("submits") ? stats["submits"].get<int64_t>() : -1;
}

// The sim's jobs (usage-log rows) per client_request_id, and the job id
// (inference_id) of each.
struct JobsByClientId {
  std::map<std::string, int> count;
  std::map<std::string, std::string> inference_id;
  int rows = 0;
};

JobsByClientId JobsOf(const Sim& sim) {
  JobsByClientId j;
  for (const nlohmann::json& row : FullUsageLog(sim)) {
    ++j.rows;
    const std::string cid = row["client_request_id"].is_string()
                                ? row["client_request_id"].get<std::string>()
                                : "<null>";
    ++j.count[cid];
    j.inference_id[cid] = row["inference_id"].get<std::string>();
  }
  return j;
}

// Each of `gens` completed on exactly one upstream job, the one the sim made
// for its X-Client-Request-Id, and the sim made no other job.
void ExpectOneJobEachCompleted(const Sim& sim,
                               const std::map<std::string, Generation>& gens) {
  JobsByClientId jobs = JobsOf(sim);
  EXPECT_EQ(jobs.rows, static_cast<int>(gens.size()));
  EXPECT_EQ(SimSubmits(sim), static_cast<int64_t>(gens.size()));
  int duplicates = 0;
  for (const auto& [id, g] : gens) {
    EXPECT_EQ(g.state(), Generation::STATE_COMPLETED)
        << id << " ended " << Generation::State_Name(g.state()) << " "
        << g.error().reason() << " " << g.error().message();
    EXPECT_EQ(jobs.count[id], 1) << id;
    if (jobs.count[id] > 1) duplicates += jobs.count[id] - 1;
    EXPECT_FALSE(g.upstream_id().empty()) << id;
    EXPECT_EQ(g.upstream_id(), jobs.inference_id[id])
        << id << " did not adopt its upstream job";
    EXPECT_FALSE(g.video().url().empty()) << id;
  }
  EXPECT_EQ(duplicates, 0);
}

absl::Time Time(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

// Lines of `log` (the server's JSON log) whose event is `event`.
int CountEvents(const std::string& log, const std::string& event) {
  int n = 0;
  const std::string needle = absl::StrCat("\"event\":\"", event, "\"");
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, needle)) ++n;
  }
  return n;
}

// The server's log once `event` shows up at least `want` times there (the
// log is written by a thread of its own), or after 5 s.
std::string LogWith(const Server& server, const std::string& event, int want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  std::string log = server.process->Stderr() + server.process->Stdout();
  while (CountEvents(log, event) < want && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
    log = server.process->Stderr() + server.process->Stdout();
  }
  return log;
}

// ---- every create answer lost ----------------------------------------------

struct FaultCase {
  std::string kind;  // the sim's create_* fault
  std::vector<std::string> sim_flags;
  std::vector<std::string> server_flags;
};

// Names the case in test listings (instead of its bytes).
void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.kind; }

class SpendE2eFaults : public ::testing::TestWithParam<FaultCase> {};

// 20 generations, every create answer spoiled after the job was made; each
// client sends its request_id three times (two at once, then once more).
// The upstream must end with exactly 20 jobs, and every generation must
// complete on the job the usage log shows for it.
TEST_P(SpendE2eFaults, EveryCreateAnswerLostStillMakesOneJobEach) {
  const FaultCase& fc = GetParam();
  Sim sim = StartSim(
      Concat({"--fault=create:" + fc.kind + ":every=1", "--logs_lag=1s"},
             fc.sim_flags));
  Server server = StartServer(sim.url, Concat(kFastReconcile, fc.server_flags));
  Stub* stub = server.stub.get();  // the admin key; a tenant like any other

  constexpr int kGenerations = 20;
  std::vector<std::string> ids(kGenerations);
  std::atomic<int> disagreements{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kGenerations; ++i) {
    clients.emplace_back([&, i] {
      const v1::GenerateRequest r = Request(absl::StrCat(fc.kind, "-", i));
      Generation first, second, third;
      grpc::Status s2;
      std::thread twin([&] { s2 = CreateGen(stub, r, &second); });
      grpc::Status s1 = CreateGen(stub, r, &first);
      twin.join();
      grpc::Status s3 = CreateGen(stub, r, &third);
      for (const grpc::Status* s : {&s1, &s2, &s3}) {
        EXPECT_TRUE(s->ok()) << r.request_id() << ": " << s->error_code() << " "
                             << s->error_message();
      }
      if (first.id() != second.id() || first.id() != third.id()) {
        disagreements++;
      }
      ids[i] = first.id();
      // Unanswered: QUEUED with no upstream id yet, unless already found.
      if (first.upstream_id().empty()) {
        EXPECT_EQ(first.upstream_status(), "submit_unconfirmed");
        EXPECT_EQ(first.state(), Generation::STATE_QUEUED);
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(disagreements.load(), 0)
      << "a repeated request_id returned another generation";
  ASSERT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(),
            static_cast<size_t>(kGenerations));

  std::map<std::string, Generation> gens = WatchAllToEnd(stub, ids);
  ExpectOneJobEachCompleted(sim, gens);
  // One POST per generation: nothing was sent twice.
  EXPECT_EQ(SimRequests(sim, "POST "), kGenerations);
  EXPECT_EQ(sim.Stats()["faults_by_kind"][fc.kind].get<int64_t>(),
            kGenerations);
  // Each was found through the usage log, not by luck.
  const std::string log =
      LogWith(server, "generation_replayed", 2 * kGenerations);
  EXPECT_EQ(CountEvents(log, "submit_reconciled"), kGenerations);
  // One creation per request_id; the other two requests were replays.
  EXPECT_EQ(CountEvents(log, "generation_created"), kGenerations);
  EXPECT_EQ(CountEvents(log, "generation_replayed"), 2 * kGenerations);
}

INSTANTIATE_TEST_SUITE_P(
    EveryCreate, SpendE2eFaults,
    ::testing::Values(
        FaultCase{"create_then_500", {}, {}},
        FaultCase{"create_then_reset", {}, {}},
        // The answer comes 3 s late, past the server's 1 s timeout.
        FaultCase{
            "create_then_slow", {"--slow_delay=3s"}, {"--upstream_timeout=1s"}},
        FaultCase{"create_2xx_no_id", {}, {}}),
    [](const ::testing::TestParamInfo<FaultCase>& info) {
      return info.param.kind;
    });

// ---- kill -9 with submits in flight ----------------------------------------

// A create of the test's, in flight through the callback API.
struct PendingCreate {
  grpc::ClientContext ctx;
  v1::GenerateRequest request;
  Generation response;
  grpc::Status status;
};

// Cancels every call still in flight and waits for its callback, so no
// context is destroyed under a running call (an early ASSERT included).
class CallsGuard {
 public:
  CallsGuard(std::vector<std::unique_ptr<PendingCreate>>* calls,
             std::atomic<int>* answered)
      : calls_(calls), answered_(answered) {}
  ~CallsGuard() {
    for (auto& p : *calls_) p->ctx.TryCancel();
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (*answered_ < static_cast<int>(calls_->size()) &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

 private:
  std::vector<std::unique_ptr<PendingCreate>>* calls_;
  std::atomic<int>* answered_;
};

// 60 creates; the server sends 50 at once (the sim holds each answer 6 s)
// and keeps 10 queued; kill -9 once the sim has made all 50 jobs. After a
// restart on the same SQLite file the 50 are found through the usage log,
// the 10 that never left are submitted once, clients retrying their
// request_ids get the same generations, and the sim ends with 60 jobs, one
// per generation.
TEST(SpendE2eKill, KillNineWithFiftySubmitsInFlight) {
  Sim sim = StartSim({"--fault=create:create_then_slow:every=1",
                      "--slow_delay=6s", "--logs_lag=500ms"});
  const std::vector<std::string> flags =
      Concat(kFastReconcile,
             {"--max_outstanding_submits=50", "--upstream_rate_limit=0",
              "--upstream_max_in_flight=100", "--upstream_timeout=30s"});
  Server first = StartServer(sim.url, flags);
  const std::string data_dir = first.data_dir;
  ASSERT_FALSE(data_dir.empty());

  constexpr int kCreates = 60;
  constexpr int kInFlight = 50;
  std::atomic<int> answered{0};
  std::vector<std::unique_ptr<PendingCreate>> pending;
  CallsGuard guard(&pending, &answered);
  {
    Stub* stub = first.stub.get();
    for (int i = 0; i < kCreates; ++i) {
      auto p = std::make_unique<PendingCreate>();
      p->request = Request(absl::StrCat("crash-", i));
      p->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      PendingCreate* raw = p.get();
      stub->async()->CreateGeneration(&p->ctx, &p->request, &p->response,
                                      [raw, &answered](grpc::Status s) {
                                        raw->status = s;
                                        answered++;
                                      });
      pending.push_back(std::move(p));
    }
    // The sim makes each job at once and then holds the answer.
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (SimSubmits(sim) < kInFlight && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_EQ(SimSubmits(sim), kInFlight)
        << "server log:\n"
        << first.process->Stdout() << first.process->Stderr();
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_EQ(SimSubmits(sim), kInFlight)
        << "more than 50 sent at once; server log:\n"
        << first.process->Stdout() << first.process->Stderr();
    first.process->Signal(SIGKILL);
    ASSERT_TRUE(first.process->Wait(absl::Seconds(10)).has_value());
    // Nobody got an answer: every submit was still in flight.
    const absl::Time gone = absl::Now() + absl::Seconds(20);
    while (answered.load() < kCreates && absl::Now() < gone) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_EQ(answered.load(), kCreates);
    for (const auto& p : pending) EXPECT_FALSE(p->status.ok());
  }

  Server second = StartServer(
      sim.url, Concat(flags, {"--store=sqlite", "--data_dir=" + data_dir}));
  // The restart made a new admin key for the same tenant (e2e-admin), so
  // the request_ids are in the same scope.
  Stub* stub = second.stub.get();
  // Clients retry with their request_ids.
  std::vector<std::string> ids(kCreates);
  std::vector<std::thread> clients;
  for (int i = 0; i < kCreates; ++i) {
    clients.emplace_back([&, i] {
      Generation g;
      grpc::Status s = CreateGen(stub, pending[i]->request, &g);
      EXPECT_TRUE(s.ok()) << pending[i]->request.request_id() << ": "
                          << s.error_message();
      ids[i] = g.id();
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(),
            static_cast<size_t>(kCreates));

  std::map<std::string, Generation> gens = WatchAllToEnd(stub, ids);
  ExpectOneJobEachCompleted(sim, gens);
  // 50 POSTs before the crash, 10 after; none sent twice.
  EXPECT_EQ(SimRequests(sim, "POST "), kCreates);

  // The restart said what it found: 50 in flight (reconciled), 10 never
  // sent (submitted now).
  const std::string log = second.process->Stderr() + second.process->Stdout();
  EXPECT_EQ(CountEvents(log, "recover_submit_in_flight"), kInFlight);
  EXPECT_EQ(CountEvents(log, "recover_submit_not_sent"), kCreates - kInFlight);
  EXPECT_EQ(CountEvents(log, "submit_reconciled"), kInFlight);
}

// ---- a submit that created nothing -----------------------------------------

// Every create answers 502 (a gateway page) without making a job. The
// server cannot know that, so it must not resubmit: the generations wait
// QUEUED/submit_unconfirmed, the usage log never shows them, and after the
// window they end FAILED SUBMIT_UNCONFIRMED. Nothing was billed.
TEST(SpendE2e, SubmitThatCreatedNothingEndsSubmitUnconfirmed) {
  Sim sim = StartSim({"--fault=create:502:every=1"});
  Server server =
      StartServer(sim.url, Concat(kFastReconcile, {"--reconcile_window=3s"}));
  Stub* stub = server.stub.get();

  constexpr int kGenerations = 5;
  std::vector<std::string> ids;
  for (int i = 0; i < kGenerations; ++i) {
    const v1::GenerateRequest r = Request(absl::StrCat("never-", i));
    Generation g;
    grpc::Status s = CreateGen(stub, r, &g);
    ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message()
                        << "\nsim stderr:\n"
                        << sim.process->Stderr();
    EXPECT_EQ(g.state(), Generation::STATE_QUEUED);
    EXPECT_EQ(g.upstream_status(), "submit_unconfirmed");
    EXPECT_TRUE(g.upstream_id().empty());
    // A retry joins the unconfirmed generation.
    Generation again;
    ASSERT_TRUE(CreateGen(stub, r, &again).ok());
    EXPECT_EQ(again.id(), g.id());
    ids.push_back(g.id());
  }

  std::map<std::string, Generation> gens = WatchAllToEnd(stub, ids);
  for (const auto& [id, g] : gens) {
    EXPECT_EQ(g.state(), Generation::STATE_FAILED) << id;
    EXPECT_EQ(g.error().reason(), "SUBMIT_UNCONFIRMED") << id;
    EXPECT_TRUE(absl::StrContains(g.error().message(), "may still have run"))
        << g.error().message();
    EXPECT_TRUE(g.upstream_id().empty());
    // Not before the window: the log lags, so a missing row proves nothing
    // until then.
    EXPECT_GE(Time(g.update_time()) - Time(g.create_time()),
              absl::Seconds(3) - absl::Milliseconds(100))
        << id;
  }
  // Each was sent once and never again, and the reconciler did look.
  EXPECT_EQ(SimRequests(sim, "POST "), kGenerations);
  EXPECT_EQ(SimSubmits(sim), 0);
  EXPECT_GT(sim.Stats()["logs_requests"].get<int64_t>(), 0);

  // A retry after the end returns the FAILED generation; still no new POST.
  Generation after;
  ASSERT_TRUE(CreateGen(stub, Request("never-0"), &after).ok());
  EXPECT_EQ(after.id(), ids[0]);
  EXPECT_EQ(after.state(), Generation::STATE_FAILED);
  EXPECT_EQ(SimRequests(sim, "POST "), kGenerations);
  // One creation per request_id; each retry (one each, one more for
  // never-0) was logged as a replay.
  const std::string log =
      LogWith(server, "generation_replayed", kGenerations + 1);
  EXPECT_EQ(CountEvents(log, "generation_created"), kGenerations);
  EXPECT_EQ(CountEvents(log, "generation_replayed"), kGenerations + 1);
}

}  // namespace
}  // namespace videogen::e2e
