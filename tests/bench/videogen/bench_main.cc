// videogen-bench: stream scale, fan-out latency, throughput and upstream
// efficiency of videogen-server, measured side by side with a bare gRPC
// server in the same run. Writes a markdown report (see --out).
#include <curl/curl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tests/bench/videogen/bare_server.h"
#include "tests/bench/videogen/proc.h"
#include "tests/bench/videogen/report.h"
#include "tests/bench/videogen/scenarios.h"
#include "tests/bench/videogen/stats.h"

ABSL_FLAG(bool, bare_server, false,
          "run as the bare baseline server (internal; started by the bench)");
ABSL_FLAG(int, port, 0, "--bare_server: port to listen on (0 picks one)");
ABSL_FLAG(bool, bare_deadlock_detection, false,
          "keep Abseil Mutex deadlock detection on in the bare server (it is "
          "on by default in Debian's Abseil; for comparison runs)");
ABSL_FLAG(std::string, server_bin, "",
          "videogen-server binary (default: <build>/server/videogen-server)");
ABSL_FLAG(std::string, sim_bin, "",
          "videogen-sim binary (default: <build>/server/sim/videogen-sim)");
ABSL_FLAG(std::string, out, "bench-results.md", "markdown report to write");
ABSL_FLAG(std::vector<std::string>, scenarios,
          std::vector<std::string>({"watchers", "throughput", "upstream",
                                    "sse"}),
          "which scenarios to run: watchers, throughput, upstream, sse");
ABSL_FLAG(std::vector<std::string>, watchers,
          std::vector<std::string>({"1000", "10000", "50000"}),
          "watcher counts of the watchers scenario");
ABSL_FLAG(int, generations, 10, "generations the watchers are spread over");
ABSL_FLAG(int, streams_per_channel, 500,
          "streams per client channel (one TCP connection each)");
// Not shorter: a change within about 1.5 s of 1,000 streams attaching
// reached videogen's watchers 40-90 ms late (the server had handed every
// write to gRPC within 1 ms) and the bare server's on time; see the README.
ABSL_FLAG(absl::Duration, queued_for, absl::Seconds(3),
          "sim time a job stays queued in the watchers scenario once the "
          "bench releases it; the sim holds every job queued until all "
          "watchers are attached");
ABSL_FLAG(absl::Duration, generating_for, absl::Seconds(3),
          "sim time a job spends generating (also the bare update spacing)");
ABSL_FLAG(absl::Duration, poll_interval, absl::Milliseconds(500),
          "videogen --poll_interval in the watchers and upstream scenarios");
ABSL_FLAG(int, concurrency, 32, "calls in flight in the throughput scenario");
ABSL_FLAG(absl::Duration, load_duration, absl::Seconds(5),
          "length of each throughput run");
ABSL_FLAG(std::vector<std::string>, efficiency_watchers,
          std::vector<std::string>({"1", "10", "100", "1000"}),
          "watcher counts of the upstream scenario");
ABSL_FLAG(int, repeats, 3,
          "runs per watcher count (pooled), for counts up to "
          "--repeat_max_watchers; fan-out latency on a shared box is noisy");
ABSL_FLAG(int, repeat_max_watchers, 10000,
          "larger watcher counts run once (time budget)");
ABSL_FLAG(std::vector<std::string>, sse_streams,
          std::vector<std::string>({"1000"}),
          "stream counts of the sse scenario: N gRPC WatchGeneration streams "
          "and N SSE streams on one generation (--repeats runs each)");
ABSL_FLAG(int, sse_updates, 10,
          "UPDATEs per stream in the sse scenario, the terminal one included "
          "(one per poll, --poll_interval apart; about, as the server jitters "
          "its polls by +-20%; at least 2)");
ABSL_FLAG(bool, strict, false,
          "exit 1 when any stream or call failed (for the smoke test)");
ABSL_FLAG(std::string, invoked_as, "",
          "command shown in the report (default: this process's argv)");

