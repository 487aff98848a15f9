#include "server/upstream/aimlapi_upstream.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "server/upstream/http_errors.h"
#include "server/upstream/parse.h"

namespace videogen::upstream {
namespace {

constexpr char kDefaultModel[] = "klingai/v2-master-text-to-video";

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    // A peer closing a socket must not kill the process.
    std::signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
  });
}

// Header values must not smuggle extra lines or odd bytes into the request.
bool PrintableHeaderValue(const std::string& v, size_t max_len) {
  if (v.empty() || v.size() > max_len) return false;
  return std::all_of(v.begin(), v.end(), [](char c) {
    const unsigned char u = static_cast<unsigned char>(c);
    return u >= 0x20 && u < 0x7f;
  });
}

// X-Client-Request-Id accepts 1-128 chars of [A-Za-z0-9._:-].
bool ValidClientRequestId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
           c == '_' || c == ':' || c == '-';
  });
}

std::string Escape(const std::string& raw) {
  // The handle argument is ignored by libcurl >= 7.82.
  char* escaped =
      curl_easy_escape(nullptr, raw.data(), static_cast<int>(raw.size()));
  if (escaped == nullptr) return "";
  std::string out(escaped);
  curl_free(escaped);
  return out;
}

std::string StatusClass(long http_status) {
  if (http_status == 0) return "transport";
  return absl::StrCat(http_status / 100, "xx");
}

const char* KindName(CallKind kind) {
  return kind == CallKind::kSubmit ? "submit" : "poll";
}

// Transport failures worth another attempt (the network, not the config).
bool TransientCurlError(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_AGAIN:
      return true;
    default:
      return false;
  }
}

// Failures that happen before any byte of the request left.
bool NeverSent(CURLcode code) {
  return code == CURLE_COULDNT_RESOLVE_HOST ||
         code == CURLE_COULDNT_RESOLVE_PROXY || code == CURLE_COULDNT_CONNECT;
}

// One logical call: a submit or a poll, across all its attempts.
struct Call {
  CallKind kind = CallKind::kPoll;
  std::string url;
  std::string body;         // the POST body; empty for polls
  std::string upstream_id;  // polls only, for messages
  curl_slist* headers = nullptr;
  SubmitCallback submit_done;
  PollCallback poll_done;
  int attempt = 0;  // attempts started
  absl::Time attempt_start;
  std::string response;
  size_t max_response = 0;
  bool too_large = false;
  char errbuf[CURL_ERROR_SIZE] = {};
  absl::Status rejected;  // set: fail without sending anything

  Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  ~Call() { curl_slist_free_all(headers); }
};

size_t WriteBody(char* data, size_t size, size_t count, void* user) {
  Call* call = static_cast<Call*>(user);
  const size_t n = size * count;
  if (call->response.size() + n > call->max_response) {
    call->too_large = true;
    return 0;  // makes curl fail with CURLE_WRITE_ERROR
  }
  call->response.append(data, n);
  return n;
}

}  // namespace

// The loop: owns the multi handle and its thread. Only Enqueue and
// counters() run on other threads; everything else is loop-thread only.
class AimlApiUpstream::Loop {
 public:
  explicit Loop(AimlApiOptions options);
  ~Loop();

  void Enqueue(std::unique_ptr<Call> call);
  UpstreamCounters counters() const;

  const AimlApiOptions& options() const { return options_; }
  bool key_ok() const { return key_ok_; }

 private:
  void Run();
  bool TakeIncoming();
  void MoveDueTimers(absl::Time now);
  void Admit(absl::Time now);
  bool TakeToken(absl::Time now);
  CURL* NewEasy();
  void StartAttempt(std::unique_ptr<Call> call, absl::Time now);
  void ReadDone();
  void HandleResult(std::unique_ptr<Call> call, CURLcode result, long http,
                    absl::Duration retry_after, bool request_sent);
  absl::Status TransportError(const Call& call, CURLcode result,
                              bool request_sent) const;
  void Retry(std::unique_ptr<Call> call, absl::Duration server_delay,
             const absl::Status& final_status);
  absl::Duration Backoff(int attempt);
  int WaitMs(absl::Time now) const;
  void Finish(std::unique_ptr<Call> call, absl::Status error);
  void Deliver(std::unique_ptr<Call> call);
  void Shutdown();
  void Record(const Call& call, long http, CURLcode result);

