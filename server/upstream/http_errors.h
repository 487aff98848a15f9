#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace videogen::upstream {

// Which upstream call an answer belongs to; retry safety differs.
enum class CallKind { kSubmit, kPoll, kLogs };

// The end of every message about a submit that may have created a job
// (absl::StatusCode::kUnknown, design.md §5).
inline constexpr char kMayHaveCreated[] =
    "the upstream may have created the job; it will be looked up in the "
    "usage log, never resubmitted";

// True when an HTTP answer is worth another attempt. Submits: only 429,
// which created nothing (design.md §5); anything else may have made a job.
// Polls: 408, 429 and 5xx. Usage-log queries: 408 and 5xx; their 429 goes
// back to the caller, which owns that back-off. Pure function.
bool IsRetryableHttp(CallKind kind, long http_status);

// Maps a non-2xx answer (after `attempts` tries) to a canonical status with
// a message a person can act on (design.md §1). `upstream_id` names the
// generation for polls. The message carries the upstream's own message and
// requestId, and never the API key when `secret` is given. For a submit,
// only refusals keep a plain code (400/413/422 INVALID_ARGUMENT, 401
// UNAUTHENTICATED, 402/403/404/other 4xx FAILED_PRECONDITION, 429
// RESOURCE_EXHAUSTED); 408, 1xx, 3xx and 5xx are UNKNOWN, since the job may
// exist.
absl::Status HttpError(CallKind kind, long http_status, absl::string_view body,
                       int attempts, absl::string_view upstream_id,
                       absl::string_view secret);

// A RESOURCE_EXHAUSTED that came from a 429 with a Retry-After header
// carries the delay in the payload under this type URL, as the decimal
// number of whole seconds ("7"). Absent when the upstream sent no
// Retry-After (it promises none, design.md §1): back off on your own.
inline constexpr char kRetryAfterPayload[] = "videogen/retry-after";

// Adds the payload above to `status` (a copy).
absl::Status WithRetryAfter(absl::Status status, absl::Duration delay);

// The delay in the payload above, if any.
std::optional<absl::Duration> RetryAfterOf(const absl::Status& status);

// Replaces every occurrence of `secret` in `text` with "[redacted]".
std::string Redact(std::string text, absl::string_view secret);

// Redacts `secret` from a status message, keeping code and payloads.
absl::Status RedactStatus(const absl::Status& status, absl::string_view secret);

}  // namespace videogen::upstream
