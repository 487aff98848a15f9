// Issue 14, end to end: what a careless or hostile client can do to the
// real server. A stalled firehose is cut off with a bounded backlog; the
// open-stream cap answers RESOURCE_EXHAUSTED; a resume point past the
// current revision is OUT_OF_RANGE; invalid UTF-8 on the wire and blank or
// control-character prompts are INVALID_ARGUMENT before anything is billed.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

using v1::Generation;
using v1::GenerationEvent;

constexpr char kCreate[] = "/videogen.v1.VideoGeneration/CreateGeneration";
constexpr char kGenerate[] = "/videogen.v1.VideoGeneration/Generate";

Generation CreateOrDie(v1::VideoGeneration::Stub* stub,
                       const v1::GenerateRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  Generation g;
  grpc::Status s = stub->CreateGeneration(&ctx, req, &g);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return g;
}

// Waits until `id` is terminal; returns its final revision, or -1.
int64_t AwaitDone(v1::VideoGeneration::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::WatchGenerationRequest req;
  req.set_id(id);
  auto reader = stub->WatchGeneration(&ctx, req);
  StreamResult r = ReadAll(reader.get());
  if (!r.status.ok() || r.events.empty() ||
      !r.events.back().generation().done()) {
    return -1;
  }
  return r.events.back().generation().revision();
}

TEST(LimitsE2eTest, AfterRevisionAboveTheCurrentOneIsOutOfRange) {
  Sim sim = StartSim();
  Server server = StartServer(sim.url);
  Generation g = CreateOrDie(server.stub.get(), SimpleRequest());
  const int64_t final_revision = AwaitDone(server.stub.get(), g.id());
  ASSERT_GT(final_revision, 0);

  grpc::ClientContext ctx;
  v1::WatchGenerationRequest req;
  req.set_id(g.id());
  req.set_after_revision(final_revision + 1);
  auto reader = server.stub->WatchGeneration(&ctx, req);
  StreamResult r = ReadAll(reader.get());
  // Before the fix it delivered the older revisions and ended OK.
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_TRUE(absl::StrContains(r.status.error_message(), "after_revision"))
      << r.status.error_message();

  // The same for a generation still in flight.
  Sim slow = StartSim({"--queued_for=60s"});
  Server server2 = StartServer(slow.url);
  Generation live = CreateOrDie(server2.stub.get(), SimpleRequest());
  grpc::ClientContext ctx2;
  req.set_id(live.id());
  req.set_after_revision(live.revision() + 100);
  auto reader2 = server2.stub->WatchGeneration(&ctx2, req);
  EXPECT_EQ(ReadAll(reader2.get()).status.error_code(),
            grpc::StatusCode::OUT_OF_RANGE);
}

