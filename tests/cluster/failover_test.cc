// Issue 16's failover run: 3 replicas on PostgreSQL behind nginx, 100
// generations created through the proxy, 500 watchers (5 per generation)
// spread over the replicas through nginx; kill -9 the replica whose leases
// cover most of them, mid-run. Then:
// - every generation completes;
// - every watcher sees every revision once, in order (resuming through the
//   proxy with after_revision when its stream broke);
// - exactly one upstream job per generation (the sim's submits, keyed by
//   the X-Client-Request-Id videogen sends = the generation id);
// - polls per generation at most 1.5x a single-replica run with the same
//   timings, measured first in this test.

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/cluster/harness.h"
#include "tests/cluster/watchers.h"

namespace videogen::cluster {
namespace {

constexpr int kGenerations = 100;
constexpr int kWatchersPerGeneration = 5;

// Upstream timings: long enough that the kill lands while every generation
// is GENERATING, short enough for a test.
ClusterOptions Options(int replicas) {
  ClusterOptions o;
  o.replicas = replicas;
  o.nginx = replicas > 1;
  o.sim_flags = {"--queued_for=4s", "--generating_for=8s"};
  o.replica.lease_duration = absl::Seconds(3);
  o.replica.poll_initial_delay = absl::Seconds(1);
  o.replica.poll_interval = absl::Seconds(1);
  return o;
}

struct PollFigures {
  double mean = 0;
  int max = 0;
};

PollFigures Polls(const UpstreamJobs& jobs,
                  const std::vector<std::string>& ids) {
  PollFigures f;
  int64_t total = 0;
  for (const std::string& id : ids) {
    auto it = jobs.polls.find(id);
    const int n = it == jobs.polls.end() ? 0 : it->second;
    total += n;
    f.max = std::max(f.max, n);
  }
  f.mean = ids.empty() ? 0 : static_cast<double>(total) / ids.size();
  return f;
}

void ExpectOneJobEach(const UpstreamJobs& jobs,
                      const std::vector<std::string>& ids) {
  EXPECT_EQ(jobs.submits, static_cast<int64_t>(ids.size()));
  int wrong = 0;
  for (const std::string& id : ids) {
    auto it = jobs.jobs.find(id);
    const int n = it == jobs.jobs.end() ? 0 : it->second;
    if (n != 1 && ++wrong <= 5) {
      ADD_FAILURE() << "generation " << id << " has " << n << " upstream jobs";
    }
  }
  EXPECT_EQ(wrong, 0);
}

// The single-replica poll count: same sim timings, same server flags.
PollFigures Baseline() {
  std::unique_ptr<Cluster> c = Cluster::Start("baseline", Options(1));
  if (c == nullptr) return {};
  const std::vector<std::string> ids =
      CreateMany(c->address(), c->key(), kGenerations, "baseline", 10);
  EXPECT_TRUE(WaitDone(c->db(), kGenerations, absl::Seconds(90)));
  const UpstreamJobs jobs = JobsByGeneration(c->sim().Stats());
  ExpectOneJobEach(jobs, ids);
  c->KeepLogsIfFailed();
  return Polls(jobs, ids);
}

TEST(ClusterFailover, KillTheBusiestReplicaMidRun) {
  const PollFigures baseline = Baseline();
  ASSERT_GT(baseline.mean, 0);
  ASSERT_FALSE(::testing::Test::HasFailure());

  std::unique_ptr<Cluster> c = Cluster::Start("failover", Options(3));
  ASSERT_NE(c, nullptr);
  const absl::Time start = absl::Now();
  const std::vector<std::string> ids =
      CreateMany(c->address(), c->key(), kGenerations, "failover", 10);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const absl::Duration create_time = absl::Now() - start;

  // 500 streams through nginx over 4 client connections; nginx spreads
  // each stream over the replicas.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 4; ++i) channels.push_back(NewChannel(c->address(), i));
  WatcherSet watchers(channels, c->key());
  for (int w = 0; w < kWatchersPerGeneration; ++w) {
    for (const std::string& id : ids) watchers.Add(id);
  }
  ASSERT_TRUE(watchers.WaitAttached(absl::Seconds(30)));
  const absl::Duration attach_time = absl::Now() - start;

  // Mid-run: wait until most generations are GENERATING, then kill the
  // replica whose leases cover most of the running ones.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (std::stoi(c->db().Scalar(
             "SELECT count(*) FROM generations WHERE state = 2")) <
             kGenerations * 9 / 10 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  std::map<std::string, int> owners = c->ActiveOwners();
  ASSERT_FALSE(owners.empty()) << "every generation ended before the kill";
  auto busiest = std::max_element(
      owners.begin(), owners.end(),
      [](const auto& a, const auto& b) { return a.second < b.second; });
  const std::string victim_id = busiest->first;
  const int victim_generations = busiest->second;
  Replica* victim = c->ByReplicaId(victim_id);
  ASSERT_NE(victim, nullptr) << "lease owner " << victim_id;
  const std::vector<std::vector<std::string>> victim_rows = c->db().Rows(
      absl::StrCat("SELECT id FROM generations WHERE NOT done AND owner = '",
                   victim_id, "'"));
  const int done_before_kill =
      std::stoi(c->db().Scalar("SELECT count(*) FROM generations WHERE done"));
  const absl::Time killed_at = absl::Now();
  victim->Kill();

