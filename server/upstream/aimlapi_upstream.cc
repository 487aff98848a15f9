#include "server/upstream/aimlapi_upstream.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "server/upstream/admission_queue.h"
#include "server/upstream/http_errors.h"
#include "server/upstream/parse.h"
#include "server/upstream/sanitize.h"
#include "server/util/thread_name.h"

namespace videogen::upstream {
namespace {

constexpr char kDefaultModel[] = "klingai/v2-master-text-to-video";
// The usage log answers windows of at most 92 days (design.md §1).
constexpr absl::Duration kMaxLogWindow = absl::Hours(24 * 92);
constexpr int kDefaultLogLimit = 100;
// The admission lane of usage-log pages: apart from every tenant's (tenant
// names start with a lowercase letter).
constexpr char kUsageLogLane[] = "#usage-log";

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

int KindIndex(CallKind kind) {
  switch (kind) {
    case CallKind::kSubmit:
      return 0;
    case CallKind::kPoll:
      return 1;
    case CallKind::kLogs:
      return 2;
  }
  return 1;
}

const char* KindName(int index) {
  static const char* const kNames[] = {"submit", "poll", "logs"};
  return kNames[index];
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

// Codes libcurl only produces while resolving or connecting (a proxy's
// refused CONNECT tunnel included), before any request byte can leave.
// Everything else, CURLE_OPERATION_TIMEDOUT and CURLE_SSL_CONNECT_ERROR
// among them, may happen after the request went out; those count as "never
// left" only when the attempt's fresh connection never finished its
// handshakes (Outcome::request_may_have_left).
bool PreSendCurlError(CURLcode code) {
  return code == CURLE_COULDNT_RESOLVE_HOST ||
         code == CURLE_COULDNT_RESOLVE_PROXY || code == CURLE_COULDNT_CONNECT;
}

// One logical call: a submit, a poll or a usage-log page, across all its
// attempts.
struct Call {
  CallKind kind = CallKind::kPoll;
  std::string url;
  std::string body;         // the POST body; empty otherwise
  std::string upstream_id;  // polls only, for messages
  std::string lane;         // the tenant, for the admission order
  curl_slist* headers = nullptr;
  SubmitReadyCallback submit_ready;
  SubmitCallback submit_done;
  PollCallback poll_done;
  LogsCallback logs_done;
  int logs_limit = kDefaultLogLimit;
  bool gate_opened = false;  // submits: `ready` ran; never again
  int attempt = 0;           // attempts started
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

// What one finished attempt left behind, read from the easy handle before
// it is reused.
struct Outcome {
  CURLcode result = CURLE_OK;
  long http = 0;  // 0 unless result is CURLE_OK
  // False only when the attempt's connection never finished its TCP (and,
  // for https, TLS) handshake and no request byte was written. Submits use
  // a fresh connection, so then nothing reached the upstream.
  bool request_may_have_left = true;
  std::optional<absl::Duration> retry_after;  // a Retry-After header
  std::string credits_used;                   // raw header values
  std::string usd_spent;
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

// A header of the last response, or "" (also when libcurl lacks the API).
std::string HeaderValue(CURL* easy, const char* name) {
  curl_header* h = nullptr;
  if (curl_easy_header(easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK ||
      h == nullptr || h->value == nullptr) {
    return "";
  }
  return std::string(absl::StripAsciiWhitespace(h->value));
}

int64_t ParseCredits(absl::string_view text) {
  int64_t i = 0;
  if (absl::SimpleAtoi(text, &i)) return std::max<int64_t>(0, i);
  double d = 0;
  if (absl::SimpleAtod(text, &d) && d > 0 && d < 9e18) {
    return static_cast<int64_t>(std::llround(d));
  }
  return 0;
}

double ParseUsd(absl::string_view text) {
  double d = 0;
  if (absl::SimpleAtod(text, &d) && std::isfinite(d) && d > 0) return d;
  return 0;
}

// Appends `extra` to a status message, keeping code and payloads.
absl::Status Append(const absl::Status& status, absl::string_view extra) {
  absl::Status out(status.code(), absl::StrCat(status.message(), extra));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& p) {
    out.SetPayload(url, p);
  });
  return out;
}

std::string IsoUtc(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

bool IsLoopbackHost(std::string host) {
  host = absl::AsciiStrToLower(host);
  if (host == "localhost" || host == "localhost.") return true;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    in6_addr v6{};
    return inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6) ==
               1 &&
           IN6_IS_ADDR_LOOPBACK(&v6);
  }
  in_addr v4{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 &&
         (ntohl(v4.s_addr) >> 24) == 127;
}

// One decision about an open gate.
struct Decision {
  uint64_t gate_id = 0;
  bool send = false;
};

// What other threads hand to the loop thread: new calls and gate
// decisions. Shared with every SubmitGate, which may outlive the client:
// once stopping, posts are refused and the loop's shutdown answers for the
// calls. Thread-safe; mu_ is never held while calling out.
class Inbox {
 public:
  explicit Inbox(CURLM* multi) : multi_(multi) {}

  // Takes `call` and returns true, unless stopping.
  bool PostCall(std::unique_ptr<Call>& call) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    calls_.push_back(std::move(call));
    WakeLocked();
    return true;
  }

  void PostDecision(Decision d) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    decisions_.push_back(d);
    WakeLocked();
  }

  // Loop thread. Moves everything posted so far; false once stopping.
  bool Take(std::deque<std::unique_ptr<Call>>* calls,
            std::vector<Decision>* decisions) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    calls->swap(calls_);
    decisions->swap(decisions_);
    spin_ = false;
    return true;
  }

