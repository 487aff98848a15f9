#include "absl/status/status.h"

#include <string>
#include <string_view>

#include "absl/strings/ascii.h"
#include "server/upstream/upstream.h"

namespace videogen::upstream {

TaskState MapStatus(std::string_view status) {
  const std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(
      absl::string_view(status.data(), status.size())));
  if (s == "queued" || s == "waiting" || s == "pending" || s == "created") {
    return TaskState::kQueued;
  }
  if (s == "active" || s == "generating" || s == "processing" ||
      s == "running" || s == "in_progress") {
    return TaskState::kGenerating;
  }
  if (s == "completed" || s == "succeeded" || s == "success") {
    return TaskState::kCompleted;
  }
  if (s == "error" || s == "failed" || s == "failure") {
    return TaskState::kFailed;
  }
  return TaskState::kUnknown;
}

SubmitOutcome ClassifySubmitError(const absl::Status& status) {
  // Only the codes the submit path uses for "nothing was created" count as
  // such. Anything else (UNKNOWN, and also OK or a code this layer never
  // returns for a submit) errs on the side that never resubmits.
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return SubmitOutcome::kNotCreated;
    default:
      return SubmitOutcome::kMaybeCreated;
  }
}

}  // namespace videogen::upstream
