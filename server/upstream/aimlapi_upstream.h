#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

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
  // Concurrency cap: transfers handed to curl at once. More wait in a queue.
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
  // "submit 2xx", "poll 4xx", "poll 5xx", "poll transport", ...
  std::map<std::string, int64_t> attempts;
  int64_t retries = 0;
  int64_t calls_started = 0;
  int64_t calls_finished = 0;
  int64_t queued = 0;     // waiting for a slot, a token or a retry timer
  int64_t in_flight = 0;  // handed to curl
  int64_t connections_opened = 0;  // new TCP connections (keep-alive reuse)
};

// The real AI/ML API client. One dedicated thread runs a libcurl multi loop
// (curl_multi_poll + curl_multi_wakeup) and is the only thread that touches
// curl handles. Submit and Poll may be called from any thread: they put the
// call on a queue under a mutex and wake the loop. Callbacks run on the loop
// thread, exactly once each; at destruction, unfinished calls get CANCELLED.
// Calls made after destruction began get CANCELLED at once, on the caller.
// Do not destroy it from one of its own callbacks.
// Connections: HTTP/2 multiplexing when the upstream offers it (https), else
// HTTP/1.1 keep-alive; transfers beyond max_connections wait inside curl and
// their request_timeout runs while they wait.
class AimlApiUpstream : public Upstream {
 public:
  explicit AimlApiUpstream(AimlApiOptions options);
  ~AimlApiUpstream() override;
  AimlApiUpstream(const AimlApiUpstream&) = delete;
  AimlApiUpstream& operator=(const AimlApiUpstream&) = delete;

  void Submit(SubmitRequest request, SubmitCallback done) override;
  void Poll(PollRequest request, PollCallback done) override;

  UpstreamCounters counters() const;

  // The path calls go to for `family`.
  static const char* Path(EndpointFamily family);

 private:
  class Loop;
  std::unique_ptr<Loop> loop_;
};

}  // namespace videogen::upstream
