#include "server/webhooks/dispatcher.h"

#include <curl/curl.h>
#include <sys/socket.h>

#include <algorithm>
#include <csignal>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/util/proto_time.h"
#include "server/util/thread_name.h"
#include "server/webhooks/retry_schedule.h"
#include "server/webhooks/signature.h"
#include "server/webhooks/url_policy.h"

namespace videogen::webhooks {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    // A receiver closing its socket must not kill the process.
    std::signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
  });
}

// Time kept in hand at both ends of a lease: an attempt starts only when it
// can finish (timeout included) this long before the lease ends.
constexpr absl::Duration kLeaseMargin = absl::Seconds(5);
// Idle hosts remembered (for their latency) before they are forgotten.
constexpr size_t kMaxIdleHosts = 1024;
// Claimed deliveries waiting for a slot, at most, per max_in_flight.
constexpr int kWaitingPerSlot = 8;
// One host's share of those, at most, so that a few hosts' backlogs never
// stop the other hosts' deliveries from being claimed.
constexpr int kHostShareDivisor = 4;
// How long one host's waiting deliveries may take to start, judged by its
// latency: long enough that a fast host's burst is held here rather than
// handed back and forth through the store, short enough that a slow host
// holds few (and the rest of the outbox stays claimable).
constexpr absl::Duration kMaxDrain = absl::Seconds(2);
// The latency assumed for a host until its first answer. A guess, not a
// promise: the lease safety net in Admit covers a wrong one.
constexpr absl::Duration kInitialLatency = absl::Milliseconds(100);

// A claimed delivery and the host whose slots it needs.
struct Claimed {
  store::Delivery delivery;
  std::string host;        // "" when the URL does not parse (fails at start)
  absl::Time lease_until;  // when our claim on it ends
};

// What the loop knows of one destination host.
struct HostState {
  int running = 0;
  int waiting = 0;
  // Smoothed attempt latency (kInitialLatency until it has answered).
  absl::Duration latency;
  bool answered = false;
};

// One attempt handed to curl. Owned by the loop's running_ map.
struct Attempt {
  Claimed claimed;
  bool check_addresses = true;
  curl_slist* headers = nullptr;
  absl::Time start;
  std::string refused;  // set by the socket check: why an address was refused
  char errbuf[CURL_ERROR_SIZE] = {};

  Attempt() = default;
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;
  ~Attempt() { curl_slist_free_all(headers); }
};

// How an attempt ended.
struct Outcome {
  enum Kind { kDelivered, kGone, kRetry, kPermanent };
  Kind kind = kRetry;
  std::string reason;  // metric label, see AttemptReport
  std::string text;    // for webhook_status.last_result
  int http_status = 0;
  absl::Duration retry_after;  // the receiver's Retry-After, 0 when none
};

// The answer is not read: receivers are told to answer fast and the status
// code is all that matters.
size_t Discard(char*, size_t size, size_t count, void*) { return size * count; }

// Runs on the loop thread right before curl connects, once per address it
// tries, after curl's own (asynchronous) resolution. Checking the address
// actually connected to is what defeats DNS rebinding: there is no second
// lookup that could answer differently.
curl_socket_t OpenCheckedSocket(void* user, curlsocktype /*purpose*/,
                                curl_sockaddr* address) {
  auto* attempt = static_cast<Attempt*>(user);
  const sockaddr* sa = &address->addr;
  if (attempt->check_addresses) {
    if (std::optional<std::string> why = ForbiddenAddressReason(sa)) {
      attempt->refused = absl::StrCat(AddressToString(sa), " is ", *why);
      return CURL_SOCKET_BAD;
    }
  }
  return socket(address->family, address->socktype | SOCK_CLOEXEC,
                address->protocol);
}

bool IsTlsError(CURLcode code) {
  switch (code) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      return true;
    default:
      return false;
  }
}

// "5s", "300ms": short enough for a status line.
std::string Brief(absl::Duration d) {
  return absl::FormatDuration(d >= absl::Seconds(1)
                                  ? absl::Trunc(d, absl::Seconds(1))
                                  : absl::Trunc(d, absl::Milliseconds(1)));
}

