// Issue 16's rolling restart: 3 replicas on PostgreSQL behind nginx, 20
// generations, 200 `videogen watch` processes (the real CLI, 10 per
// generation) through the proxy. Each replica in turn gets SIGTERM, drains,
// exits and starts again (as a new pod would, under a new replica id)
// while the generations run. Every CLI must exit 0 with the terminal state.

#include <gtest/gtest.h>

#include <iostream>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/cluster/harness.h"

namespace videogen::cluster {
namespace {

constexpr int kGenerations = 20;
constexpr int kWatchesPerGeneration = 10;

TEST(ClusterRollingRestart, TwoHundredCliWatchesSurviveIt) {
  ClusterOptions o;
  o.replicas = 3;
  // Long enough to cover 200 CLI starts and three restarts.
  o.sim_flags = {"--queued_for=2s", "--generating_for=40s"};
  o.replica.lease_duration = absl::Seconds(3);
  o.replica.poll_initial_delay = absl::Milliseconds(500);
  o.replica.poll_interval = absl::Seconds(1);
  o.replica.drain_grace = absl::Seconds(3);
  std::unique_ptr<Cluster> c = Cluster::Start("rolling", o);
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> ids =
      CreateMany(c->address(), c->key(), kGenerations, "rolling", 5);
  ASSERT_FALSE(::testing::Test::HasFailure());

  // The key goes through the environment (never argv, never a log).
  std::vector<std::unique_ptr<Process>> clis;
  for (int w = 0; w < kWatchesPerGeneration; ++w) {
    for (int g = 0; g < kGenerations; ++g) {
      clis.push_back(std::make_unique<Process>(
          std::vector<std::string>{Bins().client, "--server", c->address(),
                                   "--json", "watch", ids[g]},
          std::map<std::string, std::string>{{"VIDEOGEN_API_KEY", c->key()}},
          absl::StrCat(c->dir(), "/watch-", w, "-", g)));
    }
  }
  // Every CLI is attached (printed its first event) before the restarts.
  const absl::Time attach_deadline = absl::Now() + absl::Seconds(60);
  for (auto& p : clis) {
    while (p->Stdout().empty() && p->running() &&
           absl::Now() < attach_deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_FALSE(p->Stdout().empty())
        << "a CLI watch never printed an event: " << p->Stderr();
  }

  std::vector<std::string> timeline;
  for (int i = 0; i < c->size(); ++i) {
    const std::string done =
        c->db().Scalar("SELECT count(*) FROM generations WHERE done");
    // The restarts must happen while the generations run.
    ASSERT_EQ(done, "0") << "generations ended before restart " << i;
    const absl::Time t0 = absl::Now();
    const std::string old_id = c->replica(i).replica_id();
    std::string why;
    ASSERT_TRUE(c->Restart(i, &why)) << why;
    timeline.push_back(absl::StrCat(old_id, " -> ", c->replica(i).replica_id(),
                                    " in ",
                                    absl::FormatDuration(absl::Now() - t0)));
    absl::SleepFor(absl::Seconds(1));
  }

  int ok = 0, reconnected = 0;
  for (auto& p : clis) {
    std::optional<int> code = p->Wait(absl::Seconds(120));
    if (!code.has_value()) {
      p->Stop(absl::Seconds(1));
      ADD_FAILURE() << "a CLI watch is still running: " << p->Stderr();
      continue;
    }
    const std::string out = p->Stdout();
    std::vector<std::string> lines =
        absl::StrSplit(out, '\n', absl::SkipWhitespace());
    const bool terminal =
        !lines.empty() && absl::StrContains(lines.back(), "STATE_COMPLETED");
    if (*code == 0 && terminal) {
      ++ok;
    } else {
      ADD_FAILURE() << "CLI exit " << *code << ", last line: "
                    << (lines.empty() ? "(none)" : lines.back())
                    << "\nstderr: " << p->Stderr();
    }
    if (absl::StrContains(p->Stderr(), "reconnecting")) ++reconnected;
  }
  EXPECT_EQ(ok, kGenerations * kWatchesPerGeneration);
  // The restarts cut streams, or the resume path went untested.
  EXPECT_GT(reconnected, 0);
  EXPECT_EQ(c->db().Scalar("SELECT count(*) FROM generations WHERE state = 3"),
            std::to_string(kGenerations));
  const UpstreamJobs jobs = JobsByGeneration(c->sim().Stats());
  EXPECT_EQ(jobs.submits, kGenerations);

  std::cout << "rolling restart: " << ok << " of " << clis.size()
            << " CLI watches exited 0 with STATE_COMPLETED; " << reconnected
            << " of them resumed at least once\n";
  for (const std::string& t : timeline) std::cout << "  " << t << "\n";
  c->KeepLogsIfFailed();
}

}  // namespace
}  // namespace videogen::cluster
