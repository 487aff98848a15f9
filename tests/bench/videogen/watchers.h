#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::bench {

// One change as the watchers saw it: which generation, when the server
// observed it, and whether it was the terminal one.
struct Change {
  std::string id;
  int64_t observe_ns = 0;
  bool final = false;
  // Over the watchers that received it: how many, and the latency spread.
  int64_t receivers = 0;
  int64_t min_us = 0;
  int64_t max_us = 0;
};

// UPDATEs per stream kept as a Change (the rounds of the report and the
// bare replay); later ones count in the latency samples only.
inline constexpr size_t kChangesPerStream = 64;

// What a set of watchers saw.
struct WatchResult {
  int64_t streams = 0;
  int64_t channels = 0;
  int64_t attached = 0;     // received a first event
  int64_t late = 0;         // first event was not the QUEUED snapshot
  int64_t finished_ok = 0;  // ended with OK after a terminal event
  int64_t errors = 0;       // any other end (status or no terminal event)
  std::string first_error;  // one example, for the report
  int64_t updates = 0;      // UPDATE events over all watchers
  int64_t update_bytes = 0;
  int64_t min_updates = 0;  // fewest UPDATEs one watcher saw
  absl::Duration attach_time;
  std::vector<int64_t> latency_us;  // observe_time to receipt, UPDATEs only
  std::vector<Change> changes;      // distinct UPDATEs, by observe time
};

// Opens many WatchGeneration streams with the callback API, spread over
// separate connections (one channel per `streams_per_channel` streams).
// Methods are called from one thread; reactors update atomics from gRPC
// threads and their own per-stream fields, read only after they are done.
class WatcherPool {
 public:
  WatcherPool(std::string target, int streams_per_channel);
  ~WatcherPool();

  // Starts `n` watchers; watcher i follows ids[i % ids.size()].
  void Start(const std::vector<std::string>& ids, int n);
  // Waits until every watcher got its first event.
  bool WaitAttached(absl::Duration timeout);
  // Waits until every stream is done; cancels the rest on timeout.
  bool WaitDone(absl::Duration timeout);
  WatchResult Collect();

  class Watcher;

 private:
  const std::string target_;
  const int streams_per_channel_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::VideoGeneration::Stub>> stubs_;
  std::vector<std::unique_ptr<Watcher>> watchers_;
  std::atomic<int64_t> attached_{0};
  std::atomic<int64_t> done_{0};
  absl::Time start_;
  std::atomic<int64_t> all_attached_ns_{0};  // set by the last attach
};

// A channel of its own (own TCP connection) for load generators.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, int id);

}  // namespace videogen::bench
