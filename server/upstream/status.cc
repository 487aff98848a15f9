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

}  // namespace videogen::upstream
