#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

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
  // Who asked ("" with --auth=none). Not sent: waiting submits of different
  // tenants take turns under the rate limit.
  std::string tenant;
};

struct SubmitResult {
  std::string upstream_id;  // opaque, may contain ':' and '/'
  std::string status;       // raw status string, usually "queued"
  // From the `x-aimlapi-credits-used` / `x-aimlapi-usd-spent` headers; 0
  // when absent.
  int64_t credits_used = 0;
  double usd_spent = 0;
};

struct PollRequest {
  std::string upstream_id;
  std::string client_request_id;
  std::string traceparent;
  // The generation's tenant ("" with --auth=none). Not sent: waiting polls
  // of different tenants take turns under the rate limit.
  std::string tenant;
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

// One page of the usage log query (design.md §1, GET /v2/logs).
struct LogQuery {
  absl::Time start;
  absl::Time end;
  std::vector<std::string> models;  // repeated `model=`; empty = all
  int limit = 100;
  int offset = 0;
};

struct LogRow {
  std::string created;  // ISO 8601 as the upstream sent it
  std::string status;
  std::string model;
  std::string request_id;
  std::string inference_id;       // the async job's id
  std::string client_request_id;  // our X-Client-Request-Id; "" when null
  double cost_usd = 0;
  int64_t cost_credits = 0;
};

struct LogPage {
  std::vector<LogRow> rows;  // newest first
  int64_t total = 0;
  bool has_more = false;
};

// Lets the caller record "the POST is about to leave" durably before it
// does. Exactly one of Send or Abandon must be called, from any thread.
class SubmitGate {
 public:
  virtual ~SubmitGate() = default;
  // Sends the POST now. Its answer reaches the SubmitCallback.
  virtual void Send() = 0;
  // Gives the slot back without sending; the SubmitCallback then runs with
  // ABORTED.
  virtual void Abandon() = 0;
};

using SubmitReadyCallback = std::function<void(std::shared_ptr<SubmitGate>)>;
using SubmitCallback = std::function<void(absl::StatusOr<SubmitResult>)>;
using PollCallback = std::function<void(absl::StatusOr<Snapshot>)>;
using LogsCallback = std::function<void(absl::StatusOr<LogPage>)>;

// How a failed submit ended, from its status code (design.md §5):
//  - kNotCreated: the upstream refused it (INVALID_ARGUMENT 400,
//    UNAUTHENTICATED 401, FAILED_PRECONDITION 403, RESOURCE_EXHAUSTED 429
//    after retries), it provably never left (UNAVAILABLE: connect or DNS
//    failure), or it was abandoned before sending (ABORTED, CANCELLED before
//    the gate opened).
//  - kMaybeCreated: UNKNOWN. A 5xx, a timeout, a reset after sending, a 2xx
//    without an id, or a shutdown with the POST in flight: the job may exist
//    and be billed; it must never be sent again.
enum class SubmitOutcome { kNotCreated, kMaybeCreated };
SubmitOutcome ClassifySubmitError(const absl::Status& status);

// The AI/ML API as seen by the tracker. Asynchronous: calls return at once and
// the callbacks run later on the implementation's own thread, exactly once.
// Callbacks must be short and must not block. Errors are canonical
// absl::Status codes (design.md §1): INVALID_ARGUMENT (400), UNAUTHENTICATED
// (401), FAILED_PRECONDITION (403), NOT_FOUND (404 on poll),
// RESOURCE_EXHAUSTED (429 after retries), UNAVAILABLE (5xx/connection after
// retries; for a submit only "never left"), DEADLINE_EXCEEDED (poll
// timeouts), UNKNOWN (a submit that may have created a job).
// Messages never contain the API key.
// Thread-safe: every method may be called from any thread.
class Upstream {
 public:
  virtual ~Upstream() = default;
  // Two phases, so the caller can record the intent right before the POST
  // leaves and after the rate limiter and the in-flight cap let it go:
  // `ready` runs when the request holds its slot; the caller then opens the
  // gate (Send) or gives up (Abandon). `done` runs exactly once, also when
  // the call is cancelled before `ready` (CANCELLED). A submit is sent at
  // most once; it is retried only while provably not sent or refused with
  // 429 (design.md §5). Under a rate or concurrency limit, tenants (`tenant`
  // of the requests) take turns, and each tenant's waiting polls go before
  // its waiting submits.
  virtual void Submit(SubmitRequest request, SubmitReadyCallback ready,
                      SubmitCallback done) = 0;
  virtual void Poll(PollRequest request, PollCallback done) = 0;
  // One page of the usage log. 429 answers RESOURCE_EXHAUSTED, and is not
  // retried here: the reconciler owns its back-off.
  virtual void ListLogs(LogQuery query, LogsCallback done) = 0;
};

}  // namespace videogen::upstream
