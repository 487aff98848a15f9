#pragma once

#include <string>

#include "server/api/event_stream.h"
#include "server/api/gateway.h"
#include "server/auth/authenticator.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::api {

// The VideoGeneration gRPC service on the callback API: authenticates the
// caller, hands the request to the Gateway (validation, tenants, quotas,
// the tracker) and maps absl::Status to grpc::Status. No thread per stream:
// each stream is a StreamReactor. Methods run on gRPC callback threads; the
// service itself holds no mutable state.
class VideoGenerationService final
    : public v1::VideoGeneration::CallbackService {
 public:
  VideoGenerationService(Gateway* gateway, auth::Authenticator* auth,
                         StreamRegistry* registry);

  grpc::ServerWriteReactor<v1::GenerationEvent>* Generate(
      grpc::CallbackServerContext* context,
      const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* CreateGeneration(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
      v1::Generation* response) override;
  grpc::ServerWriteReactor<v1::GenerationEvent>* WatchGeneration(
      grpc::CallbackServerContext* context,
      const v1::WatchGenerationRequest* request) override;
  grpc::ServerWriteReactor<v1::GenerationEvent>* WatchGenerations(
      grpc::CallbackServerContext* context,
      const v1::WatchGenerationsRequest* request) override;
  grpc::ServerUnaryReactor* GetGeneration(
      grpc::CallbackServerContext* context,
      const v1::GetGenerationRequest* request,
      v1::Generation* response) override;
  grpc::ServerUnaryReactor* ListGenerations(
      grpc::CallbackServerContext* context,
      const v1::ListGenerationsRequest* request,
      v1::ListGenerationsResponse* response) override;
  grpc::ServerUnaryReactor* CancelGeneration(
      grpc::CallbackServerContext* context,
      const v1::CancelGenerationRequest* request,
      v1::Generation* response) override;

 private:
  absl::StatusOr<auth::Principal> Who(grpc::CallbackServerContext* context);
  // A stream reactor for `who`; finished at once with `who`'s error.
  StreamReactor* NewStream(const absl::StatusOr<auth::Principal>& who,
                           bool ends_on_terminal);

  Gateway* const gateway_;
  auth::Authenticator* const auth_;
  StreamRegistry* const registry_;
};

// The W3C trace context of an incoming call, or a fresh one.
std::string TraceParentOf(const grpc::CallbackServerContext& context);

}  // namespace videogen::api
