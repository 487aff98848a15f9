// Scale-out benchmark (issue 16), side by side in one run:
//   - creates/s (closed loop) and fan-out latency (UPDATE observe_time to
//     receipt, over many watchers) for 1 replica on SQLite, 1 replica on
//     PostgreSQL and 3 replicas on PostgreSQL behind nginx;
//   - how long a killed (SIGKILL) or drained (SIGTERM) replica's
//     generations take to resume (the busiest lease owner; time until
//     another replica holds each lease and until the sim sees its next
//     poll).
// Prints a markdown table. Every process runs on this machine, so the
// figures compare setups against each other, not against production.
//
//   build/tests/cluster/cluster_bench [--create_seconds=10] [--callers=16]
//       [--watch_generations=50] [--watchers=1000] [--leases=3s,10s]
//
// PostgreSQL: VIDEOGEN_TEST_DATABASE_URL, else a throwaway cluster started
// with scripts/pg.sh for the run.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/cluster/harness.h"
#include "tests/cluster/watchers.h"

ABSL_FLAG(int, create_seconds, 10, "length of the closed-loop create run");
ABSL_FLAG(int, callers, 16, "concurrent CreateGeneration callers");
ABSL_FLAG(int, watch_generations, 50, "generations watched in the fan-out");
ABSL_FLAG(int, watchers, 1000, "watch streams in the fan-out run");
ABSL_FLAG(std::vector<std::string>, leases,
          (std::vector<std::string>{"3s", "10s"}),
          "--lease_duration values for the failover runs");
ABSL_FLAG(int, failover_generations, 60, "generations in a failover run");

namespace videogen::cluster {
namespace {

double Percentile(std::vector<int64_t> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(i, v.size() - 1)]);
}

std::string Ms(double us) { return absl::StrFormat("%.1f ms", us / 1000.0); }

struct Setup {
  std::string name;
  std::string store;
  int replicas;
};

struct Figures {
  double creates_per_second = 0;
  double create_p50_us = 0, create_p99_us = 0;
  int64_t create_errors = 0;
  double fanout_p50_us = 0, fanout_p99_us = 0;
  int64_t fanout_samples = 0;
  int64_t fanout_failed = 0;
  int64_t fanout_resumed = 0;    // watchers whose stream broke
  int64_t fanout_anomalies = 0;  // a revision missed, repeated or reordered
};

ClusterOptions OptionsFor(const Setup& s) {
  ClusterOptions o;
  o.replicas = s.replicas;
  o.nginx = s.replicas > 1;
  // Short jobs: each create costs the upstream about 3 polls.
  o.sim_flags = {"--queued_for=1s", "--generating_for=2s"};
  o.replica.store = s.store;
  o.replica.auth = "none";  // same for every setup (SQLite has no keys here)
  o.replica.poll_initial_delay = absl::Seconds(1);
  o.replica.poll_interval = absl::Seconds(1);
  return o;
}

