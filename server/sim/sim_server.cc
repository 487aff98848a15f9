#include "server/sim/sim_server.h"

#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "server/sim/elastic_pool.h"
#include "server/sim/mp4.h"

namespace videogen::sim {
namespace {

using nlohmann::json;

constexpr char kLegacyPath[] = "/v2/generate/video/kling/generation";
constexpr char kNewPath[] = "/v2/video/generations";
constexpr char kLegacySuffix[] = ":kling-video/v2/master/text-to-video";
constexpr char kLogsPath[] = "/v2/logs";
constexpr char kFilesRoute[] = "GET /files";
constexpr char kDefaultModel[] = "klingai/v2-master-text-to-video";
constexpr size_t kMaxPromptChars = 2500;
constexpr int kMaxLogsLimit = 100;
constexpr absl::Duration kMaxLogsWindow = absl::Hours(24 * 92);
constexpr int64_t kTokensPerSecond = 24000;

// One simulated upstream task. Its state is a function of the clock.
struct Job {
  std::string id;
  std::string uuid;  // names the video file
  absl::Time created;
  int duration = 5;
  bool fails = false;
  bool detail_error = false;  // fails with the {"detail":[...]} shape
};

enum class Phase { kQueued, kGenerating, kCompleted, kError };

// Deterministic random numbers (splitmix64), so a seed replays a run.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double Unit() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t state_;
};

std::string Uuid4(Rng& rng) {
  uint64_t hi = rng.Next();
  uint64_t lo = rng.Next();
  hi = (hi & ~0xf000ULL) | 0x4000ULL;              // version 4
  lo = (lo & ~(0xc0ULL << 56)) | (0x80ULL << 56);  // RFC 4122 variant
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32,
                         (hi >> 16) & 0xffff, hi & 0xffff, lo >> 48,
                         lo & 0xffffffffffffULL);
}

size_t Utf8Chars(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  });
}

const char* StatusWord(Phase phase, bool odd) {
  switch (phase) {
    case Phase::kQueued:
      return odd ? "waiting" : "queued";
    case Phase::kGenerating:
      return odd ? "active" : "generating";
    case Phase::kCompleted:
      return odd ? "succeeded" : "completed";
    case Phase::kError:
      return odd ? "failed" : "error";
  }
  return "queued";
}

// Parses the create body like the upstream does; returns the problems.
std::vector<std::string> Validate(const json& body, int* duration) {
  std::vector<std::string> errors;
  if (!body.is_object()) return {"body must be a JSON object"};
  auto present = [&](const char* k) {
    return body.contains(k) && !body[k].is_null();
  };
  if (!present("prompt") || !body["prompt"].is_string()) {
    errors.push_back("prompt is required");
  } else {
    const auto& p = body["prompt"].get_ref<const std::string&>();
    if (absl::StripAsciiWhitespace(p).empty()) {
      errors.push_back("prompt must not be empty");
    }
    if (Utf8Chars(p) > kMaxPromptChars) {
      errors.push_back("prompt must be at most 2500 characters");
    }
  }
  if (present("negative_prompt")) {
    const json& n = body["negative_prompt"];
    if (!n.is_string() ||
        Utf8Chars(n.get_ref<const std::string&>()) > kMaxPromptChars) {
      errors.push_back("negative_prompt must be a string of at most 2500");
    }
  }
  if (present("model") && !body["model"].is_string()) {
    errors.push_back("model must be a string");
  }
  if (present("aspect_ratio")) {
    const json& a = body["aspect_ratio"];
    if (!a.is_string() || (a != "16:9" && a != "9:16" && a != "1:1")) {
      errors.push_back("aspect_ratio must be one of 16:9, 9:16, 1:1");
    }
  }
  if (present("duration")) {
    const json& d = body["duration"];
    double v = 0;
    bool ok = false;
    if (d.is_number()) {
      v = d.get<double>();
      ok = true;
    } else if (d.is_string()) {
      ok = absl::SimpleAtod(d.get_ref<const std::string&>(), &v);
    }
    if (!ok || (v != 5 && v != 10)) {
      errors.push_back("duration must be 5 or 10");
    } else {
      *duration = static_cast<int>(v);
    }
  }
  if (present("cfg_scale")) {
    const json& c = body["cfg_scale"];
    if (!c.is_number() || c.get<double>() < 0 || c.get<double>() > 1) {
      errors.push_back("cfg_scale must be a number in 0..1");
    }
  }
  if (present("image_url") && !body["image_url"].is_string()) {
    errors.push_back("image_url must be a string");
  }
  return errors;
}

bool IsHttpError(FaultKind kind) {
  switch (kind) {
    case FaultKind::k429:
    case FaultKind::k429NoRetryAfter:
    case FaultKind::k500:
    case FaultKind::k502:
    case FaultKind::k503:
    case FaultKind::k504:
      return true;
    default:
      return false;
  }
}

// The faults that make the job and then spoil the answer.
bool IsCreateOnly(FaultKind kind) {
  switch (kind) {
    case FaultKind::kCreateThen500:
    case FaultKind::kCreateThenReset:
    case FaultKind::kCreateThenSlow:
    case FaultKind::kCreate2xxNoId:
      return true;
    default:
      return false;
  }
}