Outcome Classify(const Attempt& attempt, CURLcode result, long http,
                 absl::Duration timeout) {
  Outcome o;
  if (result == CURLE_OK) {
    o.http_status = static_cast<int>(http);
    if (http >= 200 && http < 300) {
      o.kind = Outcome::kDelivered;
      o.reason = "delivered";
      o.text = "delivered";
    } else if (http == 410) {
      o.kind = Outcome::kGone;
      o.reason = "gone";
      o.text = "gone (410): deliveries stopped";
    } else if (http >= 300 && http < 400) {
      o.reason = "redirect";
      o.text = absl::StrCat("redirect not followed (http ", http, ")");
    } else {
      o.reason = http >= 500 ? "http_5xx" : "http_4xx";
      o.text = absl::StrCat("http ", http);
    }
    return o;
  }
  const std::string detail = attempt.errbuf[0] != '\0'
                                 ? std::string(attempt.errbuf)
                                 : std::string(curl_easy_strerror(result));
  if (!attempt.refused.empty()) {
    o.reason = "address_refused";
    o.text = absl::StrCat("address refused: ", attempt.refused);
  } else if (result == CURLE_OPERATION_TIMEDOUT) {
    o.reason = "timeout";
    o.text = absl::StrCat("no answer within ", absl::FormatDuration(timeout));
  } else if (result == CURLE_COULDNT_RESOLVE_HOST) {
    o.reason = "dns";
    o.text = absl::StrCat("host does not resolve (", detail, ")");
  } else if (result == CURLE_COULDNT_CONNECT) {
    o.reason = "connect";
    o.text = absl::StrCat("cannot connect (", detail, ")");
  } else if (IsTlsError(result)) {
    o.reason = "tls";
    o.text = absl::StrCat("TLS failed (", detail, ")");
  } else if (result == CURLE_UNSUPPORTED_PROTOCOL) {
    o.kind = Outcome::kPermanent;
    o.reason = "invalid_url";
    o.text = absl::StrCat("scheme not allowed (", detail, ")");
  } else {
    o.reason = "transport";
    o.text = absl::StrCat("transport error (", detail, ")");
  }
  return o;
}

// Per-key counters that forget keys at zero, so maps keyed by generation do
// not grow with every key ever seen.
int Count(const std::map<std::string, int>& counts, const std::string& key) {
  auto it = counts.find(key);
  return it == counts.end() ? 0 : it->second;
}

void Decrement(std::map<std::string, int>& counts, const std::string& key) {
  auto it = counts.find(key);
  if (it != counts.end() && --it->second <= 0) counts.erase(it);
}

}  // namespace

// The loop. Kick(), Stop() and stats() run on any thread; everything else
// runs on the loop thread, which alone touches curl handles and the fields
// below the "Loop thread only" line.
class Dispatcher::Loop {
 public:
  Loop(store::Store* store, DispatcherOptions options);
  ~Loop();

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Kick();
  void Stop();
  DispatcherStats stats() const;

 private:
  void Run();
  // False once stopping; sets *kicked when Kick() was called since.
  bool TakeSignals(bool* kicked);
  int ClaimLimit() const;
  void Claim(absl::Time now);
  HostState& Host(const std::string& host);
  int WaitingCap(const HostState& host) const;
  void Admit(absl::Time now);
  void HandBack(const Claimed& claimed, absl::Time next_attempt);
  void StartAttempt(Claimed claimed, absl::Time now);
  void ReadDone();
  void Conclude(const Claimed& claimed, const Outcome& outcome,
                absl::Time start, absl::Time now);
  absl::Duration RetryDelay(int attempts_made, absl::Duration retry_after);
  void Release(const Claimed& claimed);
  void DropWaiting(const std::string& generation_id);
  void RecordStatus(const std::string& generation_id, const Outcome& outcome,
                    const std::string& text, bool settled, absl::Time now);
  void StoreError(std::string_view operation, const absl::Status& status);
  int WaitMs(absl::Time now) const;
  void Shutdown();

  store::Store* const store_;
  const DispatcherOptions options_;
  CURLM* multi_ = nullptr;
  std::once_flag stop_once_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> waiting_count_{0};
  std::atomic<int64_t> attempts_{0};