  // Loop thread: true when something was posted from the loop thread since
  // the last Take, so the loop must not sleep.
  bool PostedFromLoop() {
    absl::MutexLock lock(&mu_);
    return spin_;
  }

  void BindLoopThread() {
    absl::MutexLock lock(&mu_);
    loop_thread_ = std::this_thread::get_id();
  }

  // Any thread but the loop's; after this, multi_ is never touched again.
  void Stop() {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    curl_multi_wakeup(multi_);
  }

  // Loop thread, after Stop: calls nobody took.
  std::deque<std::unique_ptr<Call>> TakeLeftovers() {
    absl::MutexLock lock(&mu_);
    decisions_.clear();
    return std::move(calls_);
  }

 private:
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // A post from a callback needs no syscall: the loop checks
    // PostedFromLoop before it sleeps. multi_ is alive while !stopping_.
    if (std::this_thread::get_id() == loop_thread_) {
      spin_ = true;
    } else {
      curl_multi_wakeup(multi_);
    }
  }

  absl::Mutex mu_;
  CURLM* const multi_;
  std::deque<std::unique_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<Decision> decisions_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool spin_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id loop_thread_ ABSL_GUARDED_BY(mu_);
};

// The caller's handle on one submit's slot. Thread-safe; the first of
// Send, Abandon or the destructor decides, later ones do nothing.
class Gate final : public SubmitGate {
 public:
  Gate(std::shared_ptr<Inbox> inbox, uint64_t id)
      : inbox_(std::move(inbox)), id_(id) {}
  ~Gate() override { Decide(false); }
  void Send() override { Decide(true); }
  void Abandon() override { Decide(false); }

 private:
  void Decide(bool send) {
    if (decided_.exchange(true)) return;
    inbox_->PostDecision(Decision{id_, send});
  }

  const std::shared_ptr<Inbox> inbox_;
  const uint64_t id_;
  std::atomic<bool> decided_{false};
};

}  // namespace

// The loop: owns the multi handle and its thread. Only Enqueue, counters()
// and the inbox run on other threads; everything else is loop-thread only.
class AimlApiUpstream::Loop {
 public:
  Loop(AimlApiOptions options, absl::Status precheck);
  ~Loop();

  void Enqueue(std::unique_ptr<Call> call);
  UpstreamCounters counters() const;

  const AimlApiOptions& options() const { return options_; }
  // Why every call fails without a request (bad key or base URL), or OK.
  const absl::Status& precheck() const { return precheck_; }

