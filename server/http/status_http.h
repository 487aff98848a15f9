#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace videogen::http {

// The HTTP status that matches a canonical (gRPC) code, as google.rpc.Code
// documents it and AIP-193 uses it: INVALID_ARGUMENT 400, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, CANCELLED 499, UNAVAILABLE 503, ...
int HttpStatusFor(absl::StatusCode code);

// The canonical name of a code: "INVALID_ARGUMENT".
std::string GrpcCodeName(absl::StatusCode code);

// AIP-193's JSON error body:
// {"error":{"code":404,"status":"NOT_FOUND","message":"..."}}.
// `http_status` is the response's status (it may differ from
// HttpStatusFor(code) for transport errors such as 405 or 413).
std::string ErrorJson(int http_status, absl::StatusCode code,
                      std::string_view message);
// The same with the status mapped from `status`.
std::string ErrorJson(const absl::Status& status);

}  // namespace videogen::http