  // Loop thread only.
  std::deque<Claimed> waiting_;
  std::map<CURL*, std::unique_ptr<Attempt>> running_;
  std::map<std::string, HostState> hosts_;
  std::map<std::string, int> generation_held_;  // waiting + running
  std::set<std::string> generation_running_;
  std::set<int64_t> held_;  // seqs waiting or running
  std::mt19937_64 rng_;
  absl::Time next_claim_ = absl::InfinitePast();
  // The last claim filled its limit: the outbox may hold more that is due.
  bool backlog_ = false;
  // Claim again without waiting for the poll: set by a full claim that
  // handed nothing back, or by a finished attempt while backlog_; cleared
  // while deliveries wait here.
  bool claim_again_ = false;

  std::thread thread_;
};

Dispatcher::Loop::Loop(store::Store* store, DispatcherOptions options)
    : store_(store), options_(std::move(options)) {
  GlobalInit();
  rng_.seed(options_.seed != 0 ? options_.seed : std::random_device{}());
  multi_ = curl_multi_init();
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(options_.max_per_host));
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS,
                    static_cast<long>(options_.max_in_flight));
}

Dispatcher::Loop::~Loop() {
  Stop();
  curl_multi_cleanup(multi_);
}

void Dispatcher::Loop::Kick() {
  absl::MutexLock lock(&mu_);
  kicked_ = true;
  // Under the lock: multi_ is alive until Stop() has joined the thread.
  if (!stopping_) curl_multi_wakeup(multi_);
}

void Dispatcher::Loop::Stop() {
  std::call_once(stop_once_, [this] {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      curl_multi_wakeup(multi_);
    }
    if (thread_.joinable()) thread_.join();
  });
}

DispatcherStats Dispatcher::Loop::stats() const {
  DispatcherStats out;
  out.in_flight = in_flight_;
  out.waiting = waiting_count_;
  out.attempts = attempts_;
  return out;
}

bool Dispatcher::Loop::TakeSignals(bool* kicked) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  *kicked = kicked_;
  kicked_ = false;
  return true;
}

int Dispatcher::Loop::ClaimLimit() const {
  // Free slots, not free slots minus waiting deliveries: those wait for
  // their own (busy) host, and must not stop other hosts' deliveries from
  // being claimed. The second bound only caps memory.
  const int running = static_cast<int>(running_.size());
  const int waiting = static_cast<int>(waiting_.size());
  return std::min(options_.max_in_flight - running,
                  kWaitingPerSlot * options_.max_in_flight - waiting);
}

void Dispatcher::Loop::Run() {
  util::NameThisThread("vg-webhooks");
  bool kicked = false;
  while (TakeSignals(&kicked)) {
    absl::Time now = absl::Now();
    if (kicked || now >= next_claim_ || (claim_again_ && ClaimLimit() > 0)) {
      Claim(now);
    }
    Admit(now);
    int still_running = 0;
    curl_multi_perform(multi_, &still_running);
    ReadDone();
    // Slots freed by finished attempts go to waiting deliveries at once.
    now = absl::Now();
    Admit(now);
    curl_multi_poll(multi_, nullptr, 0, WaitMs(now), nullptr);
  }
  Shutdown();
}

int Dispatcher::Loop::WaitMs(absl::Time now) const {
  if (claim_again_ && ClaimLimit() > 0) return 0;
  absl::Duration wait = std::min(absl::Seconds(1), next_claim_ - now);
  wait = std::max(wait, absl::ZeroDuration());
  return static_cast<int>(
      absl::ToInt64Milliseconds(absl::Ceil(wait, absl::Milliseconds(1))));
}

