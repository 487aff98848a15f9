// End-to-end tests of the VideoGeneration service: real videogen-server and
// videogen-sim processes on loopback, driven through generated stubs.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

using v1::Generation;
using v1::GenerationEvent;

class ServiceE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sim_ = StartSim(sim_flags_);
    server_ = StartServer(sim_.url, server_flags_);
  }

  StreamResult Generate(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(60));
    auto reader = server_.stub->Generate(&ctx, req);
    return ReadAll(reader.get());
  }

  Generation Create(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    Generation g;
    grpc::Status s = server_.stub->CreateGeneration(&ctx, req, &g);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return g;
  }

  grpc::StatusCode CreateCode(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    Generation g;
    return server_.stub->CreateGeneration(&ctx, req, &g).error_code();
  }

  int64_t PollsOf(const std::string& upstream_id) {
    nlohmann::json stats = sim_.Stats();
    return stats["polls_by_id"].value(upstream_id, int64_t{0});
  }

  std::vector<std::string> sim_flags_;
  std::vector<std::string> server_flags_;
  Sim sim_;
  Server server_;
};

// GENERATING lasts 2 s, not the harness's 600 ms, for tests that expect to
// see it: on a loaded 2-core machine a 150 ms poll can be late by more than
// 600 ms and see the job go from queued straight to completed.
class ServiceE2eSlowTest : public ServiceE2eTest {
 protected:
  ServiceE2eSlowTest() { sim_flags_ = {"--generating_for=2s"}; }
};

std::vector<GenerationEvent> NonHeartbeats(const StreamResult& r) {
  std::vector<GenerationEvent> out;
  for (const auto& e : r.events) {
    if (e.type() != GenerationEvent::TYPE_HEARTBEAT) out.push_back(e);
  }
  return out;
}

TEST_F(ServiceE2eSlowTest, GenerateStreamsSnapshotThenUpdatesToCompletion) {
  StreamResult r = Generate(SimpleRequest());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto events = NonHeartbeats(r);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front().type(), GenerationEvent::TYPE_SNAPSHOT);
  EXPECT_EQ(events.front().generation().state(), Generation::STATE_QUEUED);
  std::set<Generation::State> seen;
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_EQ(events[i].type(), GenerationEvent::TYPE_UPDATE);
    EXPECT_GT(events[i].generation().revision(),
              events[i - 1].generation().revision());
  }
  for (const auto& e : events) seen.insert(e.generation().state());
  EXPECT_TRUE(seen.count(Generation::STATE_GENERATING));
  const Generation& last = events.back().generation();
  EXPECT_EQ(last.state(), Generation::STATE_COMPLETED);
  EXPECT_TRUE(last.done());
  EXPECT_FALSE(last.video().url().empty());
  EXPECT_FALSE(last.upstream_id().empty());
  EXPECT_EQ(last.request().aspect_ratio(), "16:9");  // default filled in
  EXPECT_EQ(last.request().duration_seconds(), 5);
}

TEST(ServiceE2eFailure, FailedGenerationEndsOkWithErrorInEvent) {
  Sim sim = StartSim({"--error_rate=1"});
  Server server = StartServer(sim.url);
  grpc::ClientContext ctx;
  auto reader = server.stub->Generate(&ctx, SimpleRequest());
  StreamResult r = ReadAll(reader.get());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const Generation& last = r.events.back().generation();
  EXPECT_EQ(last.state(), Generation::STATE_FAILED);
  EXPECT_TRUE(last.done());
  EXPECT_EQ(last.error().reason(), "UPSTREAM_TASK_ERROR");
  EXPECT_FALSE(last.error().message().empty());
}

// The default upstream rate (20 calls/s) would make 200 jobs' submits and
// polls take about 57 s, against each stream's 60 s deadline; the rate is
// not what this test is about.
class ServiceE2eUnthrottledTest : public ServiceE2eTest {
 protected:
  ServiceE2eUnthrottledTest() { server_flags_ = {"--upstream_rate_limit=0"}; }
};

