// Crash safety: kill -9 the real server mid-generation, restart it on the
// same SQLite file, and check the generation completes with exactly one
// upstream submit and a gap-free, duplicate-free resumed stream.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

using v1::Generation;
using v1::GenerationEvent;

std::string FreshDir(const std::string& name) {
  std::string dir =
      absl::StrCat(::testing::TempDir(), "/", name, "-", getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

Server StartDurable(const Sim& sim, const std::string& dir, int port = 0) {
  return StartServer(sim.url, {"--store=sqlite", "--data_dir=" + dir}, port);
}

// Reads events until one in `state` arrives; returns the last revision seen.
int64_t WatchUntil(Server& server, const std::string& id,
                   Generation::State state) {
  grpc::ClientContext ctx;
  v1::WatchGenerationRequest req;
  req.set_id(id);
  auto reader = server.stub->WatchGeneration(&ctx, req);
  GenerationEvent e;
  while (reader->Read(&e)) {
    if (e.generation().state() == state) {
      ctx.TryCancel();
      reader->Finish();
      return e.generation().revision();
    }
  }
  reader->Finish();
  return -1;
}

void ExpectResumeCompletes(Server& server, const std::string& id,
                           int64_t after) {
  grpc::ClientContext ctx;
  v1::WatchGenerationRequest req;
  req.set_id(id);
  req.set_after_revision(after);
  auto reader = server.stub->WatchGeneration(&ctx, req);
  StreamResult r = ReadAll(reader.get());
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  int64_t prev = after;
  for (const auto& e : r.events) {
    if (e.type() == GenerationEvent::TYPE_HEARTBEAT) continue;
    EXPECT_EQ(e.generation().revision(), prev + 1) << "gap or duplicate";
    prev = e.generation().revision();
  }
  ASSERT_FALSE(r.events.empty());
  EXPECT_EQ(r.events.back().generation().state(), Generation::STATE_COMPLETED);
}

void KillAndRestartCompletes(const std::vector<std::string>& sim_flags,
                             Generation::State kill_in) {
  Sim sim = StartSim(sim_flags);
  const std::string dir = FreshDir("restart");
  Server server = StartDurable(sim, dir);
  grpc::ClientContext ctx;
  Generation g;
  ASSERT_TRUE(server.stub->CreateGeneration(&ctx, SimpleRequest(), &g).ok());
  const int64_t seen = WatchUntil(server, g.id(), kill_in);
  ASSERT_GT(seen, 0);

  server.process->Signal(SIGKILL);
  server.process->Wait(absl::Seconds(5));
  Server restarted = StartDurable(sim, dir, server.port);
  ExpectResumeCompletes(restarted, g.id(), seen);
  if (::testing::Test::HasFailure()) {
    ADD_FAILURE() << "restarted server stderr:\n"
                  << restarted.process->Stderr();
  }
  EXPECT_EQ(sim.Stats()["submits"].get<int64_t>(), 1);
}

TEST(RestartE2eTest, KillDashNineWhileQueuedThenRestartCompletes) {
  KillAndRestartCompletes({"--queued_for=2s", "--generating_for=500ms"},
                          Generation::STATE_QUEUED);
}

TEST(RestartE2eTest, KillDashNineWhileGeneratingThenRestartCompletes) {
  KillAndRestartCompletes({"--queued_for=300ms", "--generating_for=2500ms"},
                          Generation::STATE_GENERATING);
}

TEST(RestartE2eTest, RequestIdStaysIdempotentAcrossRestart) {
  Sim sim = StartSim();
  const std::string dir = FreshDir("idem");
  Server server = StartDurable(sim, dir);
  v1::GenerateRequest req = SimpleRequest();
  req.set_request_id("restart-idempotency-key-1");
  Generation first;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(server.stub->CreateGeneration(&ctx, req, &first).ok());
  }
  server.process->Signal(SIGKILL);
  server.process->Wait(absl::Seconds(5));
  Server restarted = StartDurable(sim, dir, server.port);
  Generation again;
  grpc::ClientContext ctx;
  ASSERT_TRUE(restarted.stub->CreateGeneration(&ctx, req, &again).ok());
  EXPECT_EQ(again.id(), first.id());
  EXPECT_EQ(sim.Stats()["submits"].get<int64_t>(), 1);
}

// Starts the server on `dir` and expects a clear startup error.
void ExpectStartupError(const std::string& dir, const std::string& needle) {
  Process p({Bins().server, "--simulate", "--store=sqlite", "--data_dir=" + dir,
             absl::StrCat("--listen=127.0.0.1:", FreePort())},
            {});
  std::optional<int> code = p.Wait(absl::Seconds(20));
  ASSERT_TRUE(code.has_value()) << "server did not exit";
  EXPECT_NE(*code, 0);
  EXPECT_NE(p.Stderr().find(needle), std::string::npos) << p.Stderr();
  EXPECT_NE(p.Stderr().find("startup_failed"), std::string::npos);
}

TEST(RestartE2eTest, UnwritableDataDirIsAClearStartupError) {
  // Under a regular file, so it is unwritable even for root.
  const std::string file = FreshDir("plainfile");
  std::ofstream(file) << "x";
  ExpectStartupError(file + "/data", file);
}

TEST(RestartE2eTest, GarbageDatabaseIsAClearStartupError) {
  const std::string dir = FreshDir("garbage");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/videogen.db") << std::string(8192, '\x5a');
  ExpectStartupError(dir, "videogen.db");
}

}  // namespace
}  // namespace videogen::e2e