int PortOf(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  }
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  }
  return -1;
}

// Drops the connection that carries `req` without a byte of answer, with a
// TCP reset once cpp-httplib closes it. cpp-httplib gives handlers no socket,
// so ours is found among the process's descriptors by its two ports (the
// server's port and the client's). Closing is left to cpp-httplib: its next
// write fails (SIGPIPE is ignored by httplib::Server) and it closes the
// descriptor itself, so no descriptor is closed twice. Returns false when
// the socket was not found.
bool DropConnection(const httplib::Request& req, int server_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return false;
  bool dropped = false;
  while (dirent* entry = readdir(dir)) {
    int fd = std::atoi(entry->d_name);
    if (fd <= 2 || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        PortOf(local) != server_port ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        PortOf(peer) != req.remote_port) {
      continue;
    }
    linger reset{1, 0};  // close() then sends RST instead of FIN
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    shutdown(fd, SHUT_RDWR);
    dropped = true;
    break;
  }
  closedir(dir);
  return dropped;
}

// ISO 8601 as the usage log takes it: RFC 3339 with an offset or Z, the same
// without a zone (UTC), or a bare date (midnight UTC).
bool ParseIsoTime(const std::string& text, absl::Time* t) {
  std::string err;
  for (const char* format :
       {"%Y-%m-%d%ET%H:%M:%E*S%Ez", "%Y-%m-%d%ET%H:%M:%E*S", "%Y-%m-%d"}) {
    if (absl::ParseTime(format, text, absl::UTCTimeZone(), t, &err)) {
      return true;
    }
  }
  return false;
}

std::string IsoTime(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

// The query of one GET /v2/logs, validated.
struct LogFilter {
  absl::Time start;
  absl::Time end;
  std::set<std::string> models;    // empty: all
  std::set<std::string> statuses;  // empty: all
  int limit = kMaxLogsLimit;
  int offset = 0;
};

// Parses the usage-log query like the upstream: `period` or both `start`
// and `end`, at most 92 days; repeated `model`/`status` (a comma inside one
// value is part of that value); `limit` 1..100 and `offset` >= 0.
absl::StatusOr<LogFilter> ParseLogFilter(const httplib::Request& req,
                                         absl::Time now) {
  LogFilter f;
  const bool has_start = req.has_param("start");
  const bool has_end = req.has_param("end");
  if (req.has_param("period")) {
    if (has_start || has_end) {
      return absl::InvalidArgumentError(
          "use either period or start and end, not both");
    }
    const std::string period = req.get_param_value("period");
    if (period == "24h") {
      f.start = now - absl::Hours(24);
    } else if (period == "7d") {
      f.start = now - absl::Hours(24 * 7);
    } else {
      return absl::InvalidArgumentError("period must be one of 24h, 7d");
    }
    f.end = now;
  } else {
    if (!has_start || !has_end) {
      return absl::InvalidArgumentError(
          "either period or both start and end are required");
    }
    if (!ParseIsoTime(req.get_param_value("start"), &f.start)) {
      return absl::InvalidArgumentError("start must be an ISO 8601 date");
    }
    if (!ParseIsoTime(req.get_param_value("end"), &f.end)) {
      return absl::InvalidArgumentError("end must be an ISO 8601 date");
    }
    if (f.end < f.start) {
      return absl::InvalidArgumentError("end must not be before start");
    }
    if (f.end - f.start > kMaxLogsWindow) {
      return absl::InvalidArgumentError(
          "the window between start and end must be at most 92 days");
    }
  }
  for (size_t i = 0; i < req.get_param_value_count("model"); ++i) {
    f.models.insert(req.get_param_value("model", i));
  }
  for (size_t i = 0; i < req.get_param_value_count("status"); ++i) {
    std::string status = req.get_param_value("status", i);
    if (status != "succeeded" && status != "failed") {
      return absl::InvalidArgumentError(
          "status must be one of succeeded, failed");
    }
    f.statuses.insert(std::move(status));
  }
  if (req.has_param("limit") &&
      (!absl::SimpleAtoi(req.get_param_value("limit"), &f.limit) ||
       f.limit < 1 || f.limit > kMaxLogsLimit)) {
    return absl::InvalidArgumentError("limit must be an integer in 1..100");
  }
  if (req.has_param("offset") &&
      (!absl::SimpleAtoi(req.get_param_value("offset"), &f.offset) ||
       f.offset < 0)) {
    return absl::InvalidArgumentError("offset must be an integer >= 0");
  }
  return f;
}

bool Matches(const LogFilter& f, const UsageRow& row) {
  return row.created >= f.start && row.created <= f.end &&
         (f.models.empty() || f.models.count(row.model) > 0) &&
         (f.statuses.empty() || f.statuses.count(row.status) > 0);
}

json RowJson(const UsageRow& row) {
  return {
      {"created", IsoTime(row.created)},
      {"status", row.status},
      {"origin", row.origin},
      {"model", row.model},
      {"cost", {{"usd", row.cost_usd}, {"credits", row.cost_credits}}},
      {"tokens",
       {{"input", row.tokens_input},
        {"output", row.tokens_output},
        {"total", row.tokens_total}}},
      {"request_id", row.request_id},
      {"inference_id", row.inference_id},
      {"client_request_id",
       row.client_request_id ? json(*row.client_request_id) : json(nullptr)}};
}

// Serves `body` with its full Content-Length but writes only about half of
// it, then fails the write: cpp-httplib closes the connection mid-response.
void SetCutContent(httplib::Response& res, std::string body,
                   const char* content_type) {
  auto data = std::make_shared<std::string>(std::move(body));
  auto wrote = std::make_shared<bool>(false);
  res.set_content_provider(
      data->size(), content_type,
      [data, wrote](size_t offset, size_t length, httplib::DataSink& sink) {
        if (*wrote) return false;
        *wrote = true;
        sink.write(data->data() + offset, std::max<size_t>(1, length / 2));
        return true;
      });
}

// Debian's libcpp-httplib listens with a backlog of 5: a burst of connects
// overflows it and the kernel drops SYNs (1 s retransmit each). Listening
// again on the bound socket raises the backlog; the socket is protected.
class HttpServer : public httplib::Server {
 public:
  void RaiseBacklog(int backlog) { ::listen(svr_sock_, backlog); }
};

}  // namespace