 private:
  void Run();
  bool TakeIncoming();
  void Decide(const Decision& d, absl::Time now);
  // Queues `call` for a token and a slot (admission_queue.h's order).
  void Wait(std::unique_ptr<Call> call);
  void MoveDueTimers(absl::Time now);
  size_t SlotsInUse() const { return running_.size() + gated_.size(); }
  void Admit(absl::Time now);
  void OpenGate(std::unique_ptr<Call> call, absl::Time now);
  bool TakeToken(absl::Time now);
  CURL* NewEasy();
  void StartAttempt(std::unique_ptr<Call> call, absl::Time now);
  void ReadDone();
  bool RequestMayHaveLeft(CURL* easy) const;
  void HandleResult(std::unique_ptr<Call> call, const Outcome& o);
  void HandleSubmitTransportError(std::unique_ptr<Call> call, const Outcome& o);
  absl::Status TransportError(const Call& call, CURLcode result) const;
  void Retry(std::unique_ptr<Call> call, absl::Duration server_delay,
             const absl::Status& final_status);
  absl::Duration Backoff(int attempt);
  int WaitMs(absl::Time now) const;
  void Finish(std::unique_ptr<Call> call, absl::Status error);
  void Deliver(std::unique_ptr<Call> call, const Outcome& o);
  void DeliverSubmit(std::unique_ptr<Call> call, const Outcome& o);
  void Shutdown();
  void Record(const Call& call, long http, CURLcode result);

  const AimlApiOptions options_;
  const absl::Status precheck_;
  const bool https_;
  CURLM* multi_ = nullptr;
  std::shared_ptr<Inbox> inbox_;

  // Bumped on the hot path, so atomics rather than a mutex.
  struct {
    std::atomic<int64_t> attempts[3][6] = {};  // [kind][0=transport, 1..5xx]
    std::atomic<int64_t> retries{0};
    std::atomic<int64_t> calls_started{0};
    std::atomic<int64_t> calls_finished{0};
    std::atomic<int64_t> queued{0};
    std::atomic<int64_t> awaiting_send{0};
    std::atomic<int64_t> in_flight{0};
    std::atomic<int64_t> connections_opened{0};
  } counters_;

  // Loop thread only.
  AdmissionQueue<std::unique_ptr<Call>> waiting_;
  std::multimap<absl::Time, std::unique_ptr<Call>> timers_;
  std::map<CURL*, std::unique_ptr<Call>> running_;
  std::map<uint64_t, std::unique_ptr<Call>> gated_;  // open, undecided
  uint64_t next_gate_id_ = 0;
  std::vector<CURL*> idle_easies_;
  double tokens_ = 0;
  absl::Time last_refill_;
  std::mt19937_64 rng_;

  std::thread thread_;  // last: starts after everything above exists
};

AimlApiUpstream::Loop::Loop(AimlApiOptions options, absl::Status precheck)
    : options_(std::move(options)),
      precheck_(std::move(precheck)),
      https_(absl::StartsWithIgnoreCase(options_.base_url, "https:")) {
  GlobalInit();
  rng_.seed(options_.seed != 0 ? options_.seed : std::random_device{}());
  tokens_ = std::max(1, options_.rate_limit_burst);
  last_refill_ = absl::Now();
  multi_ = curl_multi_init();
  inbox_ = std::make_shared<Inbox>(multi_);
  const long conns = std::max(1, options_.max_connections);
  curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
  curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, conns);
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, conns);
  thread_ = std::thread([this] { Run(); });
}

AimlApiUpstream::Loop::~Loop() {
  inbox_->Stop();
  thread_.join();
  for (CURL* easy : idle_easies_) curl_easy_cleanup(easy);
  curl_multi_cleanup(multi_);
}

void AimlApiUpstream::Loop::Enqueue(std::unique_ptr<Call> call) {
  ++counters_.calls_started;
  ++counters_.queued;
  if (inbox_->PostCall(call)) return;
  --counters_.queued;
  Finish(std::move(call),
         absl::CancelledError("the upstream client is shutting down"));
}

UpstreamCounters AimlApiUpstream::Loop::counters() const {
  UpstreamCounters out;
  for (int kind = 0; kind < 3; ++kind) {
    for (int cls = 0; cls < 6; ++cls) {
      const int64_t n = counters_.attempts[kind][cls];
      if (n == 0) continue;
      out.attempts[absl::StrCat(KindName(kind), " ", StatusClass(cls * 100))] =
          n;
    }
  }
  out.retries = counters_.retries;
  out.calls_started = counters_.calls_started;
  out.calls_finished = counters_.calls_finished;
  out.queued = counters_.queued;
  out.awaiting_send = counters_.awaiting_send;
  out.in_flight = counters_.in_flight;
  out.connections_opened = counters_.connections_opened;
  return out;
}

