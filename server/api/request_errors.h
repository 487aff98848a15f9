#pragma once

#include "grpcpp/support/server_interceptor.h"

namespace videogen::api {

// gRPC's callback API drops the reason a request failed to parse and answers
// UNIMPLEMENTED with an empty message, which tells a client nothing; the
// usual cause is invalid UTF-8 in a string field (proto3 refuses it). On the
// VideoGeneration methods this interceptor turns that answer into
// INVALID_ARGUMENT with a message. It must come before the metrics
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