std::string FaultKindName(FaultKind kind) {
  switch (kind) {
    case FaultKind::k429:
      return "429";
    case FaultKind::k429NoRetryAfter:
      return "429_no_retry_after";
    case FaultKind::k500:
      return "500";
    case FaultKind::k502:
      return "502";
    case FaultKind::k503:
      return "503";
    case FaultKind::k504:
      return "504";
    case FaultKind::kSlow:
      return "slow";
    case FaultKind::kReset:
      return "reset";
    case FaultKind::kMalformedJson:
      return "malformed_json";
    case FaultKind::kOddStatus:
      return "odd_status";
    case FaultKind::kCreateThen500:
      return "create_then_500";
    case FaultKind::kCreateThenReset:
      return "create_then_reset";
    case FaultKind::kCreateThenSlow:
      return "create_then_slow";
    case FaultKind::kCreate2xxNoId:
      return "create_2xx_no_id";
  }
  return "unknown";
}

absl::StatusOr<FaultRule> ParseFaultRule(absl::string_view spec) {
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  if (parts.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault \"", spec, "\": want ENDPOINT:KIND[:rate=R]"));
  }
  FaultRule rule;
  if (parts[0] == "create") {
    rule.endpoint = Endpoint::kCreate;
  } else if (parts[0] == "poll") {
    rule.endpoint = Endpoint::kPoll;
  } else if (parts[0] == "download") {
    rule.endpoint = Endpoint::kDownload;
  } else if (parts[0] == "logs") {
    rule.endpoint = Endpoint::kLogs;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("fault \"", spec,
                     "\": endpoint must be create, poll, download or logs"));
  }
  static const std::pair<const char*, FaultKind> kAliases[] = {
      {"429nr", FaultKind::k429NoRetryAfter},
      {"malformed", FaultKind::kMalformedJson},
      {"odd", FaultKind::kOddStatus}};
  bool found = false;
  for (int k = 0; k <= static_cast<int>(FaultKind::kCreate2xxNoId); ++k) {
    if (parts[1] == FaultKindName(static_cast<FaultKind>(k))) {
      rule.kind = static_cast<FaultKind>(k);
      found = true;
    }
  }
  for (const auto& [alias, kind] : kAliases) {
    if (parts[1] == alias) {
      rule.kind = kind;
      found = true;
    }
  }
  if (!found) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault \"", spec, "\": unknown kind ", parts[1]));
  }
  if (IsCreateOnly(rule.kind) && rule.endpoint != Endpoint::kCreate) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fault \"", spec, "\": ", parts[1], " applies to create only"));
  }
  for (size_t i = 2; i < parts.size(); ++i) {
    std::pair<std::string, std::string> kv = absl::StrSplit(parts[i], '=');
    bool ok = false;
    if (kv.first == "rate") {
      ok = absl::SimpleAtod(kv.second, &rule.rate) && rule.rate >= 0 &&
           rule.rate <= 1;
    } else if (kv.first == "every") {
      ok = absl::SimpleAtoi(kv.second, &rule.every_nth) && rule.every_nth > 0;
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("fault \"", spec, "\": bad option ", parts[i],
                       " (want rate=0..1 or every=N>0)"));
    }
  }
  if (rule.rate == 0 && rule.every_nth == 0) rule.rate = 1;
  return rule;
}

// Owns the httplib server and the listener thread. Handlers run on pool
// threads; jobs, stats, fault counters and the random streams are guarded by
// mu_.
class SimServer::Impl {
 public:
  explicit Impl(SimOptions options)
      : options_(std::move(options)),
        id_rng_(std::random_device{}() ^ absl::ToUnixNanos(absl::Now())),
        job_rng_(options_.seed),
        fault_rng_(options_.seed ^ 0x5eedfa17ULL),
        faults_(options_.faults),
        released_(options_.hold_queued ? absl::InfiniteFuture()
                                       : absl::InfinitePast()) {}

  ~Impl() { Stop(); }

  absl::Status Start();
  void Stop();
  void Listen();  // the listener thread