TEST_F(ServiceE2eUnthrottledTest, TwoHundredConcurrentGenerateStreamsComplete) {
  constexpr int kStreams = 200;
  std::atomic<int> completed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      StreamResult r = Generate(SimpleRequest(absl::StrCat("clip ", i)));
      if (r.status.ok() && !r.events.empty() &&
          r.events.back().generation().state() == Generation::STATE_COMPLETED) {
        completed++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(completed.load(), kStreams);
  EXPECT_EQ(sim_.Stats()["submits"].get<int64_t>(), kStreams);
}

// Many watchers share one poller: the upstream sees the same polls as for a
// generation with a single watcher.
TEST_F(ServiceE2eTest, FiveHundredWatchersCauseNoExtraPolls) {
  Generation lone = Create(SimpleRequest("lone"));
  Generation crowd = Create(SimpleRequest("crowd"));
  constexpr int kWatchers = 500;
  std::atomic<int> completed{0};
  std::vector<std::thread> threads;
  auto watch = [&](const std::string& id) {
    grpc::ClientContext ctx;
    v1::WatchGenerationRequest req;
    req.set_id(id);
    auto reader = server_.stub->WatchGeneration(&ctx, req);
    StreamResult r = ReadAll(reader.get());
    if (r.status.ok() && !r.events.empty() &&
        r.events.back().generation().state() == Generation::STATE_COMPLETED) {
      completed++;
    }
  };
  threads.emplace_back(watch, lone.id());
  for (int i = 0; i < kWatchers; ++i) threads.emplace_back(watch, crowd.id());
  for (auto& t : threads) t.join();
  EXPECT_EQ(completed.load(), kWatchers + 1);
  const int64_t lone_polls = PollsOf(lone.upstream_id());
  const int64_t crowd_polls = PollsOf(crowd.upstream_id());
  EXPECT_GT(lone_polls, 0);
  // Both run on the same schedule; jitter may shift one poll either way.
  EXPECT_LE(crowd_polls, lone_polls + 2);
  EXPECT_GE(crowd_polls, lone_polls - 2);
}

TEST_F(ServiceE2eTest, WatchResumesAfterRevisionWithoutGapsOrDuplicates) {
  Generation g = Create(SimpleRequest());
  // Watch until the first change after the snapshot, then drop the stream.
  int64_t last_seen = 0;
  {
    grpc::ClientContext ctx;
    v1::WatchGenerationRequest req;
    req.set_id(g.id());
    auto reader = server_.stub->WatchGeneration(&ctx, req);
    GenerationEvent e;
    ASSERT_TRUE(reader->Read(&e));
    EXPECT_EQ(e.type(), GenerationEvent::TYPE_SNAPSHOT);
    last_seen = e.generation().revision();
    ctx.TryCancel();
    reader->Finish();
  }
  grpc::ClientContext ctx;
  v1::WatchGenerationRequest req;
  req.set_id(g.id());
  req.set_after_revision(last_seen);
  auto reader = server_.stub->WatchGeneration(&ctx, req);
  StreamResult r = ReadAll(reader.get());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto events = NonHeartbeats(r);
  ASSERT_FALSE(events.empty());
  for (const auto& e : events) EXPECT_GT(e.generation().revision(), last_seen);
  EXPECT_EQ(events.back().generation().state(), Generation::STATE_COMPLETED);

  // Resuming at the final revision sends nothing and ends OK at once.
  grpc::ClientContext ctx2;
  req.set_after_revision(events.back().generation().revision());
  auto again = server_.stub->WatchGeneration(&ctx2, req);
  StreamResult r2 = ReadAll(again.get());
  EXPECT_TRUE(r2.status.ok());
  EXPECT_TRUE(NonHeartbeats(r2).empty());
}

TEST_F(ServiceE2eTest, FirehoseSeesOnlyMatchingGenerations) {
  grpc::ClientContext ctx;
  v1::WatchGenerationsRequest req;
  (*req.mutable_labels())["team"] = "alpha";
  auto reader = server_.stub->WatchGenerations(&ctx, req);
  std::set<std::string> wanted;
  for (int i = 0; i < 3; ++i) {
    auto r = SimpleRequest(absl::StrCat("alpha ", i));
    (*r.mutable_labels())["team"] = "alpha";
    wanted.insert(Create(r).id());
  }
  auto other = SimpleRequest("beta");
  (*other.mutable_labels())["team"] = "beta";
  std::string other_id = Create(other).id();

  std::set<std::string> completed;
  GenerationEvent e;
  while (completed.size() < wanted.size() && reader->Read(&e)) {
    if (e.type() == GenerationEvent::TYPE_HEARTBEAT) continue;
    EXPECT_NE(e.generation().id(), other_id);
    EXPECT_TRUE(wanted.count(e.generation().id())) << e.generation().id();
    if (e.generation().state() == Generation::STATE_COMPLETED) {
      completed.insert(e.generation().id());
    }
  }
  EXPECT_EQ(completed, wanted);
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ServiceE2eTest, GetListWithPaginationAndCancel) {
  std::set<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto r = SimpleRequest(absl::StrCat("page ", i));
    (*r.mutable_labels())["batch"] = "p";
    ids.insert(Create(r).id());
  }
  // Get.
  grpc::ClientContext get_ctx;
  v1::GetGenerationRequest get;
  get.set_id(*ids.begin());
  Generation got;
  ASSERT_TRUE(server_.stub->GetGeneration(&get_ctx, get, &got).ok());
  EXPECT_EQ(got.id(), *ids.begin());

  // List in pages of 2: every id once, newest first.
  std::set<std::string> listed;
  std::string token;
  int pages = 0;
  int64_t prev_time = INT64_MAX;
  do {
    grpc::ClientContext ctx;
    v1::ListGenerationsRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    (*req.mutable_labels())["batch"] = "p";
    v1::ListGenerationsResponse resp;
    grpc::Status s = server_.stub->ListGenerations(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_LE(resp.generations_size(), 2);
    for (const auto& g : resp.generations()) {
      int64_t t =
          g.create_time().seconds() * 1'000'000'000 + g.create_time().nanos();
      EXPECT_LE(t, prev_time);
      prev_time = t;
      EXPECT_TRUE(listed.insert(g.id()).second) << "duplicate " << g.id();
    }
    token = resp.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(listed, ids);
  EXPECT_GE(pages, 3);

  // Cancel a fresh generation: the sim keeps it queued for 300 ms, so it
  // cannot be terminal yet.
  Generation fresh = Create(SimpleRequest("to cancel"));
  grpc::ClientContext cancel_ctx;
  v1::CancelGenerationRequest cancel;
  cancel.set_id(fresh.id());
  Generation cancelled;
  ASSERT_TRUE(
      server_.stub->CancelGeneration(&cancel_ctx, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), Generation::STATE_CANCELLED);
  EXPECT_TRUE(cancelled.done());
  EXPECT_GT(cancelled.revision(), fresh.revision());
  grpc::ClientContext get2;
  get.set_id(fresh.id());
  ASSERT_TRUE(server_.stub->GetGeneration(&get2, get, &got).ok());
  EXPECT_EQ(got.state(), Generation::STATE_CANCELLED);
  // A watcher of a cancelled generation gets its snapshot and the stream ends.
  grpc::ClientContext watch_ctx;
  v1::WatchGenerationRequest watch;
  watch.set_id(fresh.id());
  auto reader = server_.stub->WatchGeneration(&watch_ctx, watch);
  StreamResult r = ReadAll(reader.get());
  ASSERT_TRUE(r.status.ok());
  ASSERT_FALSE(r.events.empty());
  EXPECT_EQ(r.events.back().generation().state(), Generation::STATE_CANCELLED);
}

TEST(ServiceE2eHeartbeat, IdleStreamGetsHeartbeatsWithTheCurrentRevision) {
  Sim slow = StartSim({"--queued_for=60s"});
  Server server = StartServer(slow.url, {"--heartbeat_interval=200ms"});
  grpc::ClientContext ctx;  // without heartbeats the reads below time out
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto reader = server.stub->Generate(&ctx, SimpleRequest());
  GenerationEvent snapshot;
  ASSERT_TRUE(reader->Read(&snapshot));
  ASSERT_EQ(snapshot.type(), GenerationEvent::TYPE_SNAPSHOT);
  for (int i = 0; i < 2; ++i) {
    GenerationEvent beat;
    ASSERT_TRUE(reader->Read(&beat));
    EXPECT_EQ(beat.type(), GenerationEvent::TYPE_HEARTBEAT);
    EXPECT_EQ(beat.generation().id(), snapshot.generation().id());
    EXPECT_EQ(beat.generation().revision(), snapshot.generation().revision());
  }
  ctx.TryCancel();
  reader->Finish();
}

TEST_F(ServiceE2eTest, EveryValidationErrorHasItsCode) {
  auto bad = [](auto mutate) {
    v1::GenerateRequest r = SimpleRequest();
    mutate(r);
    return r;
  };
  using R = v1::GenerateRequest;
  const std::vector<std::pair<std::string, R>> cases = {
      {"empty prompt", bad([](R& r) { r.set_prompt(""); })},
      {"blank prompt", bad([](R& r) { r.set_prompt("  \t\n"); })},
      {"long prompt", bad([](R& r) { r.set_prompt(std::string(2501, 'a')); })},
      {"long negative",
       bad([](R& r) { r.set_negative_prompt(std::string(2501, 'a')); })},
      {"unknown model", bad([](R& r) { r.set_model("sora"); })},
      {"aspect", bad([](R& r) { r.set_aspect_ratio("4:3"); })},
      {"duration", bad([](R& r) { r.set_duration_seconds(7); })},
      {"cfg high", bad([](R& r) { r.set_cfg_scale(1.5f); })},
      {"cfg low", bad([](R& r) { r.set_cfg_scale(-0.1f); })},
      {"image missing",
       bad([](R& r) { r.set_model("klingai/v2-master-image-to-video"); })},
      {"image forbidden",
       bad([](R& r) { r.set_image_url("https://example.invalid/a.png"); })},
      {"label key", bad([](R& r) { (*r.mutable_labels())["Bad Key"] = "v"; })},
      {"label value",
       bad([](R& r) { (*r.mutable_labels())["k"] = std::string(64, 'v'); })},
      {"too many labels", bad([](R& r) {
         for (int i = 0; i < 17; ++i) {
           (*r.mutable_labels())[absl::StrCat("k", i)] = "v";
         }
       })},
      {"request id charset", bad([](R& r) { r.set_request_id("a b"); })},
      {"request id length",
       bad([](R& r) { r.set_request_id(std::string(129, 'a')); })},
      // Issue 14: text that is "nothing" or carries control characters.
      {"nbsp prompt", bad([](R& r) { r.set_prompt("\u00a0\u00a0"); })},
      {"ideographic space prompt", bad([](R& r) { r.set_prompt("\u3000"); })},
      {"zero width space prompt",
       bad([](R& r) { r.set_prompt("\u200b\u200b\u200b"); })},
      {"mixed unicode blank prompt",
       bad([](R& r) { r.set_prompt(" \u00a0\u3000\u200b\t"); })},
      {"NUL in prompt",
       bad([](R& r) { r.set_prompt(std::string("a red\0fox", 9)); })},
      {"NUL-only prompt",
       bad([](R& r) { r.set_prompt(std::string(1, '\0')); })},
      {"escape in negative prompt",
       bad([](R& r) { r.set_negative_prompt("blur\x1b[31m"); })},
  };
  for (const auto& [name, req] : cases) {
    grpc::ClientContext ctx;
    Generation g;
    grpc::Status s = server_.stub->CreateGeneration(&ctx, req, &g);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_FALSE(s.error_message().empty()) << name;
    // Generate refuses it the same way.
    StreamResult r = Generate(req);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << name;
  }
  EXPECT_EQ(sim_.Stats()["submits"].get<int64_t>(), 0);

  grpc::ClientContext list_ctx;
  v1::ListGenerationsRequest list;
  list.set_page_size(-1);
  v1::ListGenerationsResponse resp;
  EXPECT_EQ(server_.stub->ListGenerations(&list_ctx, list, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext tok_ctx;
  list.set_page_size(1);
  list.set_page_token("garbage");
  EXPECT_EQ(server_.stub->ListGenerations(&tok_ctx, list, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // An enum value the server does not know, in a states filter.
  grpc::ClientContext states_ctx;
  v1::ListGenerationsRequest by_state;
  by_state.add_states(static_cast<Generation::State>(99));
  grpc::Status states_status =
      server_.stub->ListGenerations(&states_ctx, by_state, &resp);
  EXPECT_EQ(states_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(states_status.error_message().empty());
  grpc::ClientContext watch_states_ctx;
  v1::WatchGenerationsRequest watch_states;
  watch_states.add_states(static_cast<Generation::State>(99));
  auto states_reader =
      server_.stub->WatchGenerations(&watch_states_ctx, watch_states);
  EXPECT_EQ(ReadAll(states_reader.get()).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext unspecified_ctx;
  v1::WatchGenerationsRequest unspecified;
  unspecified.add_states(Generation::STATE_UNSPECIFIED);
  auto unspecified_reader =
      server_.stub->WatchGenerations(&unspecified_ctx, unspecified);
  EXPECT_EQ(ReadAll(unspecified_reader.get()).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext get_ctx;
  v1::GetGenerationRequest get;
  get.set_id("no-such-generation");
  Generation g;
  EXPECT_EQ(server_.stub->GetGeneration(&get_ctx, get, &g).error_code(),
            grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext watch_ctx;
  v1::WatchGenerationRequest watch;
  watch.set_id("no-such-generation");
  auto reader = server_.stub->WatchGeneration(&watch_ctx, watch);
  EXPECT_EQ(ReadAll(reader.get()).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceE2eTest, RequestIdIsIdempotent) {
  v1::GenerateRequest req = SimpleRequest("idempotent fox");
  req.set_request_id("5d0c1f9a-1111-4c3e-9a11-0d2b6f4e8c70");
  Generation first = Create(req);
  Generation second = Create(req);
  EXPECT_EQ(first.id(), second.id());
  StreamResult streamed = Generate(req);
  ASSERT_TRUE(streamed.status.ok());
  EXPECT_EQ(streamed.events.front().generation().id(), first.id());
  EXPECT_EQ(sim_.Stats()["submits"].get<int64_t>(), 1);

  req.set_prompt("a different fox");
  EXPECT_EQ(CreateCode(req), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(sim_.Stats()["submits"].get<int64_t>(), 1);
}

TEST_F(ServiceE2eTest, SigtermDrainsStreamsWithUnavailableAndExitsZero) {
  // A slow generation, so the stream is open when the signal comes.
  Sim slow = StartSim({"--queued_for=60s"});
  Server server = StartServer(slow.url);

  grpc::health::v1::HealthCheckRequest hreq;
  hreq.set_service("videogen.v1.VideoGeneration");
  auto health = grpc::health::v1::Health::NewStub(server.channel);
  grpc::ClientContext hctx;
  auto hwatch = health->Watch(&hctx, hreq);
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(hwatch->Read(&hresp));
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  grpc::ClientContext ctx;
  auto reader = server.stub->Generate(&ctx, SimpleRequest());
  GenerationEvent e;
  ASSERT_TRUE(reader->Read(&e));  // the stream is live

  const absl::Time start = absl::Now();
  server.process->Signal(SIGTERM);
  StreamResult rest = ReadAll(reader.get());
  EXPECT_EQ(rest.status.error_code(), grpc::StatusCode::UNAVAILABLE);

  bool saw_not_serving = false;
  while (hwatch->Read(&hresp)) {
    if (hresp.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
      saw_not_serving = true;
    }
  }
  EXPECT_TRUE(saw_not_serving);
  std::optional<int> code = server.process->Wait(absl::Seconds(5 + 5));
  ASSERT_TRUE(code.has_value()) << "server did not exit within the grace";
  EXPECT_EQ(*code, 0) << server.process->Stderr();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5 + 2));
}

TEST_F(ServiceE2eTest, HealthServesAndReflectionIsOffByDefault) {
  auto health = grpc::health::v1::Health::NewStub(server_.channel);
  for (const char* service : {"", "videogen.v1.VideoGeneration"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  // Reflection would let anyone list the API: off unless --reflection.
  auto reflection =
      grpc::reflection::v1alpha::ServerReflection::NewStub(server_.channel);
  grpc::ClientContext ctx;
  auto stream = reflection->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  stream->Write(req);
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST(ServiceE2eReflection, ReflectionListsTheServiceWhenEnabled) {
  Sim sim = StartSim();
  Server server = StartServer(sim.url, {"--reflection"});
  auto reflection =
      grpc::reflection::v1alpha::ServerReflection::NewStub(server.channel);
  grpc::ClientContext ctx;
  auto stream = reflection->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::set<std::string> names;
  for (const auto& s : resp.list_services_response().service()) {
    names.insert(s.name());
  }
  EXPECT_TRUE(names.count("videogen.v1.VideoGeneration"));
  EXPECT_TRUE(names.count("grpc.health.v1.Health"));
  stream->Finish();
}

TEST_F(ServiceE2eTest, CallsWithoutAValidKeyAreUnauthenticated) {
  for (const std::string key : {"", "vg_not-a-real-key"}) {
    auto stub = server_.Stub(key);
    grpc::ClientContext ctx;
    Generation g;
    grpc::Status s = stub->CreateGeneration(&ctx, SimpleRequest(), &g);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << key;
    EXPECT_FALSE(s.error_message().empty());
    grpc::ClientContext watch_ctx;
    auto reader =
        stub->WatchGenerations(&watch_ctx, v1::WatchGenerationsRequest());
    EXPECT_EQ(ReadAll(reader.get()).status.error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << key;
  }
  EXPECT_EQ(sim_.Stats()["submits"].get<int64_t>(), 0);
  // The admin key the harness made works.
  EXPECT_EQ(CreateCode(SimpleRequest()), grpc::StatusCode::OK);
}

}  // namespace
}  // namespace videogen::e2e
