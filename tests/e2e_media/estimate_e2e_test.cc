// Issue 20 end to end: the estimate learned from past generations against
// videogen-sim with known timings (queued 1 s + generating 3 s), and the
// run-time histogram on /metrics.
#include <cmath>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/util/proto_time.h"
#include "tests/e2e_media/media_harness.h"

namespace videogen::e2e_media {
namespace {

constexpr absl::Duration kSimDuration = absl::Seconds(4);  // 1 s + 3 s

double Seconds(const google::protobuf::Timestamp& later,
               const google::protobuf::Timestamp& earlier) {
  return absl::ToDoubleSeconds(util::FromTimestamp(later) -
                               util::FromTimestamp(earlier));
}

TEST(EstimateE2e, AfterTenCompletedTheNextIsEstimatedWithinTwentyPercent) {
  Sim sim = StartSim({"--queued_for=1s", "--generating_for=3s"});
  ServerSpec spec;
  spec.upstream_url = sim.url;
  spec.mirror = "none";
  spec.flags = {"--metrics_listen=127.0.0.1:0"};
  Server server = StartServer(spec);
  Api api(server.http_url);

  // Cold start: the documented timing stands in (samples = 0), minutes away.
  absl::StatusOr<v1::Generation> first = api.Create("warm-up 0");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->has_estimate());
  EXPECT_EQ(first->estimate().samples(), 0);
  EXPECT_GT(
      Seconds(first->estimate().expected_complete_time(), first->create_time()),
      60);

  // Ten completed generations (four submits at a time is the default).
  std::vector<std::string> ids = {first->id()};
  for (int i = 1; i < 10; ++i) {
    absl::StatusOr<v1::Generation> g = api.Create(absl::StrCat("warm-up ", i));
    ASSERT_TRUE(g.ok()) << g.status();
    ids.push_back(g->id());
  }
  std::vector<double> observed;
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Generation> g = api.WaitDone(id, absl::Seconds(60));
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_EQ(g->state(), v1::Generation::STATE_COMPLETED);
    EXPECT_FALSE(g->has_estimate()) << "terminal generations carry none";
    observed.push_back(Seconds(g->update_time(), g->create_time()));
  }

  // The eleventh, measured on its own (nothing else running).
  absl::StatusOr<v1::Generation> next = api.Create("the measured one");
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_TRUE(next->has_estimate());
  const v1::GenerationEstimate at_create = next->estimate();
  EXPECT_GE(at_create.samples(), 10);
  const double predicted =
      Seconds(at_create.expected_complete_time(), next->create_time());
  const double p90 =
      Seconds(at_create.p90_complete_time(), next->create_time());

  // The estimate while GENERATING (conditioned on time already run).
  double predicted_generating = -1;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::Generation> g = api.Get(next->id());
    ASSERT_TRUE(g.ok()) << g.status();
    if (g->state() == v1::Generation::STATE_GENERATING) {
      ASSERT_TRUE(g->has_estimate());
      predicted_generating =
          Seconds(g->estimate().expected_complete_time(), next->create_time());
      break;
    }
    ASSERT_FALSE(g->done()) << "never seen GENERATING";
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::StatusOr<v1::Generation> done =
      api.WaitDone(next->id(), absl::Seconds(30));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::Generation::STATE_COMPLETED);
  const double actual = Seconds(done->update_time(), done->create_time());
  const double sim_s = absl::ToDoubleSeconds(kSimDuration);

  const double err_vs_sim = (predicted - sim_s) / sim_s;
  const double err_vs_actual = (predicted - actual) / actual;
  double mean_observed = 0;
  for (double d : observed) mean_observed += d / observed.size();
  // Figures for the README (ctest -V shows them).
  std::printf(
      "estimate_e2e: sim duration %.3f s; warm-up runs mean %.3f s; "
      "11th: predicted at create %.3f s (p90 %.3f s, samples %d), "
      "predicted while GENERATING %.3f s, actual %.3f s; "
      "error vs sim %+.1f%%, vs actual %+.1f%%\n",
      sim_s, mean_observed, predicted, p90, at_create.samples(),
      predicted_generating, actual, 100 * err_vs_sim, 100 * err_vs_actual);
  EXPECT_LE(std::abs(err_vs_sim), 0.20);
  EXPECT_LE(std::abs(err_vs_actual), 0.20);
  EXPECT_GE(p90, predicted);
  EXPECT_GT(predicted_generating, 0);

  // The learned run times, as a histogram labelled by model and duration.
  ASSERT_GT(server.metrics_port, 0);
  httplib::Client metrics(
      absl::StrCat("http://127.0.0.1:", server.metrics_port));
  httplib::Result r = metrics.Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  std::smatch m;
  const std::regex count_re(
      R"re(videogen_generation_duration_seconds_count\{([^}]*)\} (\d+))re");
  ASSERT_TRUE(std::regex_search(r->body, m, count_re)) << r->body;
  const std::string labels = m[1];
  EXPECT_NE(labels.find("duration=\"5\""), std::string::npos) << labels;
  EXPECT_TRUE(std::regex_search(labels, std::regex(R"(model="[^"]+")")))
      << "the model label is empty: " << labels;
  EXPECT_EQ(std::stoi(m[2]), 11);
}

}  // namespace
}  // namespace videogen::e2e_media