  int port() const { return port_.load(); }
  std::string base_url() const {
    std::string host = options_.host;
    if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
    if (host.find(':') != std::string::npos)
      host = absl::StrCat("[", host, "]");
    return absl::StrCat("http://", host, ":", port());
  }

  SimStats Stats() const {
    absl::MutexLock lock(&mu_);
    return stats_;
  }
  void ResetStats() {
    absl::MutexLock lock(&mu_);
    stats_ = SimStats();
  }
  void SetFaults(std::vector<FaultRule> faults) {
    absl::MutexLock lock(&mu_);
    faults_ = std::move(faults);
  }
  bool Release() {
    absl::MutexLock lock(&mu_);
    if (released_ != absl::InfiniteFuture()) return false;
    released_ = absl::Now();
    return true;
  }
  void AddUsageRow(UsageRow row) {
    absl::MutexLock lock(&mu_);
    rows_.push_back(std::move(row));
  }
  std::vector<UsageRow> UsageRows() const {
    absl::MutexLock lock(&mu_);
    return rows_;
  }

 private:
  void Routes();
  void HandleCreate(const httplib::Request& req, httplib::Response& res,
                    bool legacy);
  void HandlePoll(const httplib::Request& req, httplib::Response& res,
                  bool legacy);
  void HandleFile(const httplib::Request& req, httplib::Response& res);
  void HandleLogs(const httplib::Request& req, httplib::Response& res);
  void HandleStats(httplib::Response& res);

  // Records a job, its usage-log row and the correlation headers.
  Job MakeJob(const httplib::Request& req, const json& body, int duration,
              bool legacy);
  // Takes a slot of the logs rate limit; false when the window is full.
  bool TakeLogsSlot(absl::Time now);
  // The page of visible rows that match `filter`, newest first.
  json LogsPage(const LogFilter& filter, absl::Time now) const;
  // x-inference-id: `id`, or a fresh per-request id when `id` is empty.
  void SetInferenceId(httplib::Response& res, const std::string& id);
  void SetCostHeaders(httplib::Response& res, int64_t credits,
                      double usd) const;

