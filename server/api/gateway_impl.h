#pragma once

#include <functional>
#include <string>

#include "server/api/gateway.h"
#include "server/api/validation.h"
#include "server/core/fanout_hub.h"
#include "server/core/tracker.h"
#include "server/store/store.h"

namespace videogen::api {

struct GatewayOptions {
  // Checks a webhook URL at the edge (scheme, and the addresses it resolves
  // to: design.md §8). Empty = webhooks are refused.
  std::function<absl::Status(const std::string& url)> check_webhook_url;
};

// The Gateway over the tracker (creates, cancels), the fan-out hub (watches)
// and the store (reads). Holds no mutable state of its own: thread-safe.
class GatewayImpl final : public Gateway {
 public:
  GatewayImpl(core::Tracker* tracker, core::FanoutHub* hub, store::Store* store,
              Validator validator, GatewayOptions options);

  void Create(const auth::Principal& who, v1::GenerateRequest request,
              const core::RequestContext& ctx,
              core::CreateCallback done) override;
  absl::StatusOr<core::GenerationPtr> Get(const auth::Principal& who,
                                          const std::string& id) override;
  absl::StatusOr<v1::ListGenerationsResponse> List(
      const auth::Principal& who,
      const v1::ListGenerationsRequest& request) override;
  absl::StatusOr<core::GenerationPtr> Cancel(const auth::Principal& who,
                                             const std::string& id) override;
  absl::StatusOr<core::Subscription> Watch(
      const auth::Principal& who, const std::string& id, int64_t after_revision,
      std::shared_ptr<core::EventSink> sink) override;
  absl::StatusOr<core::Subscription> WatchAll(
      const auth::Principal& who, const v1::WatchGenerationsRequest& request,
      std::shared_ptr<core::EventSink> sink) override;
  void Unwatch(uint64_t subscription_id) override;

 private:
  core::Tracker* const tracker_;
  core::FanoutHub* const hub_;
  store::Store* const store_;
  const Validator validator_;
  const GatewayOptions options_;
};

}  // namespace videogen::api
