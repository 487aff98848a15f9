// Operational end-to-end tests: Prometheus metrics on a live server checked
// by promtool, and W3C trace context carried into logs and upstream calls.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "httplib.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

std::string Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return "";
  return res->body;
}

// Runs `promtool check metrics` on `text`; returns its exit code.
int PromtoolCheck(const std::string& text, std::string* output) {
  std::string path = absl::StrCat(::testing::TempDir(), "/metrics.txt");
  std::ofstream(path) << text;
  std::string cmd = absl::StrCat("promtool check metrics < ", path, " 2>&1");
  FILE* pipe = popen(cmd.c_str(), "r");
  char buf[512];
  while (fgets(buf, sizeof(buf), pipe)) output->append(buf);
  return WEXITSTATUS(pclose(pipe));
}

double GaugeValue(const std::string& text, const std::string& series) {
  std::regex re(std::regex_replace(series, std::regex(R"([{}"])"), R"(\$&)") +
                R"( ([0-9.e+-]+))");
  std::smatch m;
  return std::regex_search(text, m, re) ? std::stod(m.str(1)) : -1;
}

TEST(OpsE2eTest, MetricsPassPromtoolAndStateGaugeMoves) {
  Sim sim = StartSim({"--queued_for=1500ms", "--generating_for=1500ms"});
  const int metrics_port = FreePort();
  Server server = StartServer(
      sim.url, {absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port)});
  grpc::ClientContext ctx;
  auto reader = server.stub->Generate(&ctx, SimpleRequest());
  v1::GenerationEvent event;
  ASSERT_TRUE(reader->Read(&event));  // QUEUED snapshot

  const std::string queued_series =
      R"(videogen_generations{state="STATE_QUEUED"})";
  const std::string during = Scrape(metrics_port);
  std::string output;
  EXPECT_EQ(PromtoolCheck(during, &output), 0) << output << during;
  EXPECT_EQ(GaugeValue(during, queued_series), 1) << during;
  EXPECT_EQ(GaugeValue(during, "videogen_open_streams"), 1) << during;

  StreamResult rest = ReadAll(reader.get());
  ASSERT_TRUE(rest.status.ok());
  const std::string after = Scrape(metrics_port);
  output.clear();
  EXPECT_EQ(PromtoolCheck(after, &output), 0) << output << after;
  EXPECT_EQ(GaugeValue(after, queued_series), 0) << after;
  EXPECT_EQ(
      GaugeValue(after, R"(videogen_generations{state="STATE_COMPLETED"})"), 1);
  for (const char* family :
       {"videogen_grpc_requests_total{", "videogen_upstream_requests_total{",
        "videogen_upstream_request_duration_seconds_bucket{",
        "videogen_fanout_latency_seconds_bucket{",
        "videogen_store_write_duration_seconds_bucket{",
        "videogen_poll_lag_seconds_bucket{", "videogen_upstream_retries_total",
        "videogen_upstream_faults_total"}) {
    EXPECT_NE(after.find(family), std::string::npos) << family;
  }
  EXPECT_NE(
      after.find(R"(method="/videogen.v1.VideoGeneration/Generate",code="OK")"),
      std::string::npos)
      << after;
}

TEST(OpsE2eTest, TraceparentReachesLogsAndUpstream) {
  Sim sim = StartSim();
  Server server = StartServer(sim.url);
  const std::string trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string traceparent =
      absl::StrCat("00-", trace_id, "-00f067aa0ba902b7-01");
  grpc::ClientContext ctx;
  ctx.AddMetadata("traceparent", traceparent);
  v1::Generation g;
  ASSERT_TRUE(server.stub->CreateGeneration(&ctx, SimpleRequest(), &g).ok());
  EXPECT_TRUE(server.process->WaitForOutput(
      absl::StrCat("\"trace_id\":\"", trace_id, "\""), absl::Seconds(5)))
      << server.process->Stderr();
  nlohmann::json stats = sim.Stats();
  const std::string upstream_tp =
      stats["traceparent_by_id"].value(g.upstream_id(), "");
  EXPECT_NE(upstream_tp.find(trace_id), std::string::npos) << stats.dump();
}