  // Counts the request; answers 401 and returns false on a bad key.
  bool Admit(const httplib::Request& req, httplib::Response& res,
             const std::string& route);
  // Picks the fault (if any) for this request and counts it.
  std::optional<FaultKind> PickFault(Endpoint endpoint);
  // Answers an HTTP-error fault, or sleeps for kSlow. Returns true when the
  // response is final.
  bool ApplyEarlyFault(std::optional<FaultKind> fault,
                       const httplib::Request& req, httplib::Response& res);
  // Sends a JSON success body, cut, corrupted or plain per `fault`.
  void SendBody(httplib::Response& res, int status, const json& body,
                std::optional<FaultKind> fault);
  void SendError(httplib::Response& res, int status, const std::string& msg,
                 const std::string& path, bool status_as_string,
                 const std::vector<std::string>& errors = {});
  void NoteHeaders(const httplib::Request& req, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // When `job`'s clock starts: its creation, or the release of a hold.
  absl::Time StartOf(const Job& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::max(job.created, released_);
  }
  Phase PhaseOf(const Job& job, absl::Time start, absl::Time now) const;
  json PollBody(const Job& job, Phase phase, bool legacy, bool odd,
                const httplib::Request& req) const;
  std::string VideoUrl(const Job& job, const httplib::Request& req) const;

  const SimOptions options_;
  HttpServer server_;
  std::thread listener_;
  std::atomic<bool> listener_done_{false};
  std::atomic<int> port_{0};
  absl::Notification stopping_;
  bool started_ = false;  // owned by the thread calling Start/Stop

  mutable absl::Mutex mu_;
  // Ids are unique across runs (a restarted gateway must never see an old
  // id again); outcomes and faults replay from the seed.
  Rng id_rng_ ABSL_GUARDED_BY(mu_);
  Rng job_rng_ ABSL_GUARDED_BY(mu_);
  Rng fault_rng_ ABSL_GUARDED_BY(mu_);
  std::vector<FaultRule> faults_ ABSL_GUARDED_BY(mu_);
  int64_t endpoint_count_[4] ABSL_GUARDED_BY(mu_) = {0, 0, 0, 0};
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> id_by_uuid_ ABSL_GUARDED_BY(mu_);
  SimStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<UsageRow> rows_ ABSL_GUARDED_BY(mu_);  // in order of adding
  std::deque<absl::Time> logs_answered_ ABSL_GUARDED_BY(mu_);  // rate window
  // Infinite future while a hold lasts, the infinite past without one.
  absl::Time released_ ABSL_GUARDED_BY(mu_);
};

absl::Status SimServer::Impl::Start() {
  if (started_) return absl::FailedPreconditionError("already started");
  size_t max_threads = std::max(8, options_.max_threads);
  server_.new_task_queue = [max_threads] {
    return new ElasticPool(max_threads);
  };
  server_.set_keep_alive_max_count(1000000);
  server_.set_keep_alive_timeout(
      std::max<time_t>(1, absl::ToInt64Seconds(options_.keep_alive_timeout)));
  server_.set_payload_max_length(1 << 20);
  server_.set_tcp_nodelay(true);
  Routes();
  int port = options_.port;
  if (port == 0) {
    port = server_.bind_to_any_port(options_.host);
    if (port <= 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind ", options_.host, ":0"));
    }
  } else if (!server_.bind_to_port(options_.host, port)) {
    return absl::UnavailableError(
        absl::StrCat("cannot bind ", options_.host, ":", port));
  }
  port_ = port;
  server_.RaiseBacklog(4096);
  listener_ = std::thread([this] { Listen(); });
  while (!server_.is_running()) absl::SleepFor(absl::Milliseconds(1));
  started_ = true;
  return absl::OkStatus();
}

void SimServer::Impl::Stop() {
  if (!started_) return;
  started_ = false;
  if (!stopping_.HasBeenNotified()) stopping_.Notify();
  // httplib's stop() does nothing until listening began, so repeat it until
  // the listener (which may be binding again, see Listen) has returned.
  while (!listener_done_.load()) {
    server_.stop();
    absl::SleepFor(absl::Milliseconds(1));
  }
  if (listener_.joinable()) listener_.join();
}

// libcpp-httplib 0.11 closes its listening socket on any accept() error but
// EMFILE, EINTR and EAGAIN, and Linux reports a queued connection's network
// error (ECONNABORTED, EPROTO, ...) through accept(): from then on the sim
// would refuse every connection while its process still ran. Bind the same
// port again and go on, and say so. (A CI flake once blamed on this was the
// e2e harness reading a stale output file: see tests/e2e/harness.cc.)
void SimServer::Impl::Listen() {
  while (true) {
    server_.listen_after_bind();
    const int err = errno;
    if (stopping_.HasBeenNotified()) break;
    std::fprintf(stderr,
                 "videogen-sim: the listener stopped (last error: %s); "
                 "listening again on port %d\n",
                 std::strerror(err), port_.load());
    while (!stopping_.HasBeenNotified() &&
           !server_.bind_to_port(options_.host, port_.load())) {
      stopping_.WaitForNotificationWithTimeout(absl::Milliseconds(10));
    }
    if (stopping_.HasBeenNotified()) break;
    server_.RaiseBacklog(4096);
  }
  listener_done_.store(true);
}

void SimServer::Impl::Routes() {
  server_.Post(kLegacyPath, [this](const auto& req, auto& res) {
    HandleCreate(req, res, true);
  });
  server_.Post(kNewPath, [this](const auto& req, auto& res) {
    HandleCreate(req, res, false);
  });
  server_.Get(kLegacyPath, [this](const auto& req, auto& res) {
    HandlePoll(req, res, true);
  });
  server_.Get(kNewPath, [this](const auto& req, auto& res) {
    HandlePoll(req, res, false);
  });
  server_.Get(R"(/files/([0-9a-f\-]+)\.mp4)",
              [this](const auto& req, auto& res) { HandleFile(req, res); });
  server_.Get(kLogsPath,
              [this](const auto& req, auto& res) { HandleLogs(req, res); });
  server_.Get("/sim/stats",
              [this](const auto&, auto& res) { HandleStats(res); });
  server_.Post("/sim/release", [this](const auto&, auto& res) {
    json body = {{"released", Release()}};
    res.set_content(body.dump(), "application/json");
  });
}

bool SimServer::Impl::Admit(const httplib::Request& req, httplib::Response& res,
                            const std::string& route) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.requests_by_path[route];
  }
  if (options_.api_key.empty()) return true;
  const std::string auth = req.get_header_value("Authorization");
  const std::string want = absl::StrCat("Bearer ", options_.api_key);
  if (auth.size() == want.size() &&
      absl::StartsWithIgnoreCase(auth, "bearer ") &&
      auth.substr(7) == options_.api_key) {
    return true;
  }
  // Never echo the key that was sent.
  SendError(res, 401, "Unauthorized", req.path, /*status_as_string=*/true);
  return false;
}

std::optional<FaultKind> SimServer::Impl::PickFault(Endpoint endpoint) {
  absl::MutexLock lock(&mu_);
  int64_t n = ++endpoint_count_[static_cast<int>(endpoint)];
  for (const FaultRule& rule : faults_) {
    if (rule.endpoint != endpoint) continue;
    bool fire = rule.every_nth > 0 && n % rule.every_nth == 0;
    if (rule.rate > 0 && fault_rng_.Unit() < rule.rate) fire = true;
    if (fire) {
      ++stats_.faults_by_kind[FaultKindName(rule.kind)];
      return rule.kind;
    }
  }
  return std::nullopt;
}

bool SimServer::Impl::ApplyEarlyFault(std::optional<FaultKind> fault,
                                      const httplib::Request& req,
                                      httplib::Response& res) {
  if (!fault) return false;
  if (*fault == FaultKind::kSlow) {
    stopping_.WaitForNotificationWithTimeout(options_.slow_delay);
    return false;
  }
  if (!IsHttpError(*fault)) return false;
  switch (*fault) {
    case FaultKind::k429:
      res.set_header("Retry-After",
                     std::to_string(options_.retry_after_seconds));
      SendError(res, 429, "Too many requests", req.path, true);
      break;
    case FaultKind::k429NoRetryAfter:
      SendError(res, 429, "Too many requests", req.path, true);
      break;
    case FaultKind::k500:
      SendError(res, 500, "Internal server error", req.path, false);
      break;
    case FaultKind::k503:
      SendError(res, 503, "Service unavailable", req.path, true);
      break;
    case FaultKind::k502:
    case FaultKind::k504: {
      // Gateways answer in HTML, not in the API's JSON.
      SetInferenceId(res, "");
      res.status = *fault == FaultKind::k502 ? 502 : 504;
      res.set_content(
          absl::StrCat("<html><head><title>", res.status,
                       "</title></head><body><h1>", res.status,
                       res.status == 502 ? " Bad Gateway" : " Gateway Timeout",
                       "</h1></body></html>\n"),
          "text/html");
      break;
    }
    default:
      break;
  }
  return true;
}