TEST(LimitsE2eTest, OpenStreamsPastMaxStreamsAreResourceExhausted) {
  Sim sim = StartSim();
  Server server =
      StartServer(sim.url, {"--max_streams=3", "--heartbeat_interval=100ms"});
  // Three firehoses, each known to be registered once its first heartbeat
  // arrives.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<GenerationEvent>>> readers;
  for (int i = 0; i < 3; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(server.stub->WatchGenerations(
        contexts.back().get(), v1::WatchGenerationsRequest()));
    GenerationEvent beat;
    ASSERT_TRUE(readers.back()->Read(&beat)) << i;
    EXPECT_EQ(beat.type(), GenerationEvent::TYPE_HEARTBEAT);
  }
  auto fourth = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
    auto reader =
        server.stub->WatchGenerations(&ctx, v1::WatchGenerationsRequest());
    GenerationEvent e;
    if (reader->Read(&e)) {  // admitted: its first heartbeat came
      ctx.TryCancel();
      reader->Finish();
      return grpc::Status::OK;
    }
    return reader->Finish();
  };
  grpc::Status refused = fourth();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_code() << " " << refused.error_message();
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "3 open streams"))
      << refused.error_message();
  // A single-generation watch counts against the same cap.
  grpc::ClientContext gen_ctx;
  auto gen = server.stub->Generate(&gen_ctx, SimpleRequest());
  EXPECT_EQ(ReadAll(gen.get()).status.error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  // Closing one frees its slot.
  contexts[0]->TryCancel();
  readers[0]->Finish();
  grpc::Status again;
  for (int attempt = 0; attempt < 50; ++attempt) {
    again = fourth();
    if (again.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(again.ok()) << again.error_message();
  for (size_t i = 1; i < readers.size(); ++i) {
    contexts[i]->TryCancel();
    readers[i]->Finish();
  }
}

// A firehose client that stops reading: the server keeps at most
// --stream_backlog pending events for it, then ends the stream
// RESOURCE_EXHAUSTED with a message telling it to resume. (The 100k-event
// memory bound is firehose_slow_e2e_test, label `slow`.)
TEST(LimitsE2eTest, StalledFirehoseIsCutOffWithResourceExhausted) {
  Sim sim = StartSim({"--queued_for=20ms", "--generating_for=30ms"});
  Server server =
      StartServer(sim.url, {"--stream_backlog=32", "--poll_initial_delay=20ms",
                            "--poll_interval=30ms", "--upstream_rate_limit=0",
                            "--max_outstanding_submits=16"});
  // Small HTTP/2 windows on the stalled client, so the server sees the stall
  // after a few events rather than after megabytes of buffers.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 * 1024);
  auto stalled_channel = ChannelWithKey(server.address, server.admin_key, args);
  auto stalled_stub = v1::VideoGeneration::NewStub(stalled_channel);
  grpc::ClientContext ctx;
  auto reader =
      stalled_stub->WatchGenerations(&ctx, v1::WatchGenerationsRequest());

  const int64_t rss_before = server.process->RssBytes();
  // Large events (the request, with its prompt, is in every event).
  constexpr int kGenerations = 300;
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < kGenerations; i = next++) {
        v1::GenerateRequest req =
            SimpleRequest(absl::StrCat(i, " ", std::string(2000, 'x')));
        Generation g = CreateOrDie(server.stub.get(), req);
        AwaitDone(server.stub.get(), g.id());
      }
    });
  }
  for (auto& t : threads) t.join();
  const int64_t rss_after = server.process->RssBytes();

  // Now the client reads: what was buffered, then the cut-off.
  int events = 0;
  GenerationEvent e;
  while (reader->Read(&e)) ++events;
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "stopped reading"))
      << status.error_message();
  // Far fewer than the ~3 events per generation that passed.
  EXPECT_LT(events, kGenerations * 2);
  // Loose: the bound that matters is in the slow 100k test.
  EXPECT_LT(rss_after - rss_before, 20 << 20);

  // A new stream works.
  grpc::ClientContext ctx2;
  auto again =
      server.stub->WatchGenerations(&ctx2, v1::WatchGenerationsRequest());
  Generation g = CreateOrDie(server.stub.get(), SimpleRequest("after"));
  GenerationEvent first;
  ASSERT_TRUE(again->Read(&first));
  EXPECT_EQ(first.generation().id(), g.id());
  ctx2.TryCancel();
  again->Finish();
}