void AimlApiUpstream::Loop::Run() {
  util::NameThisThread("vg-upstream");
  inbox_->BindLoopThread();
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
    MoveDueTimers(now);
    Admit(now);  // may run `ready` callbacks that post decisions
    const int wait_ms = inbox_->PostedFromLoop() ? 0 : WaitMs(now);
    curl_multi_poll(multi_, nullptr, 0, wait_ms, nullptr);
  }
  Shutdown();
}

bool AimlApiUpstream::Loop::TakeIncoming() {
  std::deque<std::unique_ptr<Call>> calls;
  std::vector<Decision> decisions;
  if (!inbox_->Take(&calls, &decisions)) return false;
  for (auto& call : calls) {
    if (call->rejected.ok()) {
      Wait(std::move(call));
      continue;
    }
    // Refused before any request; still answered on this thread.
    --counters_.queued;
    const absl::Status status = call->rejected;
    Finish(std::move(call), status);
  }
  const absl::Time now = absl::Now();
  for (const Decision& d : decisions) Decide(d, now);
  return true;
}

void AimlApiUpstream::Loop::Decide(const Decision& d, absl::Time now) {
  auto it = gated_.find(d.gate_id);
  if (it == gated_.end()) return;
  std::unique_ptr<Call> call = std::move(it->second);
  gated_.erase(it);
  --counters_.awaiting_send;
  if (d.send) {
    StartAttempt(std::move(call), now);  // keeps the slot it held
  } else {
    Finish(std::move(call),
           absl::AbortedError("the submit was abandoned before it was sent; "
                              "nothing reached the upstream"));
  }
}

void AimlApiUpstream::Loop::Wait(std::unique_ptr<Call> call) {
  const AdmissionClass cls = call->kind == CallKind::kSubmit
                                 ? AdmissionClass::kSubmit
                                 : AdmissionClass::kRead;
  const std::string lane = call->lane;
  waiting_.Push(cls, lane, std::move(call));
}

void AimlApiUpstream::Loop::MoveDueTimers(absl::Time now) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    Wait(std::move(timers_.begin()->second));
    timers_.erase(timers_.begin());
  }
}

void AimlApiUpstream::Loop::Admit(absl::Time now) {
  const size_t cap = static_cast<size_t>(std::max(1, options_.max_in_flight));
  // Tenants in turn, each one's polls before its submits (AdmissionQueue):
  // a backlog of creates never delays a poll by more than one turn.
  while (!waiting_.empty() && SlotsInUse() < cap && TakeToken(now)) {
    std::unique_ptr<Call> call = waiting_.Pop();
    --counters_.queued;
    if (call->kind == CallKind::kSubmit && !call->gate_opened) {
      OpenGate(std::move(call), now);
    } else {
      StartAttempt(std::move(call), now);
    }
  }
}

void AimlApiUpstream::Loop::OpenGate(std::unique_ptr<Call> call,
                                     absl::Time now) {
  call->gate_opened = true;
  SubmitReadyCallback ready = std::move(call->submit_ready);
  if (!ready) {
    StartAttempt(std::move(call), now);
    return;
  }
  const uint64_t id = ++next_gate_id_;
  gated_.emplace(id, std::move(call));
  ++counters_.awaiting_send;
  // The caller records its intent, then opens the gate from any thread.
  ready(std::make_shared<Gate>(inbox_, id));
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
  if (https_) {
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
    // Never on a reused connection: libcurl would silently resend the POST
    // if that connection turned out dead with no answer byte (see the class
    // comment). A fresh one also makes "handshake never finished" proof
    // that nothing left.
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
  } else {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 0L);
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

bool AimlApiUpstream::Loop::RequestMayHaveLeft(CURL* easy) const {
  curl_off_t connect_us = 0, tls_us = 0;
  long request_bytes = 0;
  curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME_T, &connect_us);
  curl_easy_getinfo(easy, CURLINFO_APPCONNECT_TIME_T, &tls_us);
  curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_bytes);
  const bool handshakes_done = connect_us > 0 && (!https_ || tls_us > 0);
  return handshakes_done || request_bytes > 0;
}

