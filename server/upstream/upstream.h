#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace videogen::upstream {

// The upstream job's state, mapped tolerantly from its status string
// (design.md §1). kUnknown means "keep the last known state".
enum class TaskState { kUnknown, kQueued, kGenerating, kCompleted, kFailed };

// queued|waiting -> kQueued, active|generating -> kGenerating,
// completed|succeeded -> kCompleted, error|failed -> kFailed, else kUnknown.
// Case-insensitive. Implemented in status.cc.
TaskState MapStatus(std::string_view status);

struct SubmitRequest {
  // videogen's own generation id; sent as X-Client-Request-Id.
  std::string client_request_id;
  std::string model;
  std::string prompt;
  std::string negative_prompt;
  std::string aspect_ratio;
  int duration_seconds = 5;
  std::optional<double> cfg_scale;
  std::string image_url;
  // W3C trace context to forward as `traceparent`; empty for none.
  std::string traceparent;
};

struct SubmitResult {
  std::string upstream_id;  // opaque, may contain ':' and '/'
  std::string status;       // raw status string, usually "queued"
};

struct PollRequest {
  std::string upstream_id;
  std::string client_request_id;
  std::string traceparent;
};

struct VideoInfo {
  std::string url;
  std::string content_type;
  std::string file_name;
  int64_t file_size_bytes = 0;
  double duration_seconds = 0;
};

struct TaskError {
  std::string name;
  std::string message;
};

// One parsed poll answer.
struct Snapshot {
  std::string upstream_id;
  TaskState state = TaskState::kUnknown;
  std::string raw_status;
  std::optional<VideoInfo> video;
  int64_t tokens_used = 0;
  int64_t credits_used = 0;
  std::optional<TaskError> error;
};

using SubmitCallback = std::function<void(absl::StatusOr<SubmitResult>)>;
using PollCallback = std::function<void(absl::StatusOr<Snapshot>)>;

// The AI/ML API as seen by the tracker. Asynchronous: calls return at once and
// the callback runs later on the implementation's own thread, exactly once.
// Callbacks must be short and must not block. Errors are canonical
// absl::Status codes (design.md §1): INVALID_ARGUMENT (400), UNAUTHENTICATED
// (401), FAILED_PRECONDITION (403), NOT_FOUND (404 on poll),
// RESOURCE_EXHAUSTED (429 after retries), UNAVAILABLE (5xx/connection after
// retries), DEADLINE_EXCEEDED (timeouts). Messages never contain the API key.
// Thread-safe: Submit and Poll may be called from any thread.
class Upstream {
 public:
  virtual ~Upstream() = default;
  virtual void Submit(SubmitRequest request, SubmitCallback done) = 0;
  virtual void Poll(PollRequest request, PollCallback done) = 0;
};

}  // namespace videogen::upstream
