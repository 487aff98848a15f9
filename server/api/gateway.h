#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/auth/principal.h"
#include "server/core/tracker.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::api {

// The one code path behind both edges (gRPC and HTTP/JSON): validation,
// tenant scoping, quotas and the tracker. The edges only authenticate,
// translate their wire format, and map absl::Status to their own codes
// (status_map.h). Thread-safe; callbacks may run on any thread.
class Gateway {
 public:
  virtual ~Gateway() = default;

  // Validates, defaults and creates (idempotent on request_id per tenant).
  // `done` gets the generation (QUEUED) or the error.
  virtual void Create(const auth::Principal& who, v1::GenerateRequest request,
                      const core::RequestContext& ctx,
                      core::CreateCallback done) = 0;

  // NOT_FOUND also for another tenant's generation (no existence leak).
  virtual absl::StatusOr<core::GenerationPtr> Get(const auth::Principal& who,
                                                  const std::string& id) = 0;
  virtual absl::StatusOr<v1::ListGenerationsResponse> List(
      const auth::Principal& who,
      const v1::ListGenerationsRequest& request) = 0;
  virtual absl::StatusOr<core::GenerationPtr> Cancel(const auth::Principal& who,
                                                     const std::string& id) = 0;

  // Streams one generation to `sink` from `after_revision` on: a SNAPSHOT
  // when the generation is newer, then UPDATEs. `finished` is true when it
  // is terminal already (the SNAPSHOT, if due, was delivered).
  virtual absl::StatusOr<core::Subscription> Watch(
      const auth::Principal& who, const std::string& id, int64_t after_revision,
      std::shared_ptr<core::EventSink> sink) = 0;
  // Every change of the caller's generations that match the filter.
  virtual absl::StatusOr<core::Subscription> WatchAll(
      const auth::Principal& who, const v1::WatchGenerationsRequest& request,
      std::shared_ptr<core::EventSink> sink) = 0;
  virtual void Unwatch(uint64_t subscription_id) = 0;
};

}  // namespace videogen::api