  const AimlApiOptions options_;
  bool key_ok_ = true;
  CURLM* multi_ = nullptr;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Call>> incoming_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id loop_thread_id_ ABSL_GUARDED_BY(mu_);
  // Bumped on the hot path, so atomics rather than mu_.
  struct {
    std::atomic<int64_t> attempts[2][6] = {};  // [submit|poll][0=transport]
    std::atomic<int64_t> retries{0};
    std::atomic<int64_t> calls_started{0};
    std::atomic<int64_t> calls_finished{0};
    std::atomic<int64_t> queued{0};
    std::atomic<int64_t> in_flight{0};
    std::atomic<int64_t> connections_opened{0};
  } counters_;

  // Loop thread only.
  std::deque<std::unique_ptr<Call>> ready_;
  std::multimap<absl::Time, std::unique_ptr<Call>> timers_;
  std::map<CURL*, std::unique_ptr<Call>> running_;
  std::vector<CURL*> idle_easies_;
  double tokens_ = 0;
  absl::Time last_refill_;
  std::mt19937_64 rng_;

  std::thread thread_;  // last: starts after everything above exists
};

AimlApiUpstream::Loop::Loop(AimlApiOptions options)
    : options_(std::move(options)) {
  GlobalInit();
  for (char c : options_.api_key) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) key_ok_ = false;
  }
  rng_.seed(options_.seed != 0 ? options_.seed : std::random_device{}());
  tokens_ = std::max(1, options_.rate_limit_burst);
  last_refill_ = absl::Now();
  multi_ = curl_multi_init();
  const long conns = std::max(1, options_.max_connections);
  curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
  curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, conns);
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, conns);
  thread_ = std::thread([this] { Run(); });
}

AimlApiUpstream::Loop::~Loop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    curl_multi_wakeup(multi_);
  }
  thread_.join();
  for (CURL* easy : idle_easies_) curl_easy_cleanup(easy);
  curl_multi_cleanup(multi_);
}

void AimlApiUpstream::Loop::Enqueue(std::unique_ptr<Call> call) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      ++counters_.calls_started;
      ++counters_.queued;
      incoming_.push_back(std::move(call));
      // The loop looks at the queue again after running callbacks, so a
      // call made from a callback needs no wakeup. Otherwise wake it, under
      // the lock so that the multi handle is still alive.
      if (std::this_thread::get_id() != loop_thread_id_) {
        curl_multi_wakeup(multi_);
      }
      return;
    }
  }
  Finish(std::move(call),
         absl::CancelledError("the upstream client is shutting down"));
}

UpstreamCounters AimlApiUpstream::Loop::counters() const {
  UpstreamCounters out;
  for (int kind = 0; kind < 2; ++kind) {
    for (int cls = 0; cls < 6; ++cls) {
      const int64_t n = counters_.attempts[kind][cls];
      if (n == 0) continue;
      out.attempts[absl::StrCat(
          KindName(kind == 0 ? CallKind::kSubmit : CallKind::kPoll), " ",
          StatusClass(cls * 100))] = n;
    }
  }
  out.retries = counters_.retries;
  out.calls_started = counters_.calls_started;
  out.calls_finished = counters_.calls_finished;
  out.queued = counters_.queued;
  out.in_flight = counters_.in_flight;
  out.connections_opened = counters_.connections_opened;
  return out;
}

void AimlApiUpstream::Loop::Run() {
  {
    absl::MutexLock lock(&mu_);
    loop_thread_id_ = std::this_thread::get_id();
  }
  while (TakeIncoming()) {
    absl::Time now = absl::Now();
    MoveDueTimers(now);
    Admit(now);
    int still_running = 0;
    curl_multi_perform(multi_, &still_running);
    ReadDone();
    // Calls made by callbacks, and slots freed by finished transfers, are
    // taken before waiting.
    if (!TakeIncoming()) break;
    now = absl::Now();
    Admit(now);
    curl_multi_poll(multi_, nullptr, 0, WaitMs(now), nullptr);
  }
  Shutdown();
}

