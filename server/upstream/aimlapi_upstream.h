#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/upstream/http_errors.h"
#include "server/upstream/upstream.h"

namespace videogen::upstream {

// Which pair of paths the upstream is called on (design.md §1). Both take
// the same body; polls are GET on the same path with ?generation_id=.
enum class EndpointFamily {
  kLegacy,       // /v2/generate/video/kling/generation
  kGenerations,  // /v2/video/generations
};

// One finished HTTP attempt, for metrics. `http_status` is 0 when no answer
// arrived (then `transport_error` names the curl error).
struct AttemptRecord {
  CallKind kind;
  long http_status = 0;
  std::string transport_error;
  int attempt = 1;  // 1 for the first try
  absl::Duration latency;
};

struct AimlApiOptions {
  std::string base_url = "https://api.aimlapi.com";
  std::string api_key;
  EndpointFamily endpoint = EndpointFamily::kLegacy;
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration request_timeout = absl::Seconds(30);  // per attempt
  // Connections kept to the upstream (per host and in total).
  int max_connections = 32;
  // Concurrency cap: transfers handed to curl at once, plus submits whose
  // gate is open but undecided. More wait in a queue.
  int max_in_flight = 256;
  // Tries per call, the first included.
  int max_attempts = 4;
  absl::Duration backoff_base = absl::Milliseconds(500);
  absl::Duration backoff_max = absl::Seconds(20);
  // A Retry-After longer than this ends the retries at once.
  absl::Duration max_retry_after = absl::Seconds(60);
  // Global token bucket: requests per second (0 = unlimited) and burst.
  double rate_limit_per_second = 0;
  int rate_limit_burst = 20;
  // Bodies larger than this are an error (protects memory).
  size_t max_response_bytes = 1 << 20;
  uint64_t seed = 0;  // jitter seed; 0 = random
  // Called on the loop thread after every attempt; must not block.
  std::function<void(const AttemptRecord&)> on_attempt;
};

// Counters for metrics; see AimlApiUpstream::counters().
struct UpstreamCounters {
  // "submit 2xx", "poll 4xx", "logs 5xx", "poll transport", ...
  std::map<std::string, int64_t> attempts;
  int64_t retries = 0;
  int64_t calls_started = 0;
  int64_t calls_finished = 0;
  int64_t queued = 0;         // waiting for a slot, a token or a retry timer
  int64_t awaiting_send = 0;  // submits holding a slot, gate not yet decided
  int64_t in_flight = 0;      // handed to curl
  int64_t connections_opened = 0;  // new TCP connections (keep-alive reuse)
};

// The real AI/ML API client. One dedicated thread runs a libcurl multi loop
// (curl_multi_poll + curl_multi_wakeup) and is the only thread that touches
// curl handles. Submit, Poll and ListLogs may be called from any thread:
// they put the call on a queue under a mutex and wake the loop. Callbacks
// (`ready` and `done`) run on the loop thread; `done` exactly once.
// Calls made after destruction began get CANCELLED at once, on the caller.
// Do not destroy it from one of its own callbacks.
//
// Submits (design.md §5): a call waits for a rate-limiter token and one of
// `max_in_flight` slots; then `ready` gets a SubmitGate that holds the slot.
// Send() (any thread) queues the POST and wakes the loop; Abandon(), or
// dropping the last reference to the gate undecided, frees the slot and
// answers ABORTED. An undecided gate keeps its slot, so decide promptly;
// `ready` itself runs on the loop thread and must not block (record the
// intent elsewhere, then call Send from there). A null `ready` sends at
// once.
// The POST leaves at most once: it is retried (without a new gate) only
// after a connect or DNS failure, a fresh connection whose TCP/TLS
// handshake never finished, or a 429. Every submit uses a fresh connection,
// because libcurl silently resends a request whose reused keep-alive
// connection died before any answer byte (lib/transfer.c
// Curl_retry_request; no opt-out before curl 8.16), and that could create a
// second job. Everything that may have reached the upstream answers UNKNOWN
// (see ClassifySubmitError), also a POST in flight when the client is
// destroyed.
//
// Admission (issue 17): calls wait for a token of the global rate limit
// and one of `max_in_flight` slots in AdmissionQueue's order. The tenants
// (SubmitRequest::tenant, PollRequest::tenant; usage-log pages have a lane
// of their own) take turns, so neither one tenant's polls nor its creates
// crowd out another's; on its turn a tenant sends its waiting polls before
// its waiting submits, so a backlog of creates never delays the polls of
// accepted jobs. A submit's retry after a 429 queues as a submit again.
//
// Connections: HTTP/2 multiplexing when the upstream offers it (https), else
// HTTP/1.1 keep-alive; transfers beyond max_connections wait inside curl and
// their request_timeout runs while they wait.
//
// Every upstream-controlled string (status, error name and message, video
// URL, content type, file name, log rows' text) leaves without control
// characters and with the API key redacted (sanitize.h).
class AimlApiUpstream : public Upstream {
 public:
  // Refuses (FAILED_PRECONDITION on every call, nothing sent) a base URL
  // that CheckBaseUrl rejects; call CheckBaseUrl at startup to fail early.
  explicit AimlApiUpstream(AimlApiOptions options);
  ~AimlApiUpstream() override;
  AimlApiUpstream(const AimlApiUpstream&) = delete;
  AimlApiUpstream& operator=(const AimlApiUpstream&) = delete;

  void Submit(SubmitRequest request, SubmitReadyCallback ready,
              SubmitCallback done) override;
  void Poll(PollRequest request, PollCallback done) override;
  // GET {base}/v2/logs?start=&end=&model=..&limit=&offset=. start is rounded
  // down and end up to whole seconds (ISO 8601 UTC, "Z"). A window that is
  // empty, reversed or longer than 92 days is INVALID_ARGUMENT without a
  // request. 429 is RESOURCE_EXHAUSTED at once, with the Retry-After in the
  // kRetryAfterPayload payload (http_errors.h) when the upstream sent one;
  // 5xx, timeouts and garbled pages are retried like polls.
  void ListLogs(LogQuery query, LogsCallback done) override;

  UpstreamCounters counters() const;

  // The path calls go to for `family`.
  static const char* Path(EndpointFamily family);
  static constexpr char kLogsPath[] = "/v2/logs";

  // OK for https, and for plain http to a loopback host (localhost,
  // 127.0.0.0/8, [::1]) or without a key. A key over plain http to any
  // other host is FAILED_PRECONDITION (it would cross the network in
  // clear); another scheme or an unparsable URL is INVALID_ARGUMENT.
  static absl::Status CheckBaseUrl(absl::string_view base_url, bool has_key);

 private:
  class Loop;
  std::unique_ptr<Loop> loop_;
};

}  // namespace videogen::upstream
