#pragma once

// The pieces Server::Start assembles, one function each, so server.cc reads
// as the order of things. Private to server/app.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
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

absl::StatusOr<std::unique_ptr<store::Store>> OpenStore(const Config& config);

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

// The HTTP listener's view of the local media store. Thread-safe.
class MediaSourceAdapter final : public http::MediaSource {
 public:
  explicit MediaSourceAdapter(media::MediaStore* store) : store_(store) {}
  absl::StatusOr<http::MediaFile> Open(std::string_view tenant_scope,
                                       std::string_view generation_id) override;

 private:
  media::MediaStore* const store_;  // may be null (--mirror=none)
};

}  // namespace videogen::app