void SimServer::Impl::SendBody(httplib::Response& res, int status,
                               const json& body,
                               std::optional<FaultKind> fault) {
  res.status = status;
  std::string text = body.dump();
  if (fault == FaultKind::kReset) {
    SetCutContent(res, std::move(text), "application/json");
  } else if (fault == FaultKind::kMalformedJson) {
    text.resize(text.size() / 2);
    res.set_content(absl::StrCat(text, "<!-- truncated"), "application/json");
  } else {
    res.set_content(std::move(text), "application/json");
  }
}

void SimServer::Impl::SendError(httplib::Response& res, int status,
                                const std::string& msg, const std::string& path,
                                bool status_as_string,
                                const std::vector<std::string>& errors) {
  std::string request_id;
  {
    absl::MutexLock lock(&mu_);
    request_id = Uuid4(id_rng_);
  }
  json body = {
      {"message", msg},
      {"path", path},
      {"requestId", request_id},
      {"timestamp", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                     absl::UTCTimeZone())}};
  if (status_as_string) {
    body["statusCode"] = std::to_string(status);
  } else {
    body["statusCode"] = status;
  }
  if (!errors.empty()) body["errors"] = errors;
  res.status = status;
  if (!res.has_header("x-inference-id"))
    res.set_header("x-inference-id", request_id);
  res.set_content(body.dump(), "application/json");
}

void SimServer::Impl::NoteHeaders(const httplib::Request& req,
                                  const std::string& id) {
  if (req.has_header("X-Client-Request-Id")) {
    stats_.client_request_id_by_id[id] =
        req.get_header_value("X-Client-Request-Id");
  }
  if (req.has_header("traceparent")) {
    stats_.traceparent_by_id[id] = req.get_header_value("traceparent");
  }
}

void SimServer::Impl::HandleCreate(const httplib::Request& req,
                                   httplib::Response& res, bool legacy) {
  if (!Admit(req, res, absl::StrCat("POST ", req.path))) return;
  std::optional<FaultKind> fault = PickFault(Endpoint::kCreate);
  if (ApplyEarlyFault(fault, req, res)) return;
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  int duration = 5;
  std::vector<std::string> errors =
      body.is_discarded() ? std::vector<std::string>{"body is not valid JSON"}
                          : Validate(body, &duration);
  if (!errors.empty()) {
    SendError(res, 400, "Body validation error", req.path, false, errors);
    return;
  }
  const Job job = MakeJob(req, body, duration, legacy);
  if (req.has_header("X-Client-Request-Id")) {
    res.set_header("X-Client-Request-Id",
                   req.get_header_value("X-Client-Request-Id"));
  }
  // From here on the job exists: the create_then_* faults spoil the answer.
  if (fault == FaultKind::kCreateThen500) {
    SendError(res, 500, "Internal server error", req.path, false);
    return;
  }
  if (fault == FaultKind::kCreateThenReset) {
    if (DropConnection(req, port())) return;
    fault = FaultKind::kReset;  // not found: cut the answer instead
  }
  if (fault == FaultKind::kCreateThenSlow) {
    stopping_.WaitForNotificationWithTimeout(options_.slow_delay);
  }
  SetCostHeaders(res, options_.credits_per_second * job.duration,
                 options_.usd_per_second * job.duration);
  // The legacy path answers 201, the new one 200: clients take any 2xx.
  const int status = legacy ? 201 : 200;
  if (fault == FaultKind::kCreate2xxNoId) {
    SetInferenceId(res, "");
    SendBody(res, status, {{"status", "queued"}}, std::nullopt);
    return;
  }
  SetInferenceId(res, job.id);
  bool odd = fault == FaultKind::kOddStatus;
  SendBody(res, status,
           {{"id", job.id}, {"status", odd ? "waiting" : "queued"}}, fault);
}

