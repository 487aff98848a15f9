#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace videogen::auth {

// The `authorization` metadata of a call ("" when absent; the first value
// when a client sent several). Thread-safe (reads the context only).
std::string AuthorizationOf(const grpc::CallbackServerContext& context);

// The quota limits design.md §7 names, as they appear in messages.
inline constexpr std::string_view kMaxConcurrent = "max_concurrent";
inline constexpr std::string_view kCreatesPerMinute = "creates_per_minute";
inline constexpr std::string_view kVideoSecondsBudget = "video_seconds_budget";

// Which of the limits above a RESOURCE_EXHAUSTED message names ("" when
// none), for callers that only have the store's status.
std::string_view LimitNamedIn(std::string_view message);

// Turns a store's RESOURCE_EXHAUSTED into the gRPC status clients see:
// RESOURCE_EXHAUSTED with the store's message (plus the retry time, when
// known) and, in the `grpc-status-details-bin` trailer, a google.rpc.Status
// whose details hold
//   - google.rpc.QuotaFailure: violations[0] = {subject, the message},,
//   - google.rpc.ErrorInfo: reason "QUOTA_EXCEEDED", domain "videogen",
//     metadata {"limit": limit_name},
//   - google.rpc.RetryInfo: retry_delay = retry_after, only when
//     retry_after is positive and finite (max_concurrent frees up when a
//     generation ends, which nobody can predict).
// `subject` names who hit the limit, e.g. "tenant:acme". Built without the
// google.rpc protos (see server/auth/CMakeLists.txt), the details are
// absent and only the message carries these facts.
grpc::Status QuotaExceededStatus(const absl::Status& resource_exhausted,
                                 std::string subject, std::string limit_name,
                                 absl::Duration retry_after);

}  // namespace videogen::auth