bool AimlApiUpstream::Loop::TakeIncoming() {
  std::deque<std::unique_ptr<Call>> rejected;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    for (auto& call : incoming_) {
      (call->rejected.ok() ? ready_ : rejected).push_back(std::move(call));
    }
    incoming_.clear();
  }
  // Calls refused before any request still answer on this thread.
  for (auto& call : rejected) {
    --counters_.queued;
    const absl::Status status = call->rejected;
    Finish(std::move(call), status);
  }
  return true;
}

void AimlApiUpstream::Loop::MoveDueTimers(absl::Time now) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    ready_.push_back(std::move(timers_.begin()->second));
    timers_.erase(timers_.begin());
  }
}

void AimlApiUpstream::Loop::Admit(absl::Time now) {
  const size_t cap = static_cast<size_t>(std::max(1, options_.max_in_flight));
  while (!ready_.empty() && running_.size() < cap && TakeToken(now)) {
    std::unique_ptr<Call> call = std::move(ready_.front());
    ready_.pop_front();
    --counters_.queued;
    StartAttempt(std::move(call), now);
  }
}

bool AimlApiUpstream::Loop::TakeToken(absl::Time now) {
  const double rate = options_.rate_limit_per_second;
  if (rate <= 0) return true;
  const double burst = std::max(1, options_.rate_limit_burst);
  tokens_ = std::min(
      burst, tokens_ + rate * absl::ToDoubleSeconds(now - last_refill_));
  last_refill_ = now;
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

CURL* AimlApiUpstream::Loop::NewEasy() {
  CURL* easy = curl_easy_init();
  if (easy == nullptr) return nullptr;
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(
      easy, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(
      easy, CURLOPT_TIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &WriteBody);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS);
  if (absl::StartsWith(options_.base_url, "https:")) {
    // Wait for a connection that may multiplex rather than open another.
    curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);
  }
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, "videogen/0.1");
  return easy;
}

void AimlApiUpstream::Loop::StartAttempt(std::unique_ptr<Call> call,
                                         absl::Time now) {
  CURL* easy = nullptr;
  if (!idle_easies_.empty()) {
    easy = idle_easies_.back();
    idle_easies_.pop_back();
  } else {
    easy = NewEasy();
  }
  if (easy == nullptr) {
    Finish(std::move(call),
           absl::ResourceExhaustedError("libcurl could not make a handle"));
    return;
  }
  ++call->attempt;
  call->attempt_start = now;
  call->response.clear();
  call->too_large = false;
  call->errbuf[0] = '\0';
  call->max_response = options_.max_response_bytes;

  // Handles are reused without curl_easy_reset: only these options vary.
  curl_easy_setopt(easy, CURLOPT_URL, call->url.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, call->headers);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, call.get());
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, call->errbuf);
  if (call->kind == CallKind::kSubmit) {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE,
                     static_cast<long>(call->body.size()));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, call->body.c_str());
  } else {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  }
  curl_easy_setopt(easy, CURLOPT_PRIVATE, call.get());
  if (curl_multi_add_handle(multi_, easy) != CURLM_OK) {
    curl_easy_cleanup(easy);
    Finish(std::move(call),
           absl::ResourceExhaustedError("libcurl refused a new transfer"));
    return;
  }
  running_[easy] = std::move(call);
  ++counters_.in_flight;
}

void AimlApiUpstream::Loop::ReadDone() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    const CURLcode result = msg->data.result;
    curl_multi_remove_handle(multi_, easy);
    auto it = running_.find(easy);
    if (it == running_.end()) continue;
    std::unique_ptr<Call> call = std::move(it->second);
    running_.erase(it);
    long http = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http);
    curl_off_t retry_after = 0;
    curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after);
    long request_size = 0;
    curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_size);
    long new_connections = 0;
    curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
    counters_.connections_opened += new_connections;
    idle_easies_.push_back(easy);
    --counters_.in_flight;
    HandleResult(std::move(call), result, result == CURLE_OK ? http : 0,
                 absl::Seconds(std::max<curl_off_t>(0, retry_after)),
                 request_size > 0);
  }
}

