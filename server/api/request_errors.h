#pragma once

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_interceptor.h"

namespace videogen::api {

// Parses a streaming method's raw request into `out`. INVALID_ARGUMENT with
// a message a person can act on when it does not parse (usually invalid
// UTF-8 in a string field, which proto3 refuses).
absl::Status ParseRequest(const grpc::ByteBuffer& wire,
                          google::protobuf::Message* out);

// gRPC's callback API drops the reason a request failed to parse and answers
// UNIMPLEMENTED with an empty message, which tells a client nothing. On the
// unary VideoGeneration methods this interceptor turns that answer into
// INVALID_ARGUMENT with ParseRequest's message. The streaming methods are
// raw and parse their own requests instead: an interceptor costs every
// message written on its call one more round trip through gRPC's completion
// queue, and the fan-out writes millions. It must come before the metrics
// interceptor so the metrics count the rewritten code. Stateless.
class BadRequestInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

// Routes the protobuf library's own log lines (e.g. "String field ...
// contains invalid UTF-8") into the JSON log instead of plain text on
// stderr. Call once at startup, before any thread serves requests: protobuf's
// handler switch is not thread-safe.
void RouteProtobufLogs();

}  // namespace videogen::api
