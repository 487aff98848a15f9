#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace videogen::upstream {

// Which upstream call an answer belongs to; retry safety differs.
enum class CallKind { kSubmit, kPoll };

// True when an HTTP answer is worth another attempt: 408, 429 and 5xx.
// A Submit is not retried after 504 (a gateway timed out after forwarding:
// the job may exist upstream). Pure function.
bool IsRetryableHttp(CallKind kind, long http_status);

// Maps a non-2xx answer (after `attempts` tries) to a canonical status with
// a message a person can act on (design.md §1). `upstream_id` names the
// generation for polls. The message carries the upstream's own message and
// requestId, and never the API key when `secret` is given.
absl::Status HttpError(CallKind kind, long http_status, absl::string_view body,
                       int attempts, absl::string_view upstream_id,
                       absl::string_view secret);

// Replaces every occurrence of `secret` in `text` with "[redacted]".
std::string Redact(std::string text, absl::string_view secret);

// Redacts `secret` from a status message, keeping code and payloads.
absl::Status RedactStatus(const absl::Status& status, absl::string_view secret);

}  // namespace videogen::upstream