void AimlApiUpstream::Loop::ReadDone() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    Outcome o;
    o.result = msg->data.result;
    curl_multi_remove_handle(multi_, easy);
    auto it = running_.find(easy);
    if (it == running_.end()) continue;
    std::unique_ptr<Call> call = std::move(it->second);
    running_.erase(it);
    if (o.result == CURLE_OK) {
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &o.http);
    }
    o.request_may_have_left = RequestMayHaveLeft(easy);
    if (!HeaderValue(easy, "Retry-After").empty()) {
      curl_off_t seconds = 0;
      curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &seconds);
      o.retry_after = absl::Seconds(std::max<curl_off_t>(0, seconds));
    }
    o.credits_used = HeaderValue(easy, "x-aimlapi-credits-used");
    o.usd_spent = HeaderValue(easy, "x-aimlapi-usd-spent");
    long new_connections = 0;
    curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
    counters_.connections_opened += new_connections;
    idle_easies_.push_back(easy);
    --counters_.in_flight;
    HandleResult(std::move(call), o);
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
  ++counters_
        .attempts[KindIndex(call.kind)][std::clamp<long>(http / 100, 0, 5)];
  if (options_.on_attempt) options_.on_attempt(record);
}

void AimlApiUpstream::Loop::HandleResult(std::unique_ptr<Call> call,
                                         const Outcome& o) {
  Record(*call, o.http, o.result);
  if (o.result == CURLE_OK && o.http >= 200 && o.http < 300) {
    Deliver(std::move(call), o);
    return;
  }
  if (o.result == CURLE_OK) {
    absl::Status error =
        HttpError(call->kind, o.http, call->response, call->attempt,
                  call->upstream_id, options_.api_key);
    if (o.http == 429 && o.retry_after.has_value()) {
      error = WithRetryAfter(error, *o.retry_after);
    }
    if (IsRetryableHttp(call->kind, o.http)) {
      Retry(std::move(call), o.retry_after.value_or(absl::ZeroDuration()),
            error);
    } else {
      Finish(std::move(call), error);
    }
    return;
  }
  if (call->kind == CallKind::kSubmit) {
    HandleSubmitTransportError(std::move(call), o);
    return;
  }
  absl::Status error = TransportError(*call, o.result);
  if (TransientCurlError(o.result)) {
    Retry(std::move(call), absl::ZeroDuration(), error);
  } else {
    Finish(std::move(call), error);
  }
}

void AimlApiUpstream::Loop::HandleSubmitTransportError(
    std::unique_ptr<Call> call, const Outcome& o) {
  const std::string detail =
      call->errbuf[0] != '\0' ? call->errbuf : curl_easy_strerror(o.result);
  const std::string attempts =
      call->attempt > 1 ? absl::StrCat(" after ", call->attempt, " attempts")
                        : "";
  if (PreSendCurlError(o.result) || !o.request_may_have_left) {
    // Provably never left: the only transport failure a submit may retry.
    if (TransientCurlError(o.result)) {
      Retry(std::move(call), absl::ZeroDuration(),
            absl::UnavailableError(absl::StrCat(
                "cannot reach the upstream at ", options_.base_url,
                " for the create request", attempts, " (", detail,
                "); nothing was sent. Check --upstream_url and the "
                "network.")));
    } else {
      Finish(
          std::move(call),
          absl::FailedPreconditionError(absl::StrCat(
              "the create request to ", options_.base_url, " failed (", detail,
              ") before anything was sent; check --upstream_url "
              "and the TLS setup.")));
    }
    return;
  }
  std::string what;
  if (call->too_large) {
    what = absl::StrCat("the upstream's answer to the create request exceeded ",
                        options_.max_response_bytes, " bytes");
  } else if (o.result == CURLE_OPERATION_TIMEDOUT) {
    what = absl::StrCat(
        "the upstream did not answer the create request in "
        "time (",
        detail, "; request timeout ",
        absl::FormatDuration(options_.request_timeout), ")");
  } else {
    what = absl::StrCat("the create request to ", options_.base_url,
                        " failed after it was sent (", detail, ")");
  }
  Finish(std::move(call), absl::UnknownError(absl::StrCat(
                              what, attempts, "; ", kMayHaveCreated, ".")));
}