// Closed loop: `callers` threads, each on its own connection, create until
// the time is up.
void CreateLoad(Cluster& c, Figures* f) {
  const int callers = absl::GetFlag(FLAGS_callers);
  const absl::Duration length =
      absl::Seconds(absl::GetFlag(FLAGS_create_seconds));
  std::vector<std::vector<int64_t>> latencies(callers);
  std::atomic<int64_t> errors{0};
  const absl::Time start = absl::Now();
  const absl::Time end = start + length;
  std::vector<std::thread> threads;
  for (int t = 0; t < callers; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::VideoGeneration::NewStub(NewChannel(c.address(), 10 + t));
      for (int i = 0; absl::Now() < end; ++i) {
        grpc::ClientContext ctx;
        Authorize(&ctx, c.key());
        v1::Generation g;
        const absl::Time t0 = absl::Now();
        grpc::Status s = stub->CreateGeneration(
            &ctx, SimpleRequest(absl::StrCat("bench ", t, " ", i)), &g);
        if (s.ok()) {
          latencies[t].push_back(absl::ToInt64Microseconds(absl::Now() - t0));
        } else {
          errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<int64_t> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  f->creates_per_second = all.size() / seconds;
  f->create_p50_us = Percentile(all, 0.5);
  f->create_p99_us = Percentile(all, 0.99);
  f->create_errors = errors.load();
}

// Watchers over fresh generations, through the front; latency of every
// UPDATE from the server's observe_time to receipt.
void FanOut(Cluster& c, Figures* f) {
  const int n = absl::GetFlag(FLAGS_watch_generations);
  const int watchers = absl::GetFlag(FLAGS_watchers);
  const std::vector<std::string> ids =
      CreateMany(c.address(), c.key(), n, "fanout", 8);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 8; ++i)
    channels.push_back(NewChannel(c.address(), 50 + i));
  WatcherSet set(channels, c.key());
  for (int w = 0; w < watchers; ++w) set.Add(ids[w % ids.size()]);
  set.WaitFinished(absl::Seconds(120));
  std::vector<int64_t> all;
  for (const WatchRecord& r : set.Records()) {
    all.insert(all.end(), r.latency_us.begin(), r.latency_us.end());
    if (!r.finished) ++f->fanout_failed;
    if (r.streams > 1) ++f->fanout_resumed;
    // From the first revision seen: each once, in order, to the end.
    const std::string problem =
        CheckRevisions(r, r.revisions.empty() ? 1 : r.revisions.front());
    if (!problem.empty()) {
      if (f->fanout_anomalies++ < 3) std::cerr << "bench: " << problem << "\n";
    }
  }
  f->fanout_samples = static_cast<int64_t>(all.size());
  f->fanout_p50_us = Percentile(all, 0.5);
  f->fanout_p99_us = Percentile(all, 0.99);
}

struct FailoverFigures {
  std::string lease;
  bool drain = false;  // SIGTERM (graceful drain) instead of SIGKILL
  int victim_generations = 0;
  double takeover_p50_ms = 0, takeover_max_ms = 0;
  double resume_p50_ms = 0, resume_max_ms = 0;
  int resumed = 0;
  bool completed = false;
};

// Kill -9 the busiest lease owner while its generations run; per generation,
// the time until another replica owns its lease and until the upstream sees
// its next poll.
FailoverFigures Failover(const std::string& lease, bool drain) {
  FailoverFigures f;
  f.lease = lease;
  f.drain = drain;
  ClusterOptions o = OptionsFor({"", "postgres", 3});
  o.sim_flags = {"--queued_for=1s", "--generating_for=60s"};
  absl::ParseDuration(lease, &o.replica.lease_duration);
  std::unique_ptr<Cluster> c = Cluster::Start("bench-failover", o);
  if (c == nullptr) return f;
  const int n = absl::GetFlag(FLAGS_failover_generations);
  const std::vector<std::string> ids =
      CreateMany(c->address(), c->key(), n, "failover", 8);
  // Let every lease settle and a few polls happen.
  absl::SleepFor(absl::Seconds(3));
  std::map<std::string, int> owners = c->ActiveOwners();
  auto busiest = std::max_element(
      owners.begin(), owners.end(),
      [](const auto& a, const auto& b) { return a.second < b.second; });
  const std::string victim = busiest->first;
  std::set<std::string> mine;
  for (const auto& row : c->db().Rows(absl::StrCat(
           "SELECT id FROM generations WHERE NOT done AND owner = '", victim,
           "'"))) {
    mine.insert(row[0]);
  }
  f.victim_generations = static_cast<int>(mine.size());
  const UpstreamJobs before = JobsByGeneration(c->sim().Stats());
  const absl::Time killed = absl::Now();
  if (drain) {
    c->ByReplicaId(victim)->Stop();  // returns once it exited
  } else {
    c->ByReplicaId(victim)->Kill();
  }
  std::map<std::string, double> takeover_ms, resume_ms;
  const absl::Duration limit = o.replica.lease_duration * 2 + absl::Seconds(10);
  while ((takeover_ms.size() < mine.size() || resume_ms.size() < mine.size()) &&
         absl::Now() - killed < limit) {
    const double now_ms = absl::ToDoubleMilliseconds(absl::Now() - killed);
    for (const auto& row :
         c->db().Rows("SELECT id, owner FROM generations WHERE NOT done")) {
      if (mine.count(row[0]) && row[1] != victim) {
        takeover_ms.emplace(row[0], now_ms);
      }
    }
    const UpstreamJobs polls = JobsByGeneration(c->sim().Stats());
    for (const std::string& id : mine) {
      auto a = polls.polls.find(id);
      auto b = before.polls.find(id);
      if (a != polls.polls.end() &&
          a->second > (b == before.polls.end() ? 0 : b->second)) {
        resume_ms.emplace(id, now_ms);
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  auto stats = [](const std::map<std::string, double>& m, double* p50,
                  double* max) {
    std::vector<int64_t> v;
    for (const auto& [id, ms] : m) v.push_back(static_cast<int64_t>(ms));
    *p50 = Percentile(v, 0.5);
    *max = v.empty()
               ? 0
               : static_cast<double>(*std::max_element(v.begin(), v.end()));
  };
  stats(takeover_ms, &f.takeover_p50_ms, &f.takeover_max_ms);
  stats(resume_ms, &f.resume_p50_ms, &f.resume_max_ms);
  f.resumed = static_cast<int>(resume_ms.size());
  f.completed = f.resumed == f.victim_generations;
  return f;
}

// A throwaway PostgreSQL when none is given; stopped at exit.
struct OwnPostgres {
  std::unique_ptr<TempDir> dir;
  ~OwnPostgres() {
    if (dir == nullptr) return;
    Process stop({"/bin/bash", PgScript(), "stop", dir->path() + "/pg"}, {},
                 dir->path() + "/stop");
    stop.Wait(absl::Seconds(60));
  }
  static std::string PgScript() {
    std::string s = Bins().cluster_sh;
    return s.substr(0, s.rfind('/')) + "/pg.sh";
  }
  bool Start() {
    dir = std::make_unique<TempDir>("videogen-bench-pg");
    Process start({"/bin/bash", PgScript(), "start", dir->path() + "/pg"}, {},
                  dir->path() + "/start");
    if (start.Wait(absl::Seconds(120)) != 0) {
      std::cerr << "scripts/pg.sh start failed: " << start.Stderr() << "\n";
      return false;
    }
    const std::string url(absl::StripAsciiWhitespace(start.Stdout()));
    setenv("VIDEOGEN_TEST_DATABASE_URL", url.c_str(), 1);
    return true;
  }
};

int Main(int argc, char** argv) {
  std::vector<std::string> command = {"cluster_bench"};
  for (int i = 1; i < argc; ++i) command.push_back(argv[i]);
  absl::ParseCommandLine(argc, argv);
  OwnPostgres own;
  const char* url = std::getenv("VIDEOGEN_TEST_DATABASE_URL");
  if ((url == nullptr || *url == '\0') && !own.Start()) return 1;

  const std::vector<Setup> setups = {
      {"SQLite, 1 replica", "sqlite", 1},
      {"PostgreSQL, 1 replica", "postgres", 1},
      {"PostgreSQL, 3 replicas + nginx", "postgres", 3}};
  std::vector<Figures> figures;
  for (const Setup& s : setups) {
    std::cerr << "bench: " << s.name << "\n";
    Figures f;
    std::unique_ptr<Cluster> c = Cluster::Start("bench", OptionsFor(s));
    if (c == nullptr) {
      std::cerr << "bench: " << s.name << " did not start\n";
      return 1;
    }
    CreateLoad(*c, &f);
    // Let the create run's generations finish before the fan-out.
    absl::SleepFor(absl::Seconds(5));
    FanOut(*c, &f);
    figures.push_back(f);
  }
  std::vector<FailoverFigures> failovers;
  for (const std::string& lease : absl::GetFlag(FLAGS_leases)) {
    if (lease.empty()) continue;
    std::cerr << "bench: failover, --lease_duration=" << lease << "\n";
    failovers.push_back(Failover(lease, /*drain=*/false));
    failovers.push_back(Failover(lease, /*drain=*/true));
  }

  std::ostringstream out;
  out << "### Scale-out (issue 16)\n\n"
      << "`" << absl::StrJoin(command, " ") << "` on "
      << std::thread::hardware_concurrency()
      << " cores, everything on one machine (PostgreSQL 15 with fsync off, "
         "videogen-sim, replicas, nginx, load). Creates: "
      << absl::GetFlag(FLAGS_callers) << " callers, closed loop, "
      << absl::GetFlag(FLAGS_create_seconds)
      << " s. Fan-out: " << absl::GetFlag(FLAGS_watchers)
      << " WatchGeneration streams on "
      << absl::GetFlag(FLAGS_watch_generations)
      << " generations; latency = UPDATE observe_time to receipt.\n\n"
      << "| setup | creates/s | create p50 / p99 | fan-out p50 / p99 | "
         "fan-out samples |\n| --- | --- | --- | --- | --- |\n";
  for (size_t i = 0; i < setups.size(); ++i) {
    const Figures& f = figures[i];
    out << "| " << setups[i].name << " | "
        << absl::StrFormat("%.0f", f.creates_per_second)
        << (f.create_errors ? absl::StrCat(" (", f.create_errors, " errors)")
                            : "")
        << " | " << Ms(f.create_p50_us) << " / " << Ms(f.create_p99_us) << " | "
        << Ms(f.fanout_p50_us) << " / " << Ms(f.fanout_p99_us) << " | "
        << f.fanout_samples
        << (f.fanout_failed
                ? absl::StrCat(" (", f.fanout_failed, " watchers unfinished)")
                : "")
        << (f.fanout_resumed
                ? absl::StrCat(" (", f.fanout_resumed, " streams resumed)")
                : "")
        << (f.fanout_anomalies ? absl::StrCat(" (", f.fanout_anomalies,
                                              " revision-order anomalies)")
                               : "")
        << " |\n";
  }
  out << "\nA replica leaves (the busiest lease owner, 3 replicas, "
      << absl::GetFlag(FLAGS_failover_generations)
      << " running generations, --poll_interval=1s; times from the signal):"
         "\n\n"
      << "| --lease_duration | signal | its generations | lease taken over "
         "p50 / max | next upstream poll p50 / max |\n"
         "| --- | --- | --- | --- | --- |\n";
  for (const FailoverFigures& f : failovers) {
    out << "| " << f.lease << " | " << (f.drain ? "SIGTERM (drain)" : "SIGKILL")
        << " | " << f.victim_generations << " | "
        << absl::StrFormat("%.1f s / %.1f s", f.takeover_p50_ms / 1000,
                           f.takeover_max_ms / 1000)
        << " | "
        << absl::StrFormat("%.1f s / %.1f s", f.resume_p50_ms / 1000,
                           f.resume_max_ms / 1000)
        << (f.completed ? "" : absl::StrCat(" (only ", f.resumed, " resumed)"))
        << " |\n";
  }
  std::cout << out.str();
  return 0;
}

}  // namespace
}  // namespace videogen::cluster

int main(int argc, char** argv) { return videogen::cluster::Main(argc, argv); }