void AimlApiUpstream::Loop::Record(const Call& call, long http,
                                   CURLcode result) {
  AttemptRecord record;
  record.kind = call.kind;
  record.http_status = http;
  if (result != CURLE_OK) record.transport_error = curl_easy_strerror(result);
  record.attempt = call.attempt;
  record.latency = absl::Now() - call.attempt_start;
  ++counters_.attempts[call.kind == CallKind::kSubmit ? 0 : 1]
                      [std::clamp<long>(http / 100, 0, 5)];
  if (options_.on_attempt) options_.on_attempt(record);
}

void AimlApiUpstream::Loop::HandleResult(std::unique_ptr<Call> call,
                                         CURLcode result, long http,
                                         absl::Duration retry_after,
                                         bool request_sent) {
  Record(*call, http, result);
  if (result == CURLE_OK && http >= 200 && http < 300) {
    Deliver(std::move(call));
    return;
  }
  if (result == CURLE_OK) {
    absl::Status error =
        HttpError(call->kind, http, call->response, call->attempt,
                  call->upstream_id, options_.api_key);
    if (IsRetryableHttp(call->kind, http)) {
      Retry(std::move(call), retry_after, error);
    } else {
      Finish(std::move(call), error);
    }
    return;
  }
  absl::Status error = TransportError(*call, result, request_sent);
  // A create that may have reached the upstream is never sent twice: the
  // upstream has no idempotency key, so a second one could make a 2nd job.
  const bool safe =
      call->kind == CallKind::kPoll || !request_sent || NeverSent(result);
  if (TransientCurlError(result) && safe) {
    Retry(std::move(call), absl::ZeroDuration(), error);
  } else {
    Finish(std::move(call), error);
  }
}

absl::Status AimlApiUpstream::Loop::TransportError(const Call& call,
                                                   CURLcode result,
                                                   bool request_sent) const {
  const std::string what =
      call.kind == CallKind::kSubmit
          ? std::string("create request")
          : absl::StrCat("poll of generation \"", call.upstream_id, "\"");
  const std::string detail =
      call.errbuf[0] != '\0' ? call.errbuf : curl_easy_strerror(result);
  const std::string attempts =
      call.attempt > 1 ? absl::StrCat(" after ", call.attempt, " attempts")
                       : "";
  const bool ambiguous =
      call.kind == CallKind::kSubmit && request_sent && !NeverSent(result);
  const std::string maybe =
      ambiguous ? " The create request was sent, so the job may or may not "
                  "exist upstream; it was not resent."
                : "";
  absl::Status status;
  if (call.too_large) {
    status = absl::UnavailableError(
        absl::StrCat("the upstream's answer to the ", what, " exceeded ",
                     options_.max_response_bytes, " bytes.", maybe));
  } else if (result == CURLE_OPERATION_TIMEDOUT) {
    status = absl::DeadlineExceededError(absl::StrCat(
        "the upstream did not answer the ", what, " in time", attempts, " (",
        detail, "; connect timeout ",
        absl::FormatDuration(options_.connect_timeout), ", request timeout ",
        absl::FormatDuration(options_.request_timeout), ").", maybe));
  } else if (TransientCurlError(result)) {
    status = absl::UnavailableError(
        absl::StrCat("cannot reach the upstream at ", options_.base_url,
                     " for the ", what, attempts, " (", detail,
                     "); check --upstream_url and the network.", maybe));
  } else {
    status = absl::FailedPreconditionError(
        absl::StrCat("the ", what, " to ", options_.base_url, " failed (",
                     detail, "); check --upstream_url.", maybe));
  }
  return RedactStatus(status, options_.api_key);
}