TEST(OpsE2eTest, ApiKeyNeverAppearsInServerOutput) {
  Sim sim = StartSim();
  Server server = StartServer(sim.url);
  grpc::ClientContext ctx;
  auto reader = server.stub->Generate(&ctx, SimpleRequest());
  ASSERT_TRUE(ReadAll(reader.get()).status.ok());
  server.process->Signal(SIGTERM);
  server.process->Wait(absl::Seconds(10));
  // The harness passes AIMLAPI_KEY=e2e-key; callers send the admin key.
  ASSERT_FALSE(server.admin_key.empty());
  for (const std::string& secret : {std::string(kSimKey), server.admin_key}) {
    EXPECT_EQ(server.process->Stderr().find(secret), std::string::npos);
    EXPECT_EQ(server.process->Stdout().find(secret), std::string::npos);
  }
}

// Issue 14: every unknown method name used to become its own metrics
// series (2,000 calls with 4 KB names: +8 MB of /metrics, +9.7 MB RSS).
TEST(OpsE2eTest, UnknownMethodNamesDoNotGrowMetrics) {
  Sim sim = StartSim();
  const int metrics_port = FreePort();
  Server server = StartServer(
      sim.url, {absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port)});
  auto call = [&](int i) {
    std::string name = absl::StrCat("/videogen.v1.VideoGeneration/X", i, "_",
                                    std::string(4096, 'm'));
    return RawUnaryCall(server.channel, name, "").error_code();
  };
  // Warm up: the "unknown" series exists once, before the baseline.
  ASSERT_EQ(call(-1), grpc::StatusCode::UNIMPLEMENTED);
  const std::string before = ScrapeMetrics(metrics_port);
  ASSERT_FALSE(before.empty());
  const int64_t rss_before = server.process->RssBytes();
  constexpr int kCalls = 2000;
  std::atomic<int> unimplemented{0};
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < kCalls; i = next++) {
        if (call(i) == grpc::StatusCode::UNIMPLEMENTED) ++unimplemented;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(unimplemented.load(), kCalls);
  const std::string after = ScrapeMetrics(metrics_port);
  const int64_t rss_after = server.process->RssBytes();
  // Only counters and histogram counts change: a few bytes, not a series
  // per name.
  EXPECT_LT(after.size(), before.size() + 2048)
      << before.size() << " -> " << after.size();
  EXPECT_EQ(after.find("mmmmmmmmmmmmmmmm"), std::string::npos);
  EXPECT_NE(after.find(R"(method="unknown")"), std::string::npos);
  std::string output;
  EXPECT_EQ(PromtoolCheck(after, &output), 0) << output;
  // Loose (allocator noise); before the fix it grew by ~10 MB.
  EXPECT_LT(rss_after - rss_before, 6 << 20);
}

// The harness names a child's output files by the test's pid and a counter,
// and /tmp keeps them, so a later test process with a reused pid gets the
// same names (pid_max is 32768 here). It once read an earlier sim's
// "listening on" line from such a file before its own child emptied it, and
// the test talked to a dead port ("connection refused" from a live sim, in
// a different test each CI run). Play that earlier process: every name this
// one could use holds a dead sim's line.
TEST(HarnessTest, AnEarlierProcesssOutputUnderTheSameNameIsNeverRead) {
  std::vector<std::string> planted;
  for (int i = 1; i <= 500; ++i) {
    for (const char* stem : {"stdout", "stderr"}) {
      planted.push_back(absl::StrCat(::testing::TempDir(), "/", stem, "-",
                                     getpid(), "-", i, ".log"));
      std::ofstream(planted.back())
          << "videogen-sim listening on http://127.0.0.1:1\n";
    }
  }
  Sim sim = StartSim();
  EXPECT_NE(sim.url, "http://127.0.0.1:1");
  EXPECT_GE(sim.Stats().value("submits", int64_t{-1}), 0) << sim.url;
  for (const std::string& path : planted) std::remove(path.c_str());
}

}  // namespace
}  // namespace videogen::e2e
