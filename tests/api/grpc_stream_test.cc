// The streaming RPCs of VideoGenerationService over real loopback gRPC, on
// the fake gateway: which event a stream starts with, what follows, and how
// it ends.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/api/event_stream.h"
#include "server/api/service.h"
#include "tests/http/fakes.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::api {
namespace {

using ::videogen::http::testing::FakeAuthenticator;
using ::videogen::http::testing::FakeGateway;
using Event = v1::GenerationEvent;
using Generation = v1::Generation;

class GrpcStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::VideoGeneration::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                            grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<grpc::ClientContext> Context() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", "Bearer k-acme");
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(20));
    return ctx;
  }

  // Reads one event, or fails the test.
  static Event Next(grpc::ClientReader<Event>* reader) {
    Event e;
    EXPECT_TRUE(reader->Read(&e)) << "the stream ended early";
    return e;
  }

  FakeGateway gateway_;
  FakeAuthenticator auth_;
  StreamRegistry registry_{absl::Minutes(5)};
  VideoGenerationService service_{&gateway_, &auth_, &registry_};
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::VideoGeneration::Stub> stub_;
};

// The hub may hand a stream the UPDATE of a change that raced its Subscribe
// before Subscribe's SNAPSHOT of the same revision, which the stream then
// drops as a duplicate. CI saw a Generate stream start with that UPDATE
// (polyglot_python, a job that failed at once); it must start with a
// SNAPSHOT and go on with UPDATEs.
TEST_F(GrpcStreamTest, GenerateStartsWithASnapshotWhenAnUpdateRacesSubscribe) {
  gateway_.set_watch_race(true);
  auto ctx = Context();
  v1::GenerateRequest request;
  request.set_prompt("a storm at sea");
  auto reader = stub_->Generate(ctx.get(), request);
  Event first = Next(reader.get());
  EXPECT_EQ(first.type(), Event::TYPE_SNAPSHOT);
  EXPECT_EQ(first.generation().revision(), 1);
  gateway_.Advance(first.generation().id(), Generation::STATE_FAILED, "error");
  Event last = Next(reader.get());
  EXPECT_EQ(last.type(), Event::TYPE_UPDATE);
  EXPECT_EQ(last.generation().revision(), 2);
  Event extra;
  EXPECT_FALSE(reader->Read(&extra));
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(GrpcStreamTest, WatchStartsWithASnapshotWhenAnUpdateRacesSubscribe) {
  core::GenerationPtr g = gateway_.Insert("acme", Generation::STATE_QUEUED);
  gateway_.Advance(g->id(), Generation::STATE_GENERATING, "active");
  gateway_.set_watch_race(true);
  auto ctx = Context();
  v1::WatchGenerationRequest request;
  request.set_id(g->id());
  auto reader = stub_->WatchGeneration(ctx.get(), request);
  Event first = Next(reader.get());
  EXPECT_EQ(first.type(), Event::TYPE_SNAPSHOT);
  EXPECT_EQ(first.generation().revision(), 2);
  gateway_.Advance(g->id(), Generation::STATE_COMPLETED, "completed");
  Event last = Next(reader.get());
  EXPECT_EQ(last.type(), Event::TYPE_UPDATE);
  EXPECT_EQ(last.generation().revision(), 3);
  EXPECT_TRUE(reader->Finish().ok());
}

// Resumed at the current revision there is no SNAPSHOT due: the next change
// is an UPDATE, and the terminal one ends the stream OK (written together
// with the status).
TEST_F(GrpcStreamTest, ResumedAtTheCurrentRevisionGetsUpdatesOnly) {
  core::GenerationPtr g = gateway_.Insert("acme", Generation::STATE_QUEUED);
  gateway_.set_watch_race(true);
  auto ctx = Context();
  v1::WatchGenerationRequest request;
  request.set_id(g->id());
  request.set_after_revision(1);
  auto reader = stub_->WatchGeneration(ctx.get(), request);
  // The watch is registered once the fake counts it.
  for (int i = 0; i < 2000 && gateway_.watchers() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(gateway_.watchers(), 1u);
  gateway_.Advance(g->id(), Generation::STATE_GENERATING, "active");
  gateway_.Advance(g->id(), Generation::STATE_COMPLETED, "completed");
  std::vector<Event> events;
  for (Event e; reader->Read(&e);) events.push_back(e);
  EXPECT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(events.empty());
  for (const Event& e : events) EXPECT_EQ(e.type(), Event::TYPE_UPDATE);
  EXPECT_EQ(events.back().generation().revision(), 3);
  EXPECT_TRUE(events.back().generation().done());
}

// A generation that is terminal already: one SNAPSHOT and status OK.
TEST_F(GrpcStreamTest, TerminalGenerationIsOneSnapshotThenOk) {
  core::GenerationPtr g = gateway_.Insert("acme", Generation::STATE_COMPLETED);
  auto ctx = Context();
  v1::WatchGenerationRequest request;
  request.set_id(g->id());
  auto reader = stub_->WatchGeneration(ctx.get(), request);
  std::vector<Event> events;
  for (Event e; reader->Read(&e);) events.push_back(e);
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type(), Event::TYPE_SNAPSHOT);
  EXPECT_TRUE(events[0].generation().done());
}

}  // namespace
}  // namespace videogen::api