void Dispatcher::Loop::Claim(absl::Time now) {
  next_claim_ = now + options_.poll_interval;
  // Idle hosts are remembered for their latency, up to a point. Only here:
  // no HostState reference is held across a Claim.
  if (hosts_.size() > kMaxIdleHosts) {
    for (auto it = hosts_.begin(); it != hosts_.end();) {
      const bool idle = it->second.running == 0 && it->second.waiting == 0;
      it = idle ? hosts_.erase(it) : std::next(it);
    }
  }
  const int limit = ClaimLimit();
  if (limit <= 0) return;
  const absl::Time until = now + options_.lease;
  absl::StatusOr<std::vector<store::Delivery>> claimed =
      store_->ClaimDeliveries(options_.owner, now, until, limit);
  if (!claimed.ok()) {
    backlog_ = claim_again_ = false;
    StoreError("ClaimDeliveries", claimed.status());
    return;
  }
  int handed_back = 0;
  for (store::Delivery& d : *claimed) {
    // Ours already: its lease lapsed while it waited here. Keep one copy.
    if (held_.count(d.seq) != 0) continue;
    Claimed c;
    absl::StatusOr<WebhookUrl> url =
        ParseWebhookUrl(d.url, options_.allow_insecure);
    if (url.ok()) c.host = url->host;
    c.delivery = std::move(d);
    c.lease_until = until;
    HostState& host = Host(c.host);
    // A host keeps only as many deliveries waiting here as its slots start
    // within kMaxDrain; the rest go back to the outbox for a moment, so a
    // slow receiver's backlog never takes the room others need.
    if (!c.host.empty() && host.waiting >= WaitingCap(host)) {
      absl::Status s = store_->RetryDelivery(
          c.delivery.seq, c.delivery.attempts, now + options_.host_busy_defer);
      if (!s.ok()) StoreError("RetryDelivery", s);
      ++handed_back;
      continue;
    }
    ++host.waiting;
    ++generation_held_[c.delivery.generation_id];
    held_.insert(c.delivery.seq);
    waiting_.push_back(std::move(c));
    ++waiting_count_;
  }
  // Claim again at once while the outbox has more and claiming makes
  // progress. After handing some back, the next claim waits for an attempt
  // to finish (its host's latency is better known then) or for the poll.
  backlog_ = static_cast<int>(claimed->size()) >= limit;
  claim_again_ = backlog_ && handed_back == 0;
}

HostState& Dispatcher::Loop::Host(const std::string& host) {
  auto [it, inserted] = hosts_.try_emplace(host);
  if (inserted) {
    it->second.latency = std::min(kInitialLatency, options_.timeout);
  }
  return it->second;
}

int Dispatcher::Loop::WaitingCap(const HostState& host) const {
  // Each slot starts the next waiting delivery about once per `latency`.
  const absl::Duration drain =
      std::min(kMaxDrain, options_.lease - options_.timeout - 2 * kLeaseMargin);
  const int64_t rounds =
      drain / std::max(host.latency, absl::Microseconds(100));
  const int64_t cap = options_.max_per_host * std::max<int64_t>(rounds, 1);
  const int share =
      kWaitingPerSlot * options_.max_in_flight / kHostShareDivisor;
  return static_cast<int>(
      std::min<int64_t>(cap, std::max(options_.max_per_host, share)));
}

void Dispatcher::Loop::Admit(absl::Time now) {
  std::vector<Claimed> start;
  std::vector<Claimed> late;
  int running = static_cast<int>(running_.size());
  std::set<std::string> generation_starting;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    // Safety net when a host turned slow: never start an attempt that could
    // outlive our lease (another replica may claim it then).
    if (now + options_.timeout + kLeaseMargin > it->lease_until) {
      --Host(it->host).waiting;
      --waiting_count_;
      late.push_back(std::move(*it));
      it = waiting_.erase(it);
      continue;
    }
    const std::string& gen = it->delivery.generation_id;
    HostState& host = Host(it->host);
    // One attempt per generation at a time: its webhook_status is a
    // read-modify-write, and receivers see its events in order.
    if (running >= options_.max_in_flight ||
        host.running >= options_.max_per_host ||
        generation_running_.count(gen) != 0 ||
        generation_starting.count(gen) != 0) {
      ++it;
      continue;
    }
    generation_starting.insert(gen);
    ++host.running;  // taken now; StartAttempt gives it back on failure
    --host.waiting;
    --waiting_count_;
    ++running;
    start.push_back(std::move(*it));
    it = waiting_.erase(it);
  }
  for (const Claimed& c : late) HandBack(c, now);
  for (Claimed& c : start) StartAttempt(std::move(c), now);
  // Claiming more while some wait would only queue more here (or hand them
  // back): the next claim waits for a finished attempt or the poll.
  if (!waiting_.empty()) claim_again_ = false;
}