absl::Status AimlApiUpstream::Loop::TransportError(const Call& call,
                                                   CURLcode result) const {
  const std::string what =
      call.kind == CallKind::kLogs
          ? std::string("usage-log query")
          : absl::StrCat("poll of generation \"", call.upstream_id, "\"");
  const std::string detail =
      call.errbuf[0] != '\0' ? call.errbuf : curl_easy_strerror(result);
  const std::string attempts =
      call.attempt > 1 ? absl::StrCat(" after ", call.attempt, " attempts")
                       : "";
  if (call.too_large) {
    return absl::UnavailableError(
        absl::StrCat("the upstream's answer to the ", what, " exceeded ",
                     options_.max_response_bytes, " bytes."));
  }
  if (result == CURLE_OPERATION_TIMEDOUT) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the upstream did not answer the ", what, " in time", attempts, " (",
        detail, "; connect timeout ",
        absl::FormatDuration(options_.connect_timeout), ", request timeout ",
        absl::FormatDuration(options_.request_timeout), ")."));
  }
  if (TransientCurlError(result)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the upstream at ", options_.base_url, " for the ", what,
        attempts, " (", detail, "); check --upstream_url and the network."));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("the ", what, " to ", options_.base_url, " failed (", detail,
                   "); check --upstream_url."));
}

