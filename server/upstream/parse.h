#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/upstream/upstream.h"

namespace videogen::upstream {

// Parsers for the AI/ML API's JSON answers (design.md §1). Pure functions,
// safe from any thread. They tolerate unknown fields, numbers sent as
// strings and nulls; a body that is not a JSON object is UNAVAILABLE (the
// upstream is not answering sensibly right now), never a crash.

// A poll answer: state, raw status, video, usage and task error.
absl::StatusOr<Snapshot> ParseSnapshot(absl::string_view body);

// A create answer: {"id": ..., "status": ...}. A 2xx without an id is
// UNKNOWN: the job may or may not exist upstream.
absl::StatusOr<SubmitResult> ParseSubmitResult(absl::string_view body);

// A usage-log page (GET /v2/logs, design.md §1):
// {"data":[{created, status, model, cost:{usd,credits}, request_id,
// inference_id, client_request_id, ...}], "pagination":{limit, offset,
// total, has_more}}. Tolerates null or missing row fields (a null
// client_request_id becomes ""), numbers as strings and rows that are not
// objects (skipped). A body without a `data` array is UNAVAILABLE: an empty
// page would read as "not found" and fail a job that may exist. Without
// `pagination`, total is the row count and has_more is true when the page
// is full (`requested_limit` rows), so the caller looks at the next page.
absl::StatusOr<LogPage> ParseLogPage(absl::string_view body,
                                     int requested_limit);

// The body of an HTTP error: {message, path, requestId, statusCode,
// timestamp}. Never fails; absent fields stay empty. A body that is not JSON
// becomes a short printable excerpt in `message`.
struct ErrorBody {
  std::string message;
  std::string path;
  std::string request_id;
  int status_code = 0;
};
ErrorBody ParseErrorBody(absl::string_view body);

}  // namespace videogen::upstream