void Dispatcher::Loop::HandBack(const Claimed& claimed,
                                absl::Time next_attempt) {
  absl::Status s = store_->RetryDelivery(
      claimed.delivery.seq, claimed.delivery.attempts, next_attempt);
  if (!s.ok()) StoreError("RetryDelivery", s);
  Release(claimed);
}

void Dispatcher::Loop::StartAttempt(Claimed claimed, absl::Time now) {
  const store::Delivery& d = claimed.delivery;
  // A receiver may have answered 410 for an earlier event of this generation
  // since the claim (on another replica): then this one is not sent. The
  // store queues nothing for the generation after that, so checking here,
  // right before the request, closes the gap.
  absl::StatusOr<std::optional<store::Record>> record =
      store_->Get(d.generation_id);
  if (!record.ok()) {
    StoreError("Get", record.status());
    --Host(claimed.host).running;
    HandBack(claimed, now);  // unattempted; it is due again at once
    return;
  }
  if (record->has_value() && (*record)->webhooks_gone) {
    --Host(claimed.host).running;
    absl::Status s = store_->FinishDelivery(d.seq);
    if (!s.ok()) StoreError("FinishDelivery", s);
    Release(claimed);
    DropWaiting(d.generation_id);
    if (backlog_) claim_again_ = true;  // the slot is free again
    return;
  }
  // Failures before any request: the slot Admit took goes back first.
  const auto fail = [&](Outcome::Kind kind, std::string reason,
                        std::string text) {
    --Host(claimed.host).running;
    Outcome o;
    o.kind = kind;
    o.reason = std::move(reason);
    o.text = std::move(text);
    Conclude(claimed, o, now, absl::Now());
  };
  absl::StatusOr<WebhookUrl> url =
      ParseWebhookUrl(d.url, options_.allow_insecure);
  if (!url.ok()) {
    fail(Outcome::kPermanent, "invalid_url",
         std::string(url.status().message()));
    return;
  }
  absl::StatusOr<std::string> secret = options_.secret_for(d.tenant);
  if (!secret.ok()) {
    // The lookup's message may name the tenant but never holds a secret.
    fail(Outcome::kRetry, "no_secret",
         absl::StrCat("no webhook secret (",
                      absl::StatusCodeToString(secret.status().code()), ")"));
    return;
  }
  const std::string id = WebhookId(d.generation_id, d.revision);
  const int64_t timestamp = absl::ToUnixSeconds(now);
  absl::StatusOr<std::string> signature = Sign(*secret, id, timestamp, d.body);
  if (!signature.ok()) {
    fail(Outcome::kRetry, "no_secret",
         "the tenant's webhook secret is malformed");
    return;
  }

  auto attempt = std::make_unique<Attempt>();
  attempt->check_addresses = !options_.allow_insecure;
  attempt->start = now;
  curl_slist* h = nullptr;
  h = curl_slist_append(h, "Content-Type: application/json");
  h = curl_slist_append(h, "Expect:");  // no 100-continue round trip
  h = curl_slist_append(h, absl::StrCat("webhook-id: ", id).c_str());
  h = curl_slist_append(h,
                        absl::StrCat("webhook-timestamp: ", timestamp).c_str());
  h = curl_slist_append(
      h, absl::StrCat("webhook-signature: ", *signature).c_str());
  attempt->headers = h;
  attempt->claimed = std::move(claimed);
  const store::Delivery& del = attempt->claimed.delivery;

  CURL* easy = curl_easy_init();
  if (easy == nullptr || h == nullptr) {
    if (easy != nullptr) curl_easy_cleanup(easy);
    --Host(attempt->claimed.host).running;
    Outcome o;
    o.reason = "transport";
    o.text = "out of memory starting the request";
    Conclude(attempt->claimed, o, now, absl::Now());
    return;
  }
  curl_easy_setopt(easy, CURLOPT_URL, del.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR,
                   options_.allow_insecure ? "http,https" : "https");
  // A proxy from the environment would connect on our behalf, past the
  // address check.
  curl_easy_setopt(easy, CURLOPT_PROXY, "");
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(
      easy, CURLOPT_TIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.timeout)));
  curl_easy_setopt(easy, CURLOPT_POST, 1L);
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, del.body.data());
  curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                   static_cast<curl_off_t>(del.body.size()));
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, attempt->headers);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Discard);
  curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, &OpenCheckedSocket);
  curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, attempt.get());
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, attempt->errbuf);
  curl_easy_setopt(easy, CURLOPT_PRIVATE, attempt.get());
  if (curl_multi_add_handle(multi_, easy) != CURLM_OK) {
    curl_easy_cleanup(easy);
    --Host(attempt->claimed.host).running;
    Outcome o;
    o.reason = "transport";
    o.text = "libcurl refused a new transfer";
    Conclude(attempt->claimed, o, now, absl::Now());
    return;
  }
  generation_running_.insert(del.generation_id);
  ++in_flight_;
  running_[easy] = std::move(attempt);
}

