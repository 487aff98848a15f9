#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace videogen::api {

// The one place where absl::Status becomes grpc::Status: the codes are the
// same canonical space, the message passes through.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace videogen::api
