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
// Returns the server's stderr.
std::string ExpectStartupError(const std::string& dir,
                               const std::string& needle) {
  Process p({Bins().server, "--simulate", "--store=sqlite", "--data_dir=" + dir,
             absl::StrCat("--listen=127.0.0.1:", FreePort())},
            {});
  std::optional<int> code = p.Wait(absl::Seconds(20));
  EXPECT_TRUE(code.has_value()) << "server did not exit";
  if (!code.has_value()) return "";
  EXPECT_EQ(*code, 1);
  EXPECT_NE(p.Stderr().find(needle), std::string::npos) << p.Stderr();
  EXPECT_NE(p.Stderr().find("startup_failed"), std::string::npos);
  EXPECT_EQ(p.Stderr().find("server_listening"), std::string::npos);
  return p.Stderr();
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

// Issue 14: a bad page in the middle of the file used to start fine, answer
// DATA_LOSS on List and keep accepting billed creates. Startup now runs an
// integrity check and refuses with a clear message.
TEST(RestartE2eTest, CorruptedPageInTheMiddleIsAClearStartupError) {
  Sim sim = StartSim({"--queued_for=60s"});
  const std::string dir = FreshDir("corrupt");
  {
    Server server = StartServer(
        sim.url, {"--store=sqlite", "--data_dir=" + dir,
                  "--upstream_rate_limit=0", "--poll_interval=10s"});
    // Long prompts: a database of many pages.
    for (int i = 0; i < 80; ++i) {
      grpc::ClientContext ctx;
      Generation g;
      ASSERT_TRUE(
          server.stub
              ->CreateGeneration(
                  &ctx, SimpleRequest(absl::StrCat(i, std::string(2400, 'p'))),
                  &g)
              .ok());
    }
    server.process->Signal(SIGTERM);
    ASSERT_EQ(server.process->Wait(absl::Seconds(15)).value_or(-999), 0);
  }
  const std::string db = dir + "/videogen.db";
  // A clean shutdown checkpoints the WAL into the main file.
  ASSERT_FALSE(std::filesystem::exists(db + "-wal") &&
               std::filesystem::file_size(db + "-wal") > 0)
      << "the WAL was not checkpointed";
  std::fstream file(db, std::ios::in | std::ios::out | std::ios::binary);
  unsigned char header[100];
  file.read(reinterpret_cast<char*>(header), sizeof(header));
  ASSERT_EQ(std::string(reinterpret_cast<char*>(header), 15),
            "SQLite format 3");
  const int raw_page_size = header[16] * 256 + header[17];  // big-endian
  const int page_size = raw_page_size == 1 ? 65536 : raw_page_size;
  const int64_t pages =
      static_cast<int64_t>(std::filesystem::file_size(db)) / page_size;
  ASSERT_GE(pages, 20) << "database too small to have a middle";
  file.seekp(pages / 2 * page_size);
  const std::string garbage(page_size, '\x5a');
  file.write(garbage.data(), garbage.size());
  file.close();

  const std::string err = ExpectStartupError(dir, "videogen.db");
  EXPECT_TRUE(err.find("damaged") != std::string::npos ||
              err.find("corrupt") != std::string::npos)
      << err;
  EXPECT_NE(err.find("restore it from a backup"), std::string::npos) << err;
  // Nothing was submitted by the refused start.
  EXPECT_EQ(sim.Stats()["submits"].get<int64_t>(), 80);
}

}  // namespace
}  // namespace videogen::e2e