// Invalid UTF-8 in a proto3 string field cannot be set through the
// generated code; it is sent hand-encoded. It must be INVALID_ARGUMENT with
// a message, like every other bad input (before: UNIMPLEMENTED, empty).
TEST(LimitsE2eTest, InvalidUtf8OnTheWireIsInvalidArgument) {
  Sim sim = StartSim();
  Server server = StartServer(sim.url);
  const std::string bad_prompt = "a red \xff\xfe fox";  // not UTF-8
  const std::string request = EncodeBytesField(3, bad_prompt);
  grpc::Status unary = RawUnaryCall(server.channel, kCreate, request);
  EXPECT_EQ(unary.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << unary.error_code() << " " << unary.error_message();
  EXPECT_FALSE(unary.error_message().empty());
  EXPECT_TRUE(absl::StrContains(unary.error_message(), "UTF-8"))
      << unary.error_message();

  int messages = -1;
  grpc::Status stream =
      RawServerStreamingCall(server.channel, kGenerate, request, &messages);
  EXPECT_EQ(stream.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << stream.error_code() << " " << stream.error_message();
  EXPECT_EQ(messages, 0);

  // A label value and a truncated multi-byte sequence too.
  std::string label_entry =
      EncodeBytesField(1, "k") + EncodeBytesField(2, "v\xc3");
  grpc::Status label = RawUnaryCall(
      server.channel, kCreate,
      EncodeBytesField(3, "a fox") + EncodeBytesField(9, label_entry));
  EXPECT_EQ(label.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << label.error_message();

  // The watch streams parse their own requests (they are raw methods, so no
  // interceptor sits on their writes): the same answer there.
  const std::pair<const char*, std::string> watches[] = {
      {"/videogen.v1.VideoGeneration/WatchGeneration",
       EncodeBytesField(1, "gen-\xff")},  // the id
      {"/videogen.v1.VideoGeneration/WatchGenerations",
       EncodeBytesField(2, label_entry)}};  // a label value
  for (const auto& [watch, bad] : watches) {
    int written = -1;
    grpc::Status w =
        RawServerStreamingCall(server.channel, watch, bad, &written);
    EXPECT_EQ(w.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << watch << ": " << w.error_code() << " " << w.error_message();
    EXPECT_TRUE(absl::StrContains(w.error_message(), "UTF-8"))
        << w.error_message();
    EXPECT_EQ(written, 0);
  }

  // The same bytes, valid, go through: the encoding above is right.
  std::string ok_response;
  grpc::Status ok = RawUnaryCall(
      server.channel, kCreate, EncodeBytesField(3, "a red fox"), &ok_response);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  Generation created;
  EXPECT_TRUE(created.ParseFromString(ok_response));
  EXPECT_EQ(created.request().prompt(), "a red fox");
  EXPECT_EQ(sim.Stats()["submits"].get<int64_t>(), 1);
  // The server's log stays JSON lines: no protobuf library text.
  for (absl::string_view line :
       absl::StrSplit(server.process->Stderr(), '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "{")) << line;
  }
}

// Prompts that are "nothing" (Unicode spaces, zero-width space) or carry a
// NUL are refused before the upstream sees them: nothing is billed.
TEST(LimitsE2eTest, UnicodeBlankAndControlPromptsNeverReachTheUpstream) {
  Sim sim = StartSim();
  Server server = StartServer(sim.url);
  const std::vector<std::string> prompts = {"\u00a0",
                                            "\u3000\u3000",
                                            "\u200b",
                                            "\u00a0\u3000\u200b \t\n",
                                            std::string("fox\0", 4),
                                            std::string(1, '\0'),
                                            "fox\x7f"};
  for (const std::string& p : prompts) {
    grpc::ClientContext ctx;
    Generation g;
    grpc::Status s = server.stub->CreateGeneration(&ctx, SimpleRequest(p), &g);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << absl::CEscape(p);
    EXPECT_FALSE(s.error_message().empty());
    grpc::ClientContext gen_ctx;
    auto reader = server.stub->Generate(&gen_ctx, SimpleRequest(p));
    EXPECT_EQ(ReadAll(reader.get()).status.error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << absl::CEscape(p);
  }
  nlohmann::json stats = sim.Stats();
  EXPECT_EQ(stats["submits"].get<int64_t>(), 0) << stats.dump();
  EXPECT_TRUE(sim.UsageLog().empty());
  // And nothing was recorded.
  grpc::ClientContext list_ctx;
  v1::ListGenerationsResponse resp;
  ASSERT_TRUE(
      server.stub
          ->ListGenerations(&list_ctx, v1::ListGenerationsRequest(), &resp)
          .ok());
  EXPECT_EQ(resp.generations_size(), 0);
}

}  // namespace
}  // namespace videogen::e2e
