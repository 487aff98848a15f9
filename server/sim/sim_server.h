#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace videogen::sim {

// Which request family a fault applies to.
// kDownload is GET /files/<uuid>.mp4 (the video URL); kLogs is GET /v2/logs.
enum class Endpoint { kCreate, kPoll, kDownload, kLogs };

// Kinds of injected fault (design.md §1 quirks and network failures).
enum class FaultKind {
  k429,  // 429 with a Retry-After header
  k429NoRetryAfter,
  k500,
  k502,
  k503,
  k504,
  kSlow,           // answers after SimOptions::slow_delay
  kReset,          // closes the connection in the middle of the response
  kMalformedJson,  // 200 with a body that is not JSON
  kOddStatus,      // poll answers `waiting`/`active`/`succeeded` variants
  // Create only: the job IS made (and billed, and logged), then the answer
  // goes wrong, so the client cannot know whether its POST took effect.
  kCreateThen500,    // 500 with the JSON error body
  kCreateThenReset,  // the connection is dropped with no answer at all
  kCreateThenSlow,   // the normal answer, but only after slow_delay
  kCreate2xxNoId,    // 200/201 whose body has no id
};

// When a fault fires: with probability `rate`, or on every `every_nth`
// request to the endpoint (both may be set; either triggers it).
struct FaultRule {
  Endpoint endpoint = Endpoint::kPoll;
  FaultKind kind = FaultKind::k500;
  double rate = 0;
  int every_nth = 0;
};

struct SimOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 picks a free port
  std::string api_key = "sim-key";
  absl::Duration queued_for = absl::Seconds(1);      // queued -> generating
  absl::Duration generating_for = absl::Seconds(2);  // generating -> done
  // Every job stays queued until Release() (POST /sim/release); from then on
  // queued_for and generating_for count from the release, or from the job's
  // creation if that is later. Lets a benchmark attach all its watchers,
  // however long that takes, before the first change.
  bool hold_queued = false;
  double error_rate = 0;  // share of jobs that end in `error`
  absl::Duration slow_delay = absl::Seconds(3);
  int retry_after_seconds = 1;  // value sent with FaultKind::k429
  std::vector<FaultRule> faults;
  // Seeds which jobs fail and the fault draws. Ids are random per run.
  uint64_t seed = 1;
  // Added by the sim: generating_for is per 5 s of clip (10 s clips take
  // twice as long), as upstream. Set by --realistic.
  bool scale_with_duration = false;
  // Idle keep-alive connections are closed after this.
  absl::Duration keep_alive_timeout = absl::Seconds(5);
  // The pool grows on demand up to this many threads: each open keep-alive
  // connection holds one thread in cpp-httplib.
  int max_threads = 2048;

  // Cost of a job, per second of clip: sent as x-aimlapi-credits-used /
  // x-aimlapi-usd-spent on the create answer (poll answers send 0) and shown
  // in the usage log (0 for failed jobs, which are not billed).
  int64_t credits_per_second = 588000;
  double usd_per_second = 0.28;
  // Share of failed jobs whose task error has the validation shape
  // {"detail":[{"loc","msg","type"}]} instead of {"name","message"}.
  double detail_error_share = 0;
  // The new path's completed shape reports meta.usage.credits_used instead
  // of tokens_used (newer upstream answers).
  bool usage_as_credits = false;

  // GET /v2/logs: a row becomes visible this long after its job was made
  // (the upstream's analytics pipeline lags).
  absl::Duration logs_lag = absl::ZeroDuration();
  // At most logs_rate_limit answered log requests per rolling
  // logs_rate_window; more answer 429 (and do not count).
  int logs_rate_limit = 200;
  absl::Duration logs_rate_window = absl::Seconds(60);
};

// "429", "429_no_retry_after", "500", ..., "slow", "reset", "malformed_json",
// "odd_status", "create_then_500", "create_then_reset", "create_then_slow",
// "create_2xx_no_id": the keys of SimStats::faults_by_kind and of
// ParseFaultRule.
std::string FaultKindName(FaultKind kind);