  // When did another replica take each of the victim's generations?
  absl::Duration takeover = absl::ZeroDuration();
  while (absl::Now() - killed_at < absl::Seconds(30)) {
    const std::string left = c->db().Scalar(absl::StrCat(
        "SELECT count(*) FROM generations WHERE NOT done AND owner = '",
        victim_id, "'"));
    if (left == "0") {
      takeover = absl::Now() - killed_at;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }

  EXPECT_TRUE(watchers.WaitFinished(absl::Seconds(120)))
      << watchers.finished() << " of " << ids.size() * kWatchersPerGeneration
      << " watchers finished";
  EXPECT_TRUE(WaitDone(c->db(), kGenerations, absl::Seconds(60)));

  // Every generation completed.
  EXPECT_EQ(c->db().Scalar("SELECT count(*) FROM generations WHERE state = 3"),
            std::to_string(kGenerations));

  // Every watcher: revisions 1..final, each once, in order, ending COMPLETED.
  int bad = 0, resumed = 0;
  std::map<std::string, int> breaks;
  for (const WatchRecord& r : watchers.Records()) {
    const std::string problem = CheckRevisions(r, 1);
    if (!problem.empty() && ++bad <= 10) ADD_FAILURE() << problem;
    if (r.final_state != v1::Generation::STATE_COMPLETED && ++bad <= 10) {
      ADD_FAILURE() << r.id << ": final state " << r.final_state;
    }
    if (r.streams > 1) ++resumed;
    for (const std::string& b : r.breaks) ++breaks[b.substr(0, 60)];
  }
  EXPECT_EQ(bad, 0);
  // The kill must have cut streams, or the resume path went untested.
  EXPECT_GT(resumed, 0);

  const UpstreamJobs jobs = JobsByGeneration(c->sim().Stats());
  ExpectOneJobEach(jobs, ids);
  const PollFigures cluster = Polls(jobs, ids);
  EXPECT_LE(cluster.mean, 1.5 * baseline.mean);
  EXPECT_LE(cluster.max, 1.5 * baseline.max);
  EXPECT_GT(takeover, absl::ZeroDuration())
      << "the victim's generations were never taken over";

  std::cout << "failover: " << kGenerations << " generations created in "
            << create_time << ", " << ids.size() * kWatchersPerGeneration
            << " watchers attached " << attach_time << " after start\n"
            << "  leases before the kill:";
  for (const auto& [owner, n] : owners) std::cout << " " << owner << "=" << n;
  std::cout << "\n  killed " << victim_id << " (" << victim_generations
            << " running generations, " << victim_rows.size() << " listed; "
            << done_before_kill << " done before the kill)"
            << "; its leases taken over " << takeover << " after the kill\n"
            << "  watchers that resumed: " << resumed << "\n";
  for (const auto& [b, n] : breaks) {
    std::cout << "    " << n << " x " << b << "\n";
  }
  std::cout << "  polls per generation: cluster mean " << cluster.mean
            << " max " << cluster.max << "; single replica mean "
            << baseline.mean << " max " << baseline.max << "\n";
  RecordProperty("takeover_ms",
                 static_cast<int>(absl::ToInt64Milliseconds(takeover)));
  RecordProperty("resumed_watchers", resumed);
  c->KeepLogsIfFailed();
}

}  // namespace
}  // namespace videogen::cluster