Job SimServer::Impl::MakeJob(const httplib::Request& req, const json& body,
                             int duration, bool legacy) {
  Job job;
  job.duration = duration;
  job.created = absl::Now();
  UsageRow row;
  row.created = job.created;
  row.model = body.contains("model") && body["model"].is_string()
                  ? body["model"].get<std::string>()
                  : kDefaultModel;
  if (req.has_header("X-Client-Request-Id")) {
    row.client_request_id = req.get_header_value("X-Client-Request-Id");
  }
  absl::MutexLock lock(&mu_);
  job.uuid = Uuid4(id_rng_);
  job.fails = job_rng_.Unit() < options_.error_rate;
  // Drawn only when asked for, so old seeds replay the same outcomes.
  if (job.fails && options_.detail_error_share > 0) {
    job.detail_error = job_rng_.Unit() < options_.detail_error_share;
  }
  job.id = legacy ? absl::StrCat(job.uuid, kLegacySuffix) : job.uuid;
  jobs_[job.id] = job;
  id_by_uuid_[job.uuid] = job.id;
  ++stats_.submits;
  NoteHeaders(req, job.id);
  // Failed tasks are not billed.
  row.status = job.fails ? "failed" : "succeeded";
  if (!job.fails) {
    row.cost_credits = options_.credits_per_second * duration;
    row.cost_usd = options_.usd_per_second * duration;
    row.tokens_output = kTokensPerSecond * duration;
    row.tokens_total = row.tokens_output;
  }
  row.request_id = Uuid4(id_rng_);
  row.inference_id = job.id;
  rows_.push_back(std::move(row));
  return job;
}

void SimServer::Impl::SetInferenceId(httplib::Response& res,
                                     const std::string& id) {
  if (!id.empty()) {
    res.set_header("x-inference-id", id);
    return;
  }
  std::string fresh;
  {
    absl::MutexLock lock(&mu_);
    fresh = Uuid4(id_rng_);
  }
  res.set_header("x-inference-id", fresh);
}

void SimServer::Impl::SetCostHeaders(httplib::Response& res, int64_t credits,
                                     double usd) const {
  res.set_header("x-aimlapi-credits-used", std::to_string(credits));
  res.set_header("x-aimlapi-usd-spent", absl::StrCat(usd));
}

void SimServer::Impl::HandlePoll(const httplib::Request& req,
                                 httplib::Response& res, bool legacy) {
  if (!Admit(req, res, absl::StrCat("GET ", req.path))) return;
  if (!req.has_param("generation_id") ||
      req.get_param_value("generation_id").empty()) {
    SendError(res, 400, "Query validation error", req.path, false,
              {"generation_id is required"});
    return;
  }
  const std::string id = req.get_param_value("generation_id");
  std::optional<Job> job;
  absl::Time start;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.polls_by_id[id];
    NoteHeaders(req, id);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
      job = it->second;
      start = StartOf(*job);
    }
  }
  if (req.has_header("X-Client-Request-Id")) {
    res.set_header("X-Client-Request-Id",
                   req.get_header_value("X-Client-Request-Id"));
  }
  std::optional<FaultKind> fault = PickFault(Endpoint::kPoll);
  if (ApplyEarlyFault(fault, req, res)) return;
  if (!job) {
    SendError(res, 404, "Generation not found", req.path, false);
    return;
  }
  Phase phase = PhaseOf(*job, start, absl::Now());
  SetInferenceId(res, job->id);
  SetCostHeaders(res, 0, 0);  // the create answer carried the cost
  SendBody(res, 200,
           PollBody(*job, phase, legacy, fault == FaultKind::kOddStatus, req),
           fault);
}

void SimServer::Impl::HandleFile(const httplib::Request& req,
                                 httplib::Response& res) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.requests_by_path[kFilesRoute];
  }
  std::optional<Job> job;
  absl::Time start;
  {
    absl::MutexLock lock(&mu_);
    auto uuid_it = id_by_uuid_.find(req.matches[1].str());
    if (uuid_it != id_by_uuid_.end()) {
      job = jobs_.at(uuid_it->second);
      start = StartOf(*job);
    }
  }
  if (!job || PhaseOf(*job, start, absl::Now()) != Phase::kCompleted) {
    SendError(res, 404, "File not found", req.path, false);
    return;
  }
  std::optional<FaultKind> fault = PickFault(Endpoint::kDownload);
  if (ApplyEarlyFault(fault, req, res)) return;
  if (fault == FaultKind::kReset) {
    if (!req.ranges.empty()) {
      // Keep resumption testable: cut the remaining part, not the whole file.
      res.status = 206;
    }
    SetCutContent(res, SampleMp4(), "video/mp4");
    return;
  }
  // cpp-httplib answers Range requests on res.body with 206 + Content-Range.
  res.set_content(SampleMp4(), "video/mp4");
}

void SimServer::Impl::HandleLogs(const httplib::Request& req,
                                 httplib::Response& res) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.logs_requests;
  }
  if (!Admit(req, res, absl::StrCat("GET ", req.path))) return;
  const absl::Time now = absl::Now();
  if (!TakeLogsSlot(now)) {
    SendError(res, 429, "Too many requests", req.path, true);
    return;
  }
  std::optional<FaultKind> fault = PickFault(Endpoint::kLogs);
  if (ApplyEarlyFault(fault, req, res)) return;
  absl::StatusOr<LogFilter> filter = ParseLogFilter(req, now);
  if (!filter.ok()) {
    SendError(res, 400, "Query validation error", req.path, false,
              {std::string(filter.status().message())});
    return;
  }
  SetInferenceId(res, "");
  SetCostHeaders(res, 0, 0);
  SendBody(res, 200, LogsPage(*filter, now), fault);
}