// Parses "ENDPOINT:KIND[:rate=R][:every=N]", e.g. "poll:500:rate=0.1",
// "create:429:every=3" or "create:create_then_500:every=1". ENDPOINT is
// create|poll|download|logs; KIND is a FaultKindName or one of 429nr (429
// without Retry-After), malformed, odd. The create_* kinds need ENDPOINT
// create.
absl::StatusOr<FaultRule> ParseFaultRule(absl::string_view spec);

// One row of the usage log (GET /v2/logs, design.md §1).
struct UsageRow {
  absl::Time created;
  // succeeded | failed; a job that will end in `error` is logged failed
  // from the start (its outcome is drawn when it is made).
  std::string status = "succeeded";
  std::string origin = "api";
  std::string model;
  double cost_usd = 0;
  int64_t cost_credits = 0;
  int64_t tokens_input = 0;
  int64_t tokens_output = 0;
  int64_t tokens_total = 0;
  std::string request_id;    // the create request's own id
  std::string inference_id;  // the job id the create returned (or would have)
  // The X-Client-Request-Id sent with the create; nullopt answers JSON null.
  std::optional<std::string> client_request_id;
};

// Counters, readable in-process and as JSON at GET /sim/stats.
struct SimStats {
  std::map<std::string, int64_t> requests_by_path;  // "POST /v2/..." -> n
  std::map<std::string, int64_t> polls_by_id;       // upstream id -> n
  std::map<std::string, int64_t> faults_by_kind;    // "500" -> n
  int64_t submits = 0;  // accepted creates (jobs made)
  // Last X-Client-Request-Id and traceparent seen, per upstream id.
  std::map<std::string, std::string> client_request_id_by_id;
  std::map<std::string, std::string> traceparent_by_id;
  // GET /v2/logs requests (all answers) and those refused with 429 by the
  // rate limit (not by a fault).
  int64_t logs_requests = 0;
  int64_t logs_rate_limited = 0;
};

// A simulated AI/ML API speaking real HTTP/1.1 (cpp-httplib). Quirks, as
// upstream or worse:
// - create answers 201 on the legacy path and 200 on the new one;
// - error bodies are {message,path,requestId,statusCode,timestamp}, with
//   statusCode a string for 401/429/503 and a number otherwise; 502 and 504
//   come as HTML pages, as from a gateway;
// - a job is visible on both paths; the poll path picks the completed shape;
// - the reset and malformed faults on create still make the job (the answer
//   is lost, not the work), and so do the create_then_* faults; HTTP-error
//   faults do not;
// - every job has a usage-log row; GET /v2/logs pages through them, newest
//   first, with the upstream's filters, 92-day window, lag and rate limit;
// - every create, poll and logs answer carries x-inference-id: the job's id
//   on answers whose body names the job, a fresh per-request id otherwise
//   (errors, 2xx without id); non-error JSON answers carry
//   x-aimlapi-credits-used/-usd-spent;
// - the video URL is http://<Host header>/files/<uuid>.mp4, with Range.
// Thread-safe:
// the server runs its own threads; every public method may be called from
// any thread.
class SimServer {
 public:
  explicit SimServer(SimOptions options);
  ~SimServer();  // stops if running
  SimServer(const SimServer&) = delete;
  SimServer& operator=(const SimServer&) = delete;

  // Binds and starts serving in the background. Returns once listening.
  absl::Status Start();
  void Stop();

  int port() const;
  std::string base_url() const;  // "http://127.0.0.1:PORT"

  SimStats Stats() const;
  void ResetStats();
  // Replaces the fault rules at run time.
  void SetFaults(std::vector<FaultRule> faults);
  // Ends the hold of SimOptions::hold_queued (also POST /sim/release).
  // Returns false when there was nothing to release: no hold, or released.
  bool Release();

  // Adds a usage-log row as if another client of the same key had made a
  // job at row.created (which may be in the past): lets tests fill windows
  // and pages without waiting. Subject to logs_lag like any row.
  void AddUsageRow(UsageRow row);
  // Every row, lagging ones included, in the order they were added.
  std::vector<UsageRow> UsageRows() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace videogen::sim
