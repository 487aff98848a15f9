#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "tests/bench/videogen/throughput.h"
#include "tests/bench/videogen/watchers.h"

namespace videogen::bench {

// Where the binaries are and where child logs go.
struct Paths {
  std::string server_bin;
  std::string sim_bin;
  std::string self_bin;
  std::string log_dir;
  bool bare_deadlock_detection = false;  // passed to the bare server
};

struct WatchOptions {
  int generations = 10;
  int streams_per_channel = 500;
  // The watchers scenario's sim holds every job queued until all watchers
  // are attached; this is its queued time from then on.
  absl::Duration queued_for;
  absl::Duration generating_for;
  absl::Duration poll_interval;
};

// One server's side of the watchers scenario.
// videogen's --heartbeat_interval in every scenario (see StartServer).
inline constexpr absl::Duration kBenchHeartbeat = absl::Seconds(300);

struct WatchRun {
  bool ran = false;
  int runs = 0;         // repeats merged into this one (see Merge)
  std::string failure;  // why it did not run, when !ran
  WatchResult result;
  int64_t rss_before = -1;        // bytes, before any watcher
  int64_t rss_attached = -1;      // bytes, right after the last attach
  int64_t rss_peak = -1;          // VmHWM at the end
  double cpu_seconds = 0;         // from before the first attach to the end
  double cpu_attach_seconds = 0;  // the part until every stream is attached
};

struct WatchPair {
  int n = 0;
  std::vector<std::pair<int64_t, int64_t>> p99_us;  // per run: videogen, bare
  WatchRun videogen;
  WatchRun bare;
};

struct ThroughputResult {
  bool ran = false;
  std::string failure;
  int concurrency = 0;
  LoadResult direct;
  LoadResult create;
  LoadResult direct_serial;  // one call in flight: latency without queueing
  LoadResult create_serial;
  LoadResult generate;
  double create_cpu = 0;  // server CPU seconds during the create run
  double generate_cpu = 0;
};

struct EfficiencyRow {
  int watchers = 0;
  int64_t polls = -1;  // upstream GETs for the generation (sim's count)
  int64_t errors = 0;  // watcher streams that failed
};

struct EfficiencyResult {
  bool ran = false;
  std::string failure;
  absl::Duration queued_for;
  absl::Duration generating_for;
  absl::Duration poll_interval;
  std::vector<EfficiencyRow> rows;
};

// One transport's side of the sse scenario: the streams as in the watchers
// scenario, plus the server's thread count (/proc/PID/task).
struct StreamRun {
  WatchRun watch;
  int threads_before = -1;    // before the first stream
  int threads_attached = -1;  // right after the last attach
  int threads_max = -1;       // most seen while the streams were open
};

// The sse scenario at one stream count: N gRPC WatchGeneration streams and
// N SSE streams on one generation, each on a fresh server (see RunSseSide).
struct SsePair {
  int n = 0;
  absl::Duration attach_window;  // --poll_initial_delay: no change before it
  std::vector<std::pair<int64_t, int64_t>> p99_us;  // per run: gRPC, SSE
  StreamRun grpc;
  StreamRun sse;
};

struct SseOptions {
  int streams_per_channel = 500;  // gRPC streams per client connection
  int updates = 10;  // UPDATEs per stream, terminal included (about: the
                     // server jitters its poll interval by +-20%)
  absl::Duration poll_interval;
};

// Adds a repeat of the same run: streams, counts and latency samples add up;
// RSS and CPU become means over the runs, peak RSS and attach time maxima.
void Merge(WatchRun& into, const WatchRun& from);

WatchRun RunVideogenWatchers(const Paths& paths, const WatchOptions& o, int n);
// Replays `changes` (videogen's, from the same run) against the bare
// server: same groups, same number of updates, same spacing.
WatchRun RunBareWatchers(const Paths& paths, const WatchOptions& o, int n,
                         const std::vector<Change>& changes);
ThroughputResult RunThroughput(const Paths& paths, int concurrency,
                               absl::Duration duration);
// One run of one transport of the sse scenario on a fresh sim and server
// (started with --http_listen). The sim answers every other poll with the
// other word for the same status (`--fault=poll:odd:every=2`), so every poll
// while generating changes the upstream status: one UPDATE per poll, about
// `o.updates` with the terminal one (the server jitters its poll interval by
// +-20%, so a run may see one more or one fewer). The first poll comes after
// `attach_window` (not jittered), so every stream is attached before the
// first change.
StreamRun RunSseSide(const Paths& paths, const SseOptions& o, int n,
                     absl::Duration attach_window, bool sse);
// Like Merge; thread counts become maxima over the runs.
void MergeStreams(StreamRun& into, const StreamRun& from);
EfficiencyResult RunEfficiency(const Paths& paths, const WatchOptions& o,
                               const std::vector<int>& watcher_counts);

}  // namespace videogen::bench