namespace videogen::bench {
namespace {

std::string SelfPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : "videogen-bench";
}

std::string Dir(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<int> Ints(const std::vector<std::string>& v) {
  std::vector<int> out;
  for (const auto& s : v) {
    int x = 0;
    if (absl::SimpleAtoi(s, &x) && x > 0) out.push_back(x);
  }
  return out;
}

bool Has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

int Run(int argc, char** argv) {
  Paths paths;
  paths.self_bin = SelfPath();
  // The binary lives in <build>/tests/bench/videogen/.
  const std::string build = Dir(Dir(Dir(Dir(paths.self_bin))));
  paths.server_bin = absl::GetFlag(FLAGS_server_bin);
  if (paths.server_bin.empty()) {
    paths.server_bin = build + "/server/videogen-server";
  }
  paths.sim_bin = absl::GetFlag(FLAGS_sim_bin);
  if (paths.sim_bin.empty()) paths.sim_bin = build + "/server/sim/videogen-sim";
  const std::string out = absl::GetFlag(FLAGS_out);
  paths.log_dir = Dir(out) + "/logs";
  paths.bare_deadlock_detection = absl::GetFlag(FLAGS_bare_deadlock_detection);
  if (std::system(absl::StrCat("mkdir -p '", paths.log_dir, "'").c_str()) !=
      0) {
    std::fprintf(stderr, "cannot create %s\n", paths.log_dir.c_str());
    return 2;
  }

  Report report;
  report.machine = DescribeMachine();
  report.fd_limit = RaiseFdLimit();  // before any child starts: they inherit
  std::vector<std::string> args(argv, argv + argc);
  report.command = absl::GetFlag(FLAGS_invoked_as).empty()
                       ? absl::StrJoin(args, " ")
                       : absl::GetFlag(FLAGS_invoked_as);
  report.start = absl::Now();

  WatchOptions wo;
  wo.generations = absl::GetFlag(FLAGS_generations);
  wo.streams_per_channel = absl::GetFlag(FLAGS_streams_per_channel);
  wo.queued_for = absl::GetFlag(FLAGS_queued_for);
  wo.generating_for = absl::GetFlag(FLAGS_generating_for);
  wo.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  const std::vector<std::string> scenarios = absl::GetFlag(FLAGS_scenarios);

  if (Has(scenarios, "watchers")) {
    for (int n : Ints(absl::GetFlag(FLAGS_watchers))) {
      WatchPair pair;
      pair.n = n;
      std::fprintf(stderr, "[bench] watchers %d: videogen\n", n);
      const int runs = n <= absl::GetFlag(FLAGS_repeat_max_watchers)
                           ? std::max(1, absl::GetFlag(FLAGS_repeats))
                           : 1;
      if (runs > 1) {
        // Not counted: videogen always runs first in a pair (bare replays
        // its schedule), so without this the first pair's videogen run alone
        // would pay for the bench client growing to n streams (page faults
        // in this process); it made the first of three runs the slowest in
        // every suite.
        std::fprintf(stderr,
                     "[bench] watchers %d: warm-up (bare, not "
                     "counted)\n",
                     n);
        RunBareWatchers(paths, wo, n, {});
      }
      for (int run = 0; run < runs; ++run) {
        WatchRun v = RunVideogenWatchers(paths, wo, n);
        std::fprintf(stderr,
                     "[bench] watchers %d: bare, replaying %zu changes\n", n,
                     v.result.changes.size());
        WatchRun b = RunBareWatchers(paths, wo, n, v.result.changes);
        std::vector<int64_t> vl = v.result.latency_us, bl = b.result.latency_us;
        pair.p99_us.emplace_back(Percentile(vl, 99), Percentile(bl, 99));
        Merge(pair.videogen, v);
        Merge(pair.bare, b);
      }
      for (const WatchRun* r : {&pair.videogen, &pair.bare}) {
        std::fprintf(stderr, "[bench]   attach %s, %lld errors\n",
                     absl::FormatDuration(r->result.attach_time).c_str(),
                     static_cast<long long>(r->result.errors));
      }
      report.watch_options = wo;
      report.watchers.push_back(std::move(pair));
    }
  }
  if (Has(scenarios, "throughput")) {
    std::fprintf(stderr, "[bench] throughput\n");
    report.throughput = RunThroughput(paths, absl::GetFlag(FLAGS_concurrency),
                                      absl::GetFlag(FLAGS_load_duration));
  }
  if (Has(scenarios, "upstream")) {
    std::fprintf(stderr, "[bench] upstream efficiency\n");
    report.efficiency = RunEfficiency(
        paths, wo, Ints(absl::GetFlag(FLAGS_efficiency_watchers)));
  }
  if (Has(scenarios, "sse")) {
    SseOptions so;
    so.streams_per_channel = wo.streams_per_channel;
    so.updates = std::max(2, absl::GetFlag(FLAGS_sse_updates));
    so.poll_interval = wo.poll_interval;
    report.sse_options = so;
    double attach_per_stream = 0.001;  // seconds, as in the watchers
    for (int n : Ints(absl::GetFlag(FLAGS_sse_streams))) {
      SsePair pair;
      pair.n = n;
      pair.attach_window = absl::Trunc(
          absl::Seconds(3 + 2 * attach_per_stream * n), absl::Seconds(1));
      // Each transport runs on a fresh sim and server, one after the other,
      // not both at once on one server: the fan-out hub hands a change to a
      // generation's subscribers in subscription order, so with both open
      // whichever transport subscribed first would be served first in every
      // round; RSS and threads could not be told apart; and on 2 cores the
      // bench's gRPC threads and SSE loop would compete for the same CPU.
      // Apart, both see the same schedule (same flags, one generation, the
      // same number of UPDATEs give or take the poll jitter) on an empty
      // server. The order alternates from run to run (gRPC first, then SSE
      // first, ...), so drift on a shared box falls on both alike.
      const int runs = std::max(1, absl::GetFlag(FLAGS_repeats));
      for (int run = 0; run < runs; ++run) {
        StreamRun g, s;
        for (int k = 0; k < 2; ++k) {
          const bool sse = (k == 0) == (run % 2 == 1);
          std::fprintf(stderr, "[bench] sse %d: %s streams, run %d/%d\n", n,
                       sse ? "SSE" : "gRPC", run + 1, runs);
          (sse ? s : g) = RunSseSide(paths, so, n, pair.attach_window, sse);
        }
        std::vector<int64_t> gl = g.watch.result.latency_us,
                             sl = s.watch.result.latency_us;
        pair.p99_us.emplace_back(Percentile(gl, 99), Percentile(sl, 99));
        MergeStreams(pair.grpc, g);
        MergeStreams(pair.sse, s);
        for (const StreamRun* r : {&g, &s}) {
          std::fprintf(
              stderr, "[bench]   %s: attach %s, %lld errors\n",
              r == &g ? "gRPC" : "SSE",
              absl::FormatDuration(r->watch.result.attach_time).c_str(),
              static_cast<long long>(r->watch.result.errors));
          if (r->watch.ran &&
              r->watch.result.attach_time < absl::InfiniteDuration()) {
            attach_per_stream = std::max(
                attach_per_stream,
                absl::ToDoubleSeconds(r->watch.result.attach_time) / n);
          }
        }
      }
      report.sse.push_back(std::move(pair));
    }
  }
  report.end = absl::Now();

  std::string md = RenderMarkdown(report);
  std::ofstream(out) << md;
  std::fputs(md.c_str(), stdout);
  std::fprintf(stderr, "[bench] report written to %s\n", out.c_str());
  if (absl::GetFlag(FLAGS_strict) && report.AnyFailure()) {
    std::fprintf(stderr, "[bench] --strict: failures above\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace videogen::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "videogen-bench: watchers, bare baseline, throughput, upstream "
      "efficiency and SSE against gRPC streams of videogen-server. "
      "Example:\n"
      "  videogen-bench --out=build/bench/results.md --watchers=1000,10000");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_bare_server)) {
    return videogen::bench::RunBareServer(
        absl::GetFlag(FLAGS_port),
        absl::GetFlag(FLAGS_bare_deadlock_detection));
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  return videogen::bench::Run(argc, argv);
}