void Dispatcher::Loop::ReadDone() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    const CURLcode result = msg->data.result;
    curl_multi_remove_handle(multi_, easy);
    auto it = running_.find(easy);
    if (it == running_.end()) {
      curl_easy_cleanup(easy);
      continue;
    }
    std::unique_ptr<Attempt> attempt = std::move(it->second);
    running_.erase(it);
    long http = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http);
    curl_off_t retry_after = 0;
    curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after);
    curl_easy_cleanup(easy);
    --in_flight_;
    generation_running_.erase(attempt->claimed.delivery.generation_id);
    const absl::Time now = absl::Now();
    HostState& host = Host(attempt->claimed.host);
    --host.running;
    // The first answer replaces the initial guess; later ones are smoothed.
    const absl::Duration took = now - attempt->start;
    host.latency = host.answered ? host.latency * 0.7 + took * 0.3 : took;
    host.answered = true;
    if (backlog_) claim_again_ = true;  // a slot is free, and more is due
    Outcome o = Classify(*attempt, result, http, options_.timeout);
    o.retry_after = absl::Seconds(std::max<curl_off_t>(0, retry_after));
    Conclude(attempt->claimed, o, attempt->start, now);
  }
}

absl::Duration Dispatcher::Loop::RetryDelay(int attempts_made,
                                            absl::Duration retry_after) {
  const absl::Duration scheduled = Jittered(
      options_.retry_schedule[attempts_made - 1], options_.jitter, rng_);
  // The receiver knows its own recovery time; it only ever lengthens ours.
  return std::max(scheduled, std::min(retry_after, options_.max_retry_after));
}

void Dispatcher::Loop::Conclude(const Claimed& claimed, const Outcome& outcome,
                                absl::Time start, absl::Time now) {
  const store::Delivery& d = claimed.delivery;
  const int attempts_made = d.attempts + 1;
  ++attempts_;
  if (options_.hooks.on_attempt) {
    AttemptReport report;
    report.reason = outcome.reason;
    report.http_status = outcome.http_status;
    report.attempt = attempts_made;
    report.latency = now - start;
    report.queue_age = std::max(absl::ZeroDuration(), start - d.created);
    options_.hooks.on_attempt(report);
  }
  const bool others_held = Count(generation_held_, d.generation_id) > 1;
  std::string text = outcome.text;
  bool settled = false;
  std::string ended;  // outcome for on_settled; empty while retrying
  absl::Status s;
  if (outcome.kind == Outcome::kDelivered) {
    s = store_->FinishDelivery(d.seq);
    if (!s.ok()) StoreError("FinishDelivery", s);
    settled = !others_held;
    ended = "delivered";
  } else if (outcome.kind == Outcome::kGone) {
    s = store_->DropDeliveries(d.generation_id);
    if (!s.ok()) StoreError("DropDeliveries", s);
    DropWaiting(d.generation_id);
    settled = true;
    ended = "gone";
  } else if (outcome.kind == Outcome::kPermanent ||
             attempts_made > static_cast<int>(options_.retry_schedule.size())) {
    s = store_->FinishDelivery(d.seq);
    if (!s.ok()) StoreError("FinishDelivery", s);
    absl::StrAppend(&text, "; gave up after ", attempts_made,
                    attempts_made == 1 ? " attempt" : " attempts");
    settled = !others_held;
    ended = "gave_up";
  } else {
    const absl::Duration delay = RetryDelay(attempts_made, outcome.retry_after);
    s = store_->RetryDelivery(d.seq, attempts_made, now + delay);
    if (!s.ok()) StoreError("RetryDelivery", s);
    absl::StrAppend(&text, ", retrying in ", Brief(delay));
  }
  Release(claimed);
  if (!ended.empty() && options_.hooks.on_settled) {
    options_.hooks.on_settled(ended, now - d.created);
  }
  RecordStatus(d.generation_id, outcome, text, settled, now);
}

