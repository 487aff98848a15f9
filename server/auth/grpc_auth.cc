#include "server/auth/grpc_auth.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/auth/string_view.h"

#if VIDEOGEN_HAVE_RPC_DETAILS
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#endif

namespace videogen::auth {

std::string AuthorizationOf(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

std::string_view LimitNamedIn(std::string_view message) {
  for (std::string_view name :
       {kMaxConcurrent, kCreatesPerMinute, kVideoSecondsBudget}) {
    if (absl::StrContains(Av(message), Av(name))) return name;
  }
  return "";
}

grpc::Status QuotaExceededStatus(const absl::Status& resource_exhausted,
                                 std::string subject, std::string limit_name,
                                 absl::Duration retry_after) {
  const bool retry_known = retry_after > absl::ZeroDuration() &&
                           retry_after < absl::InfiniteDuration();
  // Whole seconds, rounded up, so a client that waits that long is not
  // refused again for a rounding error.
  const absl::Duration retry = absl::Ceil(retry_after, absl::Seconds(1));
  // The message alone must say which limit and when it resets: not every
  // client reads details.
  std::string message(resource_exhausted.message());
  if (message.empty()) message = "exceeded";
  if (!absl::StrContains(message, limit_name)) {
    message = absl::StrCat(limit_name, ": ", message);
  }
  const std::string description = message;
  if (retry_known) {
    absl::StrAppend(&message, " (retry in ", absl::FormatDuration(retry), ")");
  }
#if VIDEOGEN_HAVE_RPC_DETAILS
  google::rpc::Status details;
  details.set_code(grpc::StatusCode::RESOURCE_EXHAUSTED);
  details.set_message(message);

  google::rpc::QuotaFailure quota;
  google::rpc::QuotaFailure::Violation* violation = quota.add_violations();
  violation->set_subject(std::move(subject));
  violation->set_description(description);
  details.add_details()->PackFrom(quota);

  google::rpc::ErrorInfo info;
  info.set_reason("QUOTA_EXCEEDED");
  info.set_domain("videogen");
  (*info.mutable_metadata())["limit"] = std::move(limit_name);
  details.add_details()->PackFrom(info);

  if (retry_known) {
    google::rpc::RetryInfo retry_info;
    retry_info.mutable_retry_delay()->set_seconds(absl::ToInt64Seconds(retry));
    details.add_details()->PackFrom(retry_info);
  }
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, message,
                      details.SerializeAsString());
#else
  (void)subject;
  (void)description;
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, message);
#endif
}

}  // namespace videogen::auth