bool SimServer::Impl::TakeLogsSlot(absl::Time now) {
  absl::MutexLock lock(&mu_);
  while (!logs_answered_.empty() &&
         logs_answered_.front() <= now - options_.logs_rate_window) {
    logs_answered_.pop_front();
  }
  if (static_cast<int>(logs_answered_.size()) >= options_.logs_rate_limit) {
    ++stats_.logs_rate_limited;
    return false;
  }
  logs_answered_.push_back(now);
  return true;
}

json SimServer::Impl::LogsPage(const LogFilter& filter, absl::Time now) const {
  std::vector<UsageRow> page;
  int64_t total = 0;
  {
    absl::MutexLock lock(&mu_);
    // Newest first; among equal times the row added last comes first.
    std::vector<size_t> order;
    for (size_t i = rows_.size(); i-- > 0;) {
      const UsageRow& row = rows_[i];
      if (row.created + options_.logs_lag <= now && Matches(filter, row)) {
        order.push_back(i);
      }
    }
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return rows_[a].created > rows_[b].created;
    });
    total = static_cast<int64_t>(order.size());
    for (size_t i = filter.offset;
         i < order.size() && page.size() < static_cast<size_t>(filter.limit);
         ++i) {
      page.push_back(rows_[order[i]]);
    }
  }
  json data = json::array();
  for (const UsageRow& row : page) data.push_back(RowJson(row));
  const int64_t next = filter.offset + static_cast<int64_t>(page.size());
  return {{"data", std::move(data)},
          {"pagination",
           {{"limit", filter.limit},
            {"offset", filter.offset},
            {"total", total},
            {"has_more", next < total}}}};
}

void SimServer::Impl::HandleStats(httplib::Response& res) {
  SimStats s = Stats();
  json body = {{"requests_by_path", s.requests_by_path},
               {"polls_by_id", s.polls_by_id},
               {"faults_by_kind", s.faults_by_kind},
               {"submits", s.submits},
               {"client_request_id_by_id", s.client_request_id_by_id},
               {"traceparent_by_id", s.traceparent_by_id},
               {"logs_requests", s.logs_requests},
               {"logs_rate_limited", s.logs_rate_limited}};
  res.set_content(body.dump(), "application/json");
}

Phase SimServer::Impl::PhaseOf(const Job& job, absl::Time start,
                               absl::Time now) const {
  // Held: start is the infinite future, and so the age is negative.
  absl::Duration age = now - start;
  absl::Duration generating = options_.generating_for;
  if (options_.scale_with_duration) generating *= job.duration / 5;
  if (age < options_.queued_for) return Phase::kQueued;
  if (age < options_.queued_for + generating) return Phase::kGenerating;
  return job.fails ? Phase::kError : Phase::kCompleted;
}

std::string SimServer::Impl::VideoUrl(const Job& job,
                                      const httplib::Request& req) const {
  // The Host the client used reaches this server, whatever we bound.
  std::string host = req.get_header_value("Host");
  if (host.empty())
    return absl::StrCat(base_url(), "/files/", job.uuid, ".mp4");
  return absl::StrCat("http://", host, "/files/", job.uuid, ".mp4");
}

json SimServer::Impl::PollBody(const Job& job, Phase phase, bool legacy,
                               bool odd, const httplib::Request& req) const {
  json body = {{"id", job.id}, {"status", StatusWord(phase, odd)}};
  if (phase == Phase::kError) {
    if (job.detail_error) {
      body["error"] = {{"detail",
                        {{{"loc", {"body", "prompt"}},
                          {"msg", "The simulated model refused this prompt"},
                          {"type", "value_error"}}}}};
    } else {
      body["error"] = {
          {"name", "GenerationError"},
          {"message", "The simulated model failed to render this prompt"}};
    }
    return body;
  }
  if (phase != Phase::kCompleted) return body;
  const std::string url = VideoUrl(job, req);
  if (legacy) {
    body["video"] = {{"url", url},
                     {"content_type", "video/mp4"},
                     {"file_name", absl::StrCat(job.uuid, ".mp4")},
                     {"file_size", SampleMp4().size()}};
  } else {
    body["video"] = {{"url", url}, {"duration", job.duration}};
    body["duration"] = job.duration;
    body["error"] = nullptr;
    if (options_.usage_as_credits) {
      body["meta"] = {
          {"usage",
           {{"credits_used", options_.credits_per_second * job.duration}}}};
    } else {
      body["meta"] = {
          {"usage", {{"tokens_used", kTokensPerSecond * job.duration}}}};
    }
  }
  return body;
}

SimServer::SimServer(SimOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
SimServer::~SimServer() = default;
absl::Status SimServer::Start() { return impl_->Start(); }
void SimServer::Stop() { impl_->Stop(); }
int SimServer::port() const { return impl_->port(); }
std::string SimServer::base_url() const { return impl_->base_url(); }
SimStats SimServer::Stats() const { return impl_->Stats(); }
void SimServer::ResetStats() { impl_->ResetStats(); }
void SimServer::SetFaults(std::vector<FaultRule> faults) {
  impl_->SetFaults(std::move(faults));
}
bool SimServer::Release() { return impl_->Release(); }
void SimServer::AddUsageRow(UsageRow row) {
  impl_->AddUsageRow(std::move(row));
}
std::vector<UsageRow> SimServer::UsageRows() const {
  return impl_->UsageRows();
}

}  // namespace videogen::sim