void AimlApiUpstream::Loop::Retry(std::unique_ptr<Call> call,
                                  absl::Duration server_delay,
                                  const absl::Status& final_status) {
  if (server_delay > options_.max_retry_after) {
    Finish(
        std::move(call),
        absl::Status(
            final_status.code(),
            absl::StrCat(
                final_status.message(), " The upstream asked to retry after ",
                absl::FormatDuration(server_delay), ", beyond the limit of ",
                absl::FormatDuration(options_.max_retry_after), ".")));
    return;
  }
  if (call->attempt >= std::max(1, options_.max_attempts)) {
    Finish(std::move(call), final_status);
    return;
  }
  const absl::Duration delay = std::max(Backoff(call->attempt), server_delay);
  ++counters_.retries;
  ++counters_.queued;
  timers_.emplace(absl::Now() + delay, std::move(call));
}

absl::Duration AimlApiUpstream::Loop::Backoff(int attempt) {
  absl::Duration cap = options_.backoff_base;
  for (int i = 1; i < attempt && cap < options_.backoff_max; ++i) cap *= 2;
  cap = std::min(cap, options_.backoff_max);
  // Full jitter: uniform in [0, cap].
  std::uniform_real_distribution<double> share(0.0, 1.0);
  return cap * share(rng_);
}

int AimlApiUpstream::Loop::WaitMs(absl::Time now) const {
  absl::Duration wait = absl::Seconds(1);
  if (!timers_.empty()) wait = std::min(wait, timers_.begin()->first - now);
  const size_t cap = static_cast<size_t>(std::max(1, options_.max_in_flight));
  if (!ready_.empty() && running_.size() < cap &&
      options_.rate_limit_per_second > 0) {
    wait = std::min(
        wait, absl::Seconds((1 - tokens_) / options_.rate_limit_per_second));
  }
  wait = std::max(wait, absl::ZeroDuration());
  return static_cast<int>(
      absl::ToInt64Milliseconds(absl::Ceil(wait, absl::Milliseconds(1))));
}

void AimlApiUpstream::Loop::Deliver(std::unique_ptr<Call> call) {
  if (call->kind == CallKind::kSubmit) {
    absl::StatusOr<SubmitResult> result = ParseSubmitResult(call->response);
    if (!result.ok()) {
      Finish(std::move(call), result.status());
      return;
    }
    SubmitCallback done = std::move(call->submit_done);
    call.reset();
    ++counters_.calls_finished;
    done(*std::move(result));
    return;
  }
  absl::StatusOr<Snapshot> snap = ParseSnapshot(call->response);
  if (!snap.ok()) {
    // A garbled poll answer is usually a passing proxy glitch: poll again.
    Retry(std::move(call), absl::ZeroDuration(),
          RedactStatus(snap.status(), options_.api_key));
    return;
  }
  if (snap->upstream_id.empty()) snap->upstream_id = call->upstream_id;
  PollCallback done = std::move(call->poll_done);
  call.reset();
  ++counters_.calls_finished;
  done(*std::move(snap));
}

void AimlApiUpstream::Loop::Finish(std::unique_ptr<Call> call,
                                   absl::Status error) {
  error = RedactStatus(error, options_.api_key);
  ++counters_.calls_finished;
  if (call->kind == CallKind::kSubmit) {
    SubmitCallback done = std::move(call->submit_done);
    call.reset();
    done(error);
  } else {
    PollCallback done = std::move(call->poll_done);
    call.reset();
    done(error);
  }
}

void AimlApiUpstream::Loop::Shutdown() {
  // Only a create cut off in flight may have reached the upstream.
  const auto cancelled = [](const Call& call, bool in_flight) {
    return absl::CancelledError(absl::StrCat(
        "the upstream client is shutting down",
        call.kind == CallKind::kSubmit && in_flight
            ? "; the create request may have reached the upstream, so the "
              "job may or may not exist there"
            : ""));
  };
  for (auto& [easy, call] : running_) {
    curl_multi_remove_handle(multi_, easy);
    curl_easy_cleanup(easy);
    const absl::Status status = cancelled(*call, true);
    Finish(std::move(call), status);
  }
  running_.clear();
  for (auto& [due, call] : timers_) ready_.push_back(std::move(call));
  timers_.clear();
  {
    absl::MutexLock lock(&mu_);
    for (auto& call : incoming_) ready_.push_back(std::move(call));
    incoming_.clear();
  }
  counters_.in_flight = 0;
  counters_.queued = 0;
  for (auto& call : ready_) {
    const absl::Status status = cancelled(*call, false);
    Finish(std::move(call), status);
  }
  ready_.clear();
}

