#pragma once

// Many WatchGeneration streams that resume the way a client should: after
// any break they open a new stream with after_revision = the last revision
// seen, until a terminal event arrives. Each watcher records every event it
// got, so a test can check "every revision once, in order".

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::cluster {

// What one watcher saw, over all its streams.
struct WatchRecord {
  std::string id;
  std::vector<int64_t> revisions;   // SNAPSHOT/UPDATE events, arrival order
  int streams = 0;                  // streams opened (1 = never resumed)
  std::vector<std::string> breaks;  // how each non-final stream ended
  bool finished = false;            // a terminal event, then the stream ended
  v1::Generation::State final_state = v1::Generation::STATE_UNSPECIFIED;
  std::vector<int64_t> latency_us;  // UPDATE observe_time -> receipt
};

// Checks one record: revisions strictly increasing by one from `first` to
// the terminal one. "" when fine, else what is wrong.
std::string CheckRevisions(const WatchRecord& r, int64_t first);

// Thread-safe: Add/Wait/Records from the test thread; gRPC threads drive
// the streams and a resume thread reopens broken ones after `backoff`.
class WatcherSet {
 public:
  WatcherSet(std::vector<std::shared_ptr<grpc::Channel>> channels,
             std::string api_key,
             absl::Duration backoff = absl::Milliseconds(100),
             int max_streams_per_watcher = 50);
  ~WatcherSet();  // cancels what still runs
  WatcherSet(const WatcherSet&) = delete;
  WatcherSet& operator=(const WatcherSet&) = delete;

  void Add(const std::string& generation_id);
  // Every watcher got its first event (or gave up).
  bool WaitAttached(absl::Duration timeout);
  // Every watcher finished (or gave up).
  bool WaitFinished(absl::Duration timeout);
  int64_t finished() const { return finished_.load(); }
  int64_t resumes() const { return resumes_.load(); }
  std::vector<WatchRecord> Records();

  class Watcher;
  class Stream;

 private:
  friend class Watcher;
  friend class Stream;
  void OpenStream(Watcher* w, int64_t after_revision, size_t stub);
  void StreamClosed(Stream* s);
  void ResumeLoop();
  void ScheduleResume(Watcher* w);

  const std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::VideoGeneration::Stub>> stubs_;
  const std::string api_key_;
  const absl::Duration backoff_;
  const int max_streams_;

  std::vector<std::unique_ptr<Watcher>> watchers_;  // test thread only
  std::atomic<int64_t> attached_{0};
  std::atomic<int64_t> finished_{0};  // finished or gave up
  std::atomic<int64_t> resumes_{0};

  absl::Mutex mu_;
  std::deque<std::pair<absl::Time, Watcher*>> resume_ ABSL_GUARDED_BY(mu_);
  std::set<Stream*> live_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread resumer_;
};

}  // namespace videogen::cluster