void AimlApiUpstream::Loop::Retry(std::unique_ptr<Call> call,
                                  absl::Duration server_delay,
                                  const absl::Status& final_status) {
  if (server_delay > options_.max_retry_after) {
    Finish(
        std::move(call),
        Append(final_status,
               absl::StrCat(
                   " The upstream asked to retry after ",
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
  if (!waiting_.empty() && SlotsInUse() < cap &&
      options_.rate_limit_per_second > 0) {
    wait = std::min(
        wait, absl::Seconds((1 - tokens_) / options_.rate_limit_per_second));
  }
  wait = std::max(wait, absl::ZeroDuration());
  return static_cast<int>(
      absl::ToInt64Milliseconds(absl::Ceil(wait, absl::Milliseconds(1))));
}

void AimlApiUpstream::Loop::DeliverSubmit(std::unique_ptr<Call> call,
                                          const Outcome& o) {
  absl::StatusOr<SubmitResult> result = ParseSubmitResult(call->response);
  if (!result.ok()) {
    // A 2xx without a usable id: the job may exist. Never resent.
    Finish(std::move(call),
           absl::UnknownError(absl::StrCat(result.status().message(), "; ",
                                           kMayHaveCreated, ".")));
    return;
  }
  CleanSubmitResult(&*result, options_.api_key);
  result->credits_used = ParseCredits(o.credits_used);
  result->usd_spent = ParseUsd(o.usd_spent);
  SubmitCallback done = std::move(call->submit_done);
  call.reset();
  ++counters_.calls_finished;
  done(*std::move(result));
}

void AimlApiUpstream::Loop::Deliver(std::unique_ptr<Call> call,
                                    const Outcome& o) {
  if (call->kind == CallKind::kSubmit) {
    DeliverSubmit(std::move(call), o);
    return;
  }
  if (call->kind == CallKind::kLogs) {
    absl::StatusOr<LogPage> page =
        ParseLogPage(call->response, call->logs_limit);
    if (!page.ok()) {
      // A garbled page is usually a passing proxy glitch: ask again.
      Retry(std::move(call), absl::ZeroDuration(), page.status());
      return;
    }
    CleanLogPage(&*page, options_.api_key);
    LogsCallback done = std::move(call->logs_done);
    call.reset();
    ++counters_.calls_finished;
    done(*std::move(page));
    return;
  }
  absl::StatusOr<Snapshot> snap = ParseSnapshot(call->response);
  if (!snap.ok()) {
    // A garbled poll answer is usually a passing proxy glitch: poll again.
    Retry(std::move(call), absl::ZeroDuration(), snap.status());
    return;
  }
  if (snap->upstream_id.empty()) snap->upstream_id = call->upstream_id;
  CleanSnapshot(&*snap, options_.api_key);
  // The body's own usage wins; the header is the fallback.
  if (snap->credits_used == 0)
    snap->credits_used = ParseCredits(o.credits_used);
  PollCallback done = std::move(call->poll_done);
  call.reset();
  ++counters_.calls_finished;
  done(*std::move(snap));
}

void AimlApiUpstream::Loop::Finish(std::unique_ptr<Call> call,
                                   absl::Status error) {
  error = CleanStatus(error, options_.api_key);
  ++counters_.calls_finished;
  switch (call->kind) {
    case CallKind::kSubmit: {
      SubmitCallback done = std::move(call->submit_done);
      call.reset();
      done(error);
      return;
    }
    case CallKind::kLogs: {
      LogsCallback done = std::move(call->logs_done);
      call.reset();
      done(error);
      return;
    }
    case CallKind::kPoll: {
      PollCallback done = std::move(call->poll_done);
      call.reset();
      done(error);
      return;
    }
  }
}

void AimlApiUpstream::Loop::Shutdown() {
  const absl::Status cancelled =
      absl::CancelledError("the upstream client is shutting down");
  for (auto& [easy, call] : running_) {
    // Only a create whose request may have gone out is ambiguous.
    const bool maybe_sent =
        call->kind == CallKind::kSubmit && RequestMayHaveLeft(easy);
    curl_multi_remove_handle(multi_, easy);
    curl_easy_cleanup(easy);
    Finish(std::move(call),
           maybe_sent ? absl::UnknownError(absl::StrCat(
                            "the upstream client shut down with the create "
                            "request in flight; ",
                            kMayHaveCreated, "."))
                      : cancelled);
  }
  running_.clear();
  for (auto& [id, call] : gated_) {
    Finish(std::move(call),
           absl::CancelledError("the upstream client is shutting down; the "
                                "create request was never sent"));
  }
  gated_.clear();
  std::vector<std::unique_ptr<Call>> left = waiting_.TakeAll();
  for (auto& [due, call] : timers_) left.push_back(std::move(call));
  timers_.clear();
  for (auto& call : inbox_->TakeLeftovers()) left.push_back(std::move(call));
  counters_.in_flight = 0;
  counters_.queued = 0;
  counters_.awaiting_send = 0;
  for (auto& call : left) Finish(std::move(call), cancelled);
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
    // No "Expect: 100-continue" round trip for bodies over 1 KiB (and no
    // libcurl resend after a 417).
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

absl::Status CheckKey(const std::string& key) {
  for (char c : key) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      return absl::UnauthenticatedError(
          "the API key contains control or non-ASCII characters; check "
          "AIMLAPI_KEY or --api_key_file");
    }
  }
  return absl::OkStatus();
}

// Why a usage-log window cannot be asked for, or OK.
absl::Status CheckLogWindow(absl::Time start, absl::Time end) {
  if (start == absl::InfinitePast() || end == absl::InfiniteFuture() ||
      start == absl::InfiniteFuture() || end == absl::InfinitePast()) {
    return absl::InvalidArgumentError(
        "a usage-log window needs finite start and end times");
  }
  if (!(start < end)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the usage-log window is empty or reversed (start ",
                     IsoUtc(start), ", end ", IsoUtc(end), ")"));
  }
  if (end - start > kMaxLogWindow) {
    return absl::InvalidArgumentError(
        absl::StrCat("the usage-log window is longer than 92 days (start ",
                     IsoUtc(start), ", end ", IsoUtc(end), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

AimlApiUpstream::AimlApiUpstream(AimlApiOptions options) {
  while (!options.base_url.empty() && options.base_url.back() == '/') {
    options.base_url.pop_back();
  }
  options.api_key = std::string(absl::StripAsciiWhitespace(options.api_key));
  absl::Status precheck = CheckKey(options.api_key);
  if (precheck.ok()) {
    precheck = CheckBaseUrl(options.base_url, !options.api_key.empty());
  }
  loop_ = std::make_unique<Loop>(std::move(options), std::move(precheck));
}

AimlApiUpstream::~AimlApiUpstream() = default;

const char* AimlApiUpstream::Path(EndpointFamily family) {
  return family == EndpointFamily::kLegacy
             ? "/v2/generate/video/kling/generation"
             : "/v2/video/generations";
}

absl::Status AimlApiUpstream::CheckBaseUrl(absl::string_view base_url,
                                           bool has_key) {
  const std::string url(base_url);
  CURLU* u = curl_url();
  if (u == nullptr) return absl::ResourceExhaustedError("curl_url failed");
  std::string scheme, host;
  const CURLUcode rc = curl_url_set(u, CURLUPART_URL, url.c_str(), 0);
  if (rc == CURLUE_OK) {
    char* part = nullptr;
    if (curl_url_get(u, CURLUPART_SCHEME, &part, 0) == CURLUE_OK) {
      scheme = absl::AsciiStrToLower(part);
      curl_free(part);
    }
    part = nullptr;
    if (curl_url_get(u, CURLUPART_HOST, &part, 0) == CURLUE_OK) {
      host = part;
      curl_free(part);
    }
  }
  curl_url_cleanup(u);
  if (rc != CURLUE_OK || host.empty()) {
    // The URL itself is not echoed: it might carry credentials.
    return absl::InvalidArgumentError(
        absl::StrCat("--upstream_url is not a valid absolute URL (",
                     rc != CURLUE_OK ? curl_url_strerror(rc) : "no host",
                     "); expected e.g. https://api.aimlapi.com"));
  }
  if (scheme == "https") return absl::OkStatus();
  if (scheme != "http") {
    return absl::InvalidArgumentError(
        absl::StrCat("--upstream_url must be https:// (or http:// to a "
                     "loopback address), not ",
                     StripControl(scheme, false), "://"));
  }
  if (!has_key || IsLoopbackHost(host)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "refusing to send the API key over plain http to \"",
      StripControl(host, false),
      "\": it would cross the network unencrypted. Use https://, or http:// "
      "only to a loopback address (localhost, 127.0.0.1, [::1])."));
}

void AimlApiUpstream::Submit(SubmitRequest request, SubmitReadyCallback ready,
                             SubmitCallback done) {
  auto call = std::make_unique<Call>();
  call->kind = CallKind::kSubmit;
  call->lane = request.tenant;
  call->submit_ready = std::move(ready);
  call->submit_done = std::move(done);
  if (!loop_->precheck().ok()) {
    call->rejected = loop_->precheck();
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
  call->lane = request.tenant;
  call->poll_done = std::move(done);
  if (!loop_->precheck().ok()) {
    call->rejected = loop_->precheck();
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

void AimlApiUpstream::ListLogs(LogQuery query, LogsCallback done) {
  auto call = std::make_unique<Call>();
  call->kind = CallKind::kLogs;
  call->lane = kUsageLogLane;
  call->logs_done = std::move(done);
  // Whole seconds, widened rather than narrowed.
  const absl::Time start =
      absl::FromUnixSeconds(absl::ToUnixSeconds(query.start));
  absl::Time end = absl::FromUnixSeconds(absl::ToUnixSeconds(query.end));
  if (end < query.end) end += absl::Seconds(1);
  absl::Status status = loop_->precheck();
  if (status.ok()) status = CheckLogWindow(query.start, query.end);
  if (!status.ok()) {
    call->rejected = status;
    loop_->Enqueue(std::move(call));
    return;
  }
  const AimlApiOptions& o = loop_->options();
  call->logs_limit = query.limit > 0 ? query.limit : kDefaultLogLimit;
  call->url =
      absl::StrCat(o.base_url, kLogsPath, "?start=", Escape(IsoUtc(start)),
                   "&end=", Escape(IsoUtc(end)));
  for (const std::string& model : query.models) {
    if (!model.empty()) absl::StrAppend(&call->url, "&model=", Escape(model));
  }
  absl::StrAppend(&call->url, "&limit=", call->logs_limit,
                  "&offset=", std::max(0, query.offset));
  call->headers = BuildHeaders(o.api_key, /*json_body=*/false, "", "");
  loop_->Enqueue(std::move(call));
}

UpstreamCounters AimlApiUpstream::counters() const { return loop_->counters(); }

}  // namespace videogen::upstream
