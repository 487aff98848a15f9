#include "server/http/status_http.h"

#include "nlohmann/json.hpp"

namespace videogen::http {

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    default:
      return 500;
  }
}

std::string GrpcCodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);
}

std::string ErrorJson(int http_status, absl::StatusCode code,
                      std::string_view message) {
  nlohmann::json body;
  body["error"]["code"] = http_status;
  body["error"]["status"] = GrpcCodeName(code);
  // Messages come from validation and the gateway; they never hold keys.
  // Invalid UTF-8 is replaced rather than failing the whole reply.
  body["error"]["message"] = std::string(message);
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ErrorJson(const absl::Status& status) {
  return ErrorJson(
      HttpStatusFor(status.code()), status.code(),
      std::string_view(status.message().data(), status.message().size()));
}

}  // namespace videogen::http
