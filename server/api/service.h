#pragma once

#include <string>

#include "server/api/event_stream.h"
#include "server/api/gateway.h"
#include "server/auth/authenticator.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::api {

// The generated callback service with the three streaming methods raw
// (bytes in, bytes out): their events are serialized once per change for
// every watcher (EventStream), and they parse their own requests, so no
// interceptor has to sit on their calls (see BadRequestInterceptorFactory).
using StreamsRawService = v1::VideoGeneration::WithRawCallbackMethod_Generate<
    v1::VideoGeneration::WithRawCallbackMethod_WatchGeneration<
        v1::VideoGeneration::WithRawCallbackMethod_WatchGenerations<
            v1::VideoGeneration::CallbackService>>>;

// The VideoGeneration gRPC service on the callback API: authenticates the
// caller, hands the request to the Gateway (validation, tenants, quotas,
// the tracker) and maps absl::Status to grpc::Status. No thread per stream:
// each stream is a StreamReactor. Methods run on gRPC callback threads; the
// service itself holds no mutable state.
class VideoGenerationService final : public StreamsRawService {
 public:
  VideoGenerationService(Gateway* gateway, auth::Authenticator* auth,
                         StreamRegistry* registry);

  // Streaming methods: the request is a serialized GenerateRequest,
  // WatchGenerationRequest or WatchGenerationsRequest; each message written
  // is a serialized GenerationEvent.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* CreateGeneration(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
      v1::Generation* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchGeneration(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchGenerations(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
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
  // A stream reactor for `who` on `method`, whose request parsed into
  // `parsed`; finished at once with that error or `who`'s.
  StreamReactor* NewStream(const absl::StatusOr<auth::Principal>& who,
                           const absl::Status& parsed, bool ends_on_terminal,
                           const char* method);

  Gateway* const gateway_;
  auth::Authenticator* const auth_;
  StreamRegistry* const registry_;
};

// The W3C trace context of an incoming call, or a fresh one.
std::string TraceParentOf(const grpc::CallbackServerContext& context);

}  // namespace videogen::api
