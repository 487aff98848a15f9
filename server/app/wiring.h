#pragma once

// The pieces Server::Start assembles, one function each, so server.cc reads
// as the order of things. Private to server/app.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "server/api/event_stream.h"
#include "server/api/service.h"
#include "server/app/config.h"
#include "server/auth/authenticator.h"
#include "server/core/clock.h"
#include "server/core/events.h"
#include "server/core/tracker.h"
#include "server/http/media_source.h"
#include "server/media/media_store.h"
#include "server/media/mirror_pool.h"
#include "server/sim/sim_server.h"
#include "server/store/store.h"
#include "server/upstream/aimlapi_upstream.h"
#include "server/webhooks/dispatcher.h"

namespace videogen::app {

// --replica_id, or host name and pid for a shared store, or "local" for a
// single-process store (a restart takes its own leases back at once).
std::string ReplicaId(const Config& config);

// Who opens the store. kKeysCommand (`videogen-server keys`) also works on
// a SQLite data dir a running server holds: it takes no lock there and
// migrates nothing (store::SqliteOptions::Role::kKeyAdmin).
enum class StoreUser { kServer, kKeysCommand };

absl::StatusOr<std::unique_ptr<store::Store>> OpenStore(
    const Config& config, StoreUser user = StoreUser::kServer);

struct Upstreams {
  std::unique_ptr<sim::SimServer> sim;
  std::unique_ptr<upstream::AimlApiUpstream> client;
};
// The AI/ML API client, or the simulator when asked for or when no key is
// set (with a loud log line).
absl::StatusOr<Upstreams> StartUpstream(const Config& config);

core::TrackerOptions TrackerOptionsFor(const Config& config,
                                       const std::string& replica);

absl::StatusOr<std::unique_ptr<media::MediaStore>> OpenMediaStore(
    const Config& config);

absl::StatusOr<std::unique_ptr<webhooks::Dispatcher>> StartDispatcher(
    const Config& config, const std::string& replica, store::Store* store);

// --auth=keys or the loud --auth=none.
std::unique_ptr<auth::Authenticator> NewAuthenticator(const Config& config,
                                                      store::Store* store,
                                                      core::Clock* clock);

// Builds and starts the gRPC server: TLS (and mTLS) with clear errors,
// keepalive, message and stream limits, health, reflection when asked.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpc(
    const Config& config, api::VideoGenerationService* service, bool metrics_on,
    int* port);

// Gauges read at scrape time.
void RegisterCollectors(core::Tracker* tracker, api::StreamRegistry* registry,
                        store::Store* store, media::MirrorStats* mirror_stats,
                        media::MediaStore* media_store);

// One log line per generation change (the firehose's own subscriber).
class GenerationLogSink final : public core::EventSink {
 public:
  void OnEvent(core::EventPtr event) override;
};

// The HTTP listener's view of the media store (design.md §11). A local
// object is served from its own file. An S3 object is fetched whole into a
// read-through cache on local disk first, because the HTTP server serves
// files (Range, sendfile-like writes) and S3 is reached through the store's
// signed GETs: `<staging_dir>/http-cache`, emptied on first use, bounded by
// `cache_bytes` (least recently used copies go first), each copy checked
// against the object's size and SHA-256. Concurrent first requests for one
// object share one fetch. Thread-safe; Open blocks on disk and network (it
// runs on the HTTP server's worker threads).
class MediaSourceAdapter final : public http::MediaSource {
 public:
  explicit MediaSourceAdapter(media::MediaStore* store,
                              int64_t cache_bytes = int64_t{1} << 30);
  absl::StatusOr<http::MediaFile> Open(std::string_view tenant_scope,
                                       std::string_view generation_id) override;

  // Drops the cached copy of `id`: call it after the store removed the
  // object (retention), so the bytes do not outlive the record on disk.
  // Open also drops it when the store answers NOT_FOUND.
  void Forget(std::string_view id);

 private:
  // One fetch in progress; later callers for the same copy wait on it.
  struct Fetching {
    absl::Notification done;
    absl::Status status;  // written before `done` is notified
  };
  struct Cached {
    int64_t size = 0;
    uint64_t last_used = 0;
  };

  absl::StatusOr<http::MediaFile> OpenCached(std::string_view id,
                                             const media::MediaObject& object);
  // Creates the cache directory and deletes what an earlier process left.
  absl::Status PrepareCache();
  // Reads the object from the store into `path` (via a temp file, renamed).
  absl::Status Fetch(std::string_view id, const media::MediaObject& object,
                     const std::string& path);
  // Least recently used copies past the byte bound, never `keep`.
  std::vector<std::string> EvictLocked(const std::string& keep)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  media::MediaStore* const store_;  // may be null (--mirror=none)
  const int64_t cache_bytes_;
  const std::string cache_dir_;
  absl::once_flag cache_once_;
  absl::Status cache_status_;  // written once under cache_once_
  std::atomic<uint64_t> temp_counter_{0};

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Cached> cached_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Fetching>> fetching_
      ABSL_GUARDED_BY(mu_);
  int64_t cached_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace videogen::app