void Dispatcher::Loop::Release(const Claimed& claimed) {
  const std::string& gen = claimed.delivery.generation_id;
  held_.erase(claimed.delivery.seq);
  Decrement(generation_held_, gen);
}

void Dispatcher::Loop::DropWaiting(const std::string& generation_id) {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (it->delivery.generation_id != generation_id) {
      ++it;
      continue;
    }
    --Host(it->host).waiting;
    --waiting_count_;
    Release(*it);
    it = waiting_.erase(it);
  }
}

void Dispatcher::Loop::RecordStatus(const std::string& generation_id,
                                    const Outcome& outcome,
                                    const std::string& text, bool settled,
                                    absl::Time now) {
  // attempts counts across all events of the generation, so it builds on
  // what the store holds (one attempt per generation at a time here).
  absl::StatusOr<std::optional<store::Record>> record =
      store_->Get(generation_id);
  if (!record.ok()) {
    StoreError("Get", record.status());
    return;
  }
  if (!record->has_value()) return;  // purged meanwhile
  v1::WebhookStatus status;
  status.set_attempts((*record)->generation.webhook_status().attempts() + 1);
  status.set_last_http_status(outcome.http_status);
  status.set_last_result(text);
  *status.mutable_last_attempt_time() = util::ToTimestamp(now);
  status.set_settled(settled);
  absl::Status s = store_->SetWebhookStatus(generation_id, status);
  if (!s.ok()) StoreError("SetWebhookStatus", s);
}

void Dispatcher::Loop::StoreError(std::string_view operation,
                                  const absl::Status& status) {
  if (options_.hooks.on_store_error) {
    options_.hooks.on_store_error(operation, status);
  }
}

void Dispatcher::Loop::Shutdown() {
  // In flight: abandoned. The receiver may have the request already, so the
  // lease is left to expire and the delivery is retried (at least once).
  for (auto& [easy, attempt] : running_) {
    curl_multi_remove_handle(multi_, easy);
    curl_easy_cleanup(easy);
  }
  running_.clear();
  in_flight_ = 0;
  // Never started: handed back at once, no attempt counted.
  const absl::Time now = absl::Now();
  for (const Claimed& c : waiting_) HandBack(c, now);
  waiting_.clear();
  waiting_count_ = 0;
}

Dispatcher::Dispatcher(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

Dispatcher::~Dispatcher() { Stop(); }

absl::StatusOr<std::unique_ptr<Dispatcher>> Dispatcher::Create(
    store::Store* store, DispatcherOptions options) {
  if (store == nullptr) return absl::InvalidArgumentError("no store");
  if (options.owner.empty()) {
    return absl::InvalidArgumentError(
        "the webhook dispatcher needs an owner (the replica id)");
  }
  if (!options.secret_for) {
    return absl::InvalidArgumentError(
        "the webhook dispatcher needs a secret lookup");
  }
  if (options.max_in_flight <= 0 || options.max_per_host <= 0 ||
      options.timeout <= absl::ZeroDuration() ||
      options.poll_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "webhook dispatcher limits and durations must be positive");
  }
  options.lease =
      std::max(options.lease, 2 * options.timeout + absl::Seconds(10));
  auto loop = std::make_unique<Loop>(store, std::move(options));
  loop->Start();
  return std::unique_ptr<Dispatcher>(new Dispatcher(std::move(loop)));
}

void Dispatcher::Kick() { loop_->Kick(); }

void Dispatcher::Stop() { loop_->Stop(); }

DispatcherStats Dispatcher::stats() const { return loop_->stats(); }

}  // namespace videogen::webhooks