AimlApiUpstream::AimlApiUpstream(AimlApiOptions options) {
  while (!options.base_url.empty() && options.base_url.back() == '/') {
    options.base_url.pop_back();
  }
  options.api_key = std::string(absl::StripAsciiWhitespace(options.api_key));
  loop_ = std::make_unique<Loop>(std::move(options));
}

AimlApiUpstream::~AimlApiUpstream() = default;

const char* AimlApiUpstream::Path(EndpointFamily family) {
  return family == EndpointFamily::kLegacy
             ? "/v2/generate/video/kling/generation"
             : "/v2/video/generations";
}

namespace {

curl_slist* BuildHeaders(const std::string& api_key, bool json_body,
                         const std::string& client_request_id,
                         const std::string& traceparent) {
  curl_slist* h = nullptr;
  if (!api_key.empty()) {
    h = curl_slist_append(h, ("Authorization: Bearer " + api_key).c_str());
  }
  if (json_body) {
    h = curl_slist_append(h, "Content-Type: application/json");
    // No "Expect: 100-continue" round trip for bodies over 1 KiB.
    h = curl_slist_append(h, "Expect:");
  }
  if (ValidClientRequestId(client_request_id)) {
    h = curl_slist_append(
        h, ("X-Client-Request-Id: " + client_request_id).c_str());
  }
  if (PrintableHeaderValue(traceparent, 256)) {
    h = curl_slist_append(h, ("traceparent: " + traceparent).c_str());
  }
  return h;
}

std::string SubmitBody(const SubmitRequest& r) {
  nlohmann::json body;
  body["model"] = r.model.empty() ? kDefaultModel : r.model;
  body["prompt"] = r.prompt;
  if (!r.negative_prompt.empty()) body["negative_prompt"] = r.negative_prompt;
  if (!r.aspect_ratio.empty()) body["aspect_ratio"] = r.aspect_ratio;
  body["duration"] = r.duration_seconds;
  if (r.cfg_scale.has_value()) body["cfg_scale"] = *r.cfg_scale;
  if (!r.image_url.empty()) body["image_url"] = r.image_url;
  // Invalid UTF-8 in a prompt becomes U+FFFD instead of throwing.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::Status BadKey() {
  return absl::UnauthenticatedError(
      "the API key contains control or non-ASCII characters; check "
      "AIMLAPI_KEY or --api_key_file");
}

}  // namespace

void AimlApiUpstream::Submit(SubmitRequest request, SubmitCallback done) {
  auto call = std::make_unique<Call>();
  call->kind = CallKind::kSubmit;
  call->submit_done = std::move(done);
  if (!loop_->key_ok()) {
    call->rejected = BadKey();
    loop_->Enqueue(std::move(call));
    return;
  }
  const AimlApiOptions& o = loop_->options();
  call->url = o.base_url + Path(o.endpoint);
  call->body = SubmitBody(request);
  call->headers = BuildHeaders(o.api_key, /*json_body=*/true,
                               request.client_request_id, request.traceparent);
  loop_->Enqueue(std::move(call));
}

void AimlApiUpstream::Poll(PollRequest request, PollCallback done) {
  auto call = std::make_unique<Call>();
  call->kind = CallKind::kPoll;
  call->poll_done = std::move(done);
  if (!loop_->key_ok()) {
    call->rejected = BadKey();
    loop_->Enqueue(std::move(call));
    return;
  }
  const AimlApiOptions& o = loop_->options();
  call->upstream_id = request.upstream_id;
  call->url = absl::StrCat(o.base_url, Path(o.endpoint),
                           "?generation_id=", Escape(request.upstream_id));
  call->headers = BuildHeaders(o.api_key, /*json_body=*/false,
                               request.client_request_id, request.traceparent);
  loop_->Enqueue(std::move(call));
}

UpstreamCounters AimlApiUpstream::counters() const { return loop_->counters(); }

}  // namespace videogen::upstream
