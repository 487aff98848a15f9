#include "server/http/http_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/http/dashboard_assets.h"
#include "server/http/json.h"
#include "server/http/router.h"
#include "server/http/sse.h"
#include "server/http/status_http.h"
#include "server/http/strings.h"

namespace videogen::http {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

// An open file shared by the copies of a reply; closed with the last one.
struct FileHandle {
  explicit FileHandle(int f) : fd(f) {}
  ~FileHandle() {
    if (fd >= 0) ::close(fd);
  }
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int fd;
};

// A Beast body that sends `length` bytes of a file from `offset` with
// pread, so a Range reply never reads more than it sends.
struct FileRangeBody {
  struct value_type {
    std::shared_ptr<FileHandle> file;
    int64_t offset = 0;
    int64_t length = 0;
  };

  static std::uint64_t size(const value_type& body) {
    return static_cast<std::uint64_t>(body.length);
  }

  class writer {
   public:
    using const_buffers_type = net::const_buffer;

    template <bool isRequest, class Fields>
    writer(const bhttp::header<isRequest, Fields>&, const value_type& body)
        : body_(body), pos_(body.offset), remain_(body.length) {}

    void init(beast::error_code& ec) { ec = {}; }

    boost::optional<std::pair<const_buffers_type, bool>> get(
        beast::error_code& ec) {
      if (remain_ <= 0) {
        ec = {};
        return boost::none;
      }
      size_t want = static_cast<size_t>(
          std::min<int64_t>(remain_, static_cast<int64_t>(sizeof(buf_))));
      ssize_t got = ::pread(body_.file->fd, buf_, want, pos_);
      if (got < 0) {
        ec = beast::error_code(errno, beast::system_category());
        return boost::none;
      }
      if (got == 0) {  // the file shrank under us
        ec = bhttp::error::short_read;
        return boost::none;
      }
      pos_ += got;
      remain_ -= got;
      ec = {};
      return std::make_pair(net::const_buffer(buf_, static_cast<size_t>(got)),
                            remain_ > 0);
    }

   private:
    const value_type& body_;
    int64_t pos_;
    int64_t remain_;
    char buf_[64 * 1024];
  };
};

using StringResponse = bhttp::response<bhttp::string_body>;
using FileResponse = bhttp::response<FileRangeBody>;

// One response, copyable so that it can cross std::function callbacks.
struct Reply {
  std::shared_ptr<StringResponse> text;
  std::shared_ptr<FileResponse> file;
  int status() const {
    return text ? text->result_int() : file ? file->result_int() : 0;
  }
};

void CommonHeaders(bhttp::fields& f) {
  f.set(bhttp::field::cache_control, "no-store");
  f.set("X-Content-Type-Options", "nosniff");
}

Reply TextReply(int status, std::string body, std::string_view content_type) {
  auto res = std::make_shared<StringResponse>();
  res->result(static_cast<unsigned>(status));
  CommonHeaders(*res);
  res->set(bhttp::field::content_type, content_type);
  res->body() = std::move(body);
  res->prepare_payload();
  return Reply{std::move(res), nullptr};
}

Reply JsonReply(std::string body) {
  return TextReply(200, std::move(body), "application/json; charset=utf-8");
}

// AIP-193 error body; `http_status` overrides the mapped status for
// transport-level errors (405, 413, 415, 416, 431).
Reply ErrorReply(const absl::Status& status, int http_status = 0) {
  int code = http_status != 0 ? http_status : HttpStatusFor(status.code());
  Reply r =
      TextReply(code, ErrorJson(code, status.code(), Sv(status.message())),
                "application/json; charset=utf-8");
  if (code == 401) r.text->set(bhttp::field::www_authenticate, "Bearer");
  if (code == 503) r.text->set(bhttp::field::retry_after, "1");
  return r;
}

std::string ContentSecurityPolicy() {
  // The dashboard loads only its own files; videos may come from the
  // mirror (same origin, or a blob) or from the upstream's URL.
  return "default-src 'self'; script-src 'self'; style-src 'self'; "
         "img-src 'self' data:; media-src 'self' blob: https: http:; "
         "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
         "form-action 'self'";
}

std::optional<Reply> DashboardReply(std::string_view path) {
  if (path == "/index.html") path = "/";
  for (const DashboardAsset& asset : kDashboardAssets) {
    if (asset.path != path) continue;
    Reply r = TextReply(200, std::string(asset.body), asset.content_type);
    r.text->set(bhttp::field::cache_control, "no-cache");
    r.text->set("Content-Security-Policy", ContentSecurityPolicy());
    r.text->set("Referrer-Policy", "no-referrer");
    return r;
  }
  return std::nullopt;
}

absl::StatusOr<tcp::endpoint> ParseListen(std::string_view listen) {
  size_t colon = listen.rfind(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP listen address '", Av(listen), "' is not host:port"));
  }
  std::string host(listen.substr(0, colon));
  uint32_t port = 0;
  if (!absl::SimpleAtoi(Av(listen.substr(colon + 1)), &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP listen address '", Av(listen), "' has no valid port"));
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") host = "127.0.0.1";
  if (host.empty() || host == "*") host = "0.0.0.0";
  boost::system::error_code ec;
  net::ip::address address = net::ip::make_address(host, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP listen host '", host, "' is not an IP address or localhost"));
  }
  return tcp::endpoint(address, static_cast<uint16_t>(port));
}

std::string Header(const bhttp::request<bhttp::string_body>& req,
                   bhttp::field field) {
  auto it = req.find(field);
  return it == req.end() ? std::string() : std::string(it->value());
}

bool AllowedMethod(RouteKind kind, bhttp::verb method, std::string* allow) {
  using V = bhttp::verb;
  switch (kind) {
    case RouteKind::kDashboard:
    case RouteKind::kMedia:
      *allow = "GET, HEAD";
      return method == V::get || method == V::head;
    case RouteKind::kCollection:
      *allow = "GET, POST";
      return method == V::get || method == V::post;
    case RouteKind::kCancel:
      *allow = "POST";
      return method == V::post;
    case RouteKind::kMetrics:
    case RouteKind::kWatchAll:
    case RouteKind::kWatchOne:
    case RouteKind::kGeneration:
      *allow = "GET";
      return method == V::get;
    case RouteKind::kNotFound:
      break;
  }
  return false;
}

// Everything a worker needs from one unary request (copied off the parser).
struct ApiCall {
  RouteKind kind = RouteKind::kNotFound;
  std::string id;
  Target target;
  bhttp::verb method = bhttp::verb::get;
  std::string authorization;
  std::string body;
  std::string content_type;
  std::string traceparent;
  std::string range;
};

using Respond = std::function<void(Reply)>;

class HttpSession;
class SseStream;

}  // namespace

// State shared by the server, its connections and its streams. Connections
// keep it alive with a shared_ptr; callbacks that may outlive the server
// (the gateway's Create callback) hold only a weak_ptr. Thread-safe.
class HttpServer::Core : public std::enable_shared_from_this<Core> {
 public:
  Core(HttpServerOptions o, api::Gateway* g, auth::Authenticator* a,
       std::function<std::string()> m, MediaSource* media)
      : options(std::move(o)),
        gateway(g),
        authenticator(a),
        metrics(std::move(m)),
        media(media) {}

  const HttpServerOptions options;
  api::Gateway* const gateway;
  auth::Authenticator* const authenticator;
  const std::function<std::string()> metrics;
  MediaSource* const media;
  // Set by Start, before any connection exists.
  net::thread_pool* workers = nullptr;
  FrameCache frames;

  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> streams_opened{0};
  std::atomic<int64_t> streams_rejected{0};
  std::atomic<int64_t> streams_cut_slow{0};

  // Keeps a session alive while a worker or the gateway works on its
  // request. 0 when the server is stopping.
  uint64_t Park(std::shared_ptr<HttpSession> session) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return 0;
    uint64_t ticket = ++next_id_;
    parked_.emplace(ticket, std::move(session));
    return ticket;
  }
  // Hands the parked session to `post_reply` (which posts to its strand)
  // under the lock, unless Stop has begun: replies may come from any thread
  // at any time (the gateway's Create callback), and Stop destroys the event
  // loop right after BeginStop, so nothing may touch it past that point.
  template <class F>
  void DeliverToParked(uint64_t ticket, F&& post_reply) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    auto it = parked_.find(ticket);
    if (it == parked_.end()) return;
    std::shared_ptr<HttpSession> session = std::move(it->second);
    parked_.erase(it);
    post_reply(std::move(session));  // only posts: never runs inline
  }

  bool draining() {
    absl::MutexLock lock(&mu_);
    return draining_;
  }

  // Waits until no request is parked (a create waiting for its submit, a
  // call on a worker) or `deadline` passes. True when none is.
  bool AwaitNoneParked(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return parked_.empty() || stopping_;
    };
    return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
  }

  // Counts a new stream against max_streams.
  absl::Status RegisterStream(std::shared_ptr<StreamSink> sink,
                              std::weak_ptr<SseStream> stream, uint64_t* id) {
    absl::MutexLock lock(&mu_);
    if (stopping_ || draining_) {
      return absl::UnavailableError(
          "this server is shutting down; reconnect to another replica");
    }
    if (streams_.size() >= static_cast<size_t>(options.max_streams)) {
      return absl::UnavailableError(absl::StrCat(
          "too many open event streams on this server (the limit is ",
          options.max_streams, "); retry later or use another replica"));
    }
    *id = ++next_id_;
    streams_.emplace(*id, StreamEntry{std::move(sink), std::move(stream)});
    return absl::OkStatus();
  }
  void RemoveStream(uint64_t id) {
    absl::MutexLock lock(&mu_);
    streams_.erase(id);
  }
  // Counts a subscribed stream against its tenant's share.
  absl::Status AcquireTenant(const std::string& tenant) {
    if (options.max_streams_per_tenant <= 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    int64_t& mine = per_tenant_[tenant];
    if (mine >= options.max_streams_per_tenant) {
      if (mine == 0) per_tenant_.erase(tenant);
      return absl::ResourceExhaustedError(absl::StrCat(
          "tenant \"", tenant, "\" holds its limit of ",
          options.max_streams_per_tenant,
          " open streams on this server; close some (one "
          "/v1/generations:watch stream covers many generations)"));
    }
    ++mine;
    return absl::OkStatus();
  }
  void ReleaseTenant(const std::string& tenant) {
    if (options.max_streams_per_tenant <= 0) return;
    absl::MutexLock lock(&mu_);
    auto it = per_tenant_.find(tenant);
    if (it != per_tenant_.end() && --it->second <= 0) per_tenant_.erase(it);
  }
  int64_t open_streams() {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(streams_.size());
  }

  // Unsubscribes on a worker: Unwatch takes tracker locks, which the event
  // loop must not wait for.
  void UnwatchLater(uint64_t subscription) {
    if (subscription == 0) return;
    net::post(*workers,
              [g = gateway, subscription] { g->Unwatch(subscription); });
  }

  std::vector<std::weak_ptr<SseStream>> BeginDrain() {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    std::vector<std::weak_ptr<SseStream>> out;
    for (const auto& [id, e] : streams_) out.push_back(e.stream);
    return out;
  }
  std::vector<std::shared_ptr<StreamSink>> BeginStop() {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    draining_ = true;
    std::vector<std::shared_ptr<StreamSink>> out;
    for (const auto& [id, e] : streams_) out.push_back(e.sink);
    return out;
  }
  // Drops what Stop could not hand back: parked sessions and stream entries.
  // Their destructors run outside the lock.
  void Clear() {
    absl::flat_hash_map<uint64_t, std::shared_ptr<HttpSession>> parked;
    absl::flat_hash_map<uint64_t, StreamEntry> streams;
    absl::MutexLock lock(&mu_);
    parked.swap(parked_);
    streams.swap(streams_);
  }

 private:
  struct StreamEntry {
    std::shared_ptr<StreamSink> sink;
    std::weak_ptr<SseStream> stream;
  };
  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, std::shared_ptr<HttpSession>> parked_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, StreamEntry> streams_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> per_tenant_ ABSL_GUARDED_BY(mu_);
};

namespace {

using Core = HttpServer::Core;

void LogRequest(const Core& core, bhttp::verb method, RouteKind kind,
                int status, absl::Time start) {
  if (!core.options.on_request) return;
  RequestLog log;
  log.method = bhttp::to_string(method);
  log.route = RouteName(kind);
  log.status = status;
  log.duration = absl::Now() - start;
  core.options.on_request(log);
}

// ---- Worker-side request handling (may block) ----

Reply ServeMedia(Core& core, const ApiCall& call, const auth::Principal& who) {
  // Access goes through the gateway, like every other read: another
  // tenant's generation is NOT_FOUND here too.
  absl::StatusOr<core::GenerationPtr> g = core.gateway->Get(who, call.id);
  if (!g.ok()) return ErrorReply(g.status());
  if (core.media == nullptr) {
    return ErrorReply(absl::NotFoundError(
        "this server keeps no mirrored videos (--mirror is off)"));
  }
  absl::StatusOr<MediaFile> file = core.media->Open(who.Scope(), call.id);
  if (!file.ok()) return ErrorReply(file.status());
  int fd = ::open(file->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrorReply(absl::NotFoundError(
        absl::StrCat("the mirrored video of generation ", call.id,
                     " is not on this server's disk")));
  }
  auto handle = std::make_shared<FileHandle>(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return ErrorReply(absl::InternalError("mirrored video is not a file"));
  }
  const int64_t size = st.st_size;
  if (file->size > 0 && file->size != size) {
    return ErrorReply(absl::UnavailableError(
        "the mirrored video is still being written; retry shortly"));
  }
  RangeDecision range = DecideRange(call.range, size);
  if (range.kind == RangeDecision::kUnsatisfiable) {
    Reply r =
        ErrorReply(absl::OutOfRangeError(absl::StrCat(
                       "Range '", call.range,
                       "' cannot be served from a file of ", size, " bytes")),
                   416);
    r.text->set(bhttp::field::content_range, absl::StrCat("bytes */", size));
    return r;
  }
  ByteRange br =
      range.kind == RangeDecision::kPartial ? range.range : ByteRange{0, size};
  int status = range.kind == RangeDecision::kPartial ? 206 : 200;
  auto headers = [&](bhttp::fields& f) {
    CommonHeaders(f);
    // The file behind an id never changes; it is private to the key.
    f.set(bhttp::field::cache_control, "private, max-age=3600");
    f.set(bhttp::field::accept_ranges, "bytes");
    f.set(bhttp::field::content_type, file->content_type.empty()
                                          ? "application/octet-stream"
                                          : file->content_type);
    if (!file->sha256.empty()) {
      f.set(bhttp::field::etag, absl::StrCat("\"", file->sha256, "\""));
    }
    if (status == 206) {
      f.set(bhttp::field::content_range,
            absl::StrCat("bytes ", br.first, "-", br.first + br.length - 1, "/",
                         size));
    }
  };
  if (call.method == bhttp::verb::head) {
    auto res = std::make_shared<StringResponse>();
    res->result(static_cast<unsigned>(status));
    headers(*res);
    res->content_length(br.length);
    return Reply{std::move(res), nullptr};
  }
  auto res = std::make_shared<FileResponse>();
  res->result(static_cast<unsigned>(status));
  headers(*res);
  res->body() = FileRangeBody::value_type{handle, br.first, br.length};
  res->prepare_payload();
  return Reply{nullptr, std::move(res)};
}

// JSON, or no type, or curl's default for -d (form-urlencoded), which people
// send by accident with JSON inside. Auth is a header, so a cross-site form
// cannot forge a request whatever the type.
bool IsJsonContentType(std::string_view content_type) {
  std::string lower = absl::AsciiStrToLower(Av(content_type));
  std::string type = lower.substr(0, lower.find(';'));
  type = std::string(absl::StripAsciiWhitespace(type));
  return type.empty() || type == "application/json" ||
         absl::EndsWith(type, "+json") ||
         type == "application/x-www-form-urlencoded";
}

void RunApiCall(Core& core, const ApiCall& call, const Respond& respond) {
  if (call.kind == RouteKind::kMetrics) {
    if (!core.metrics) {
      respond(ErrorReply(absl::NotFoundError("metrics are off")));
      return;
    }
    respond(TextReply(200, core.metrics(),
                      "text/plain; version=0.0.4; charset=utf-8"));
    return;
  }
  absl::StatusOr<auth::Principal> who =
      core.authenticator->Authenticate(call.authorization);
  if (!who.ok()) {
    respond(ErrorReply(who.status()));
    return;
  }
  auto reply_generation = [](const absl::StatusOr<core::GenerationPtr>& g) {
    return g.ok() ? JsonReply(ToJson(**g)) : ErrorReply(g.status());
  };
  switch (call.kind) {
    case RouteKind::kCollection: {
      if (call.method == bhttp::verb::get) {
        absl::StatusOr<v1::ListGenerationsRequest> req =
            ListRequestFromQuery(call.target, {});
        if (!req.ok()) return respond(ErrorReply(req.status()));
        absl::StatusOr<v1::ListGenerationsResponse> page =
            core.gateway->List(*who, *req);
        respond(page.ok() ? JsonReply(ToJson(*page))
                          : ErrorReply(page.status()));
        return;
      }
      if (!IsJsonContentType(call.content_type)) {
        respond(ErrorReply(
            absl::InvalidArgumentError("POST bodies must be application/json"),
            415));
        return;
      }
      v1::GenerateRequest req;
      if (absl::Status s = FromJson(call.body, &req); !s.ok()) {
        return respond(ErrorReply(s));
      }
      if (core.draining()) {
        // As gRPC refuses new calls once it shuts down: nothing new is
        // sent upstream from a replica that is going away.
        return respond(ErrorReply(absl::UnavailableError(
            "this server is shutting down; send the create to another "
            "replica (the same request_id joins it if it was made)")));
      }
      core::RequestContext ctx;
      ctx.traceparent = call.traceparent;
      // `done` may run on any thread, now or later.
      core.gateway->Create(
          *who, std::move(req), ctx,
          [respond, reply_generation](absl::StatusOr<core::GenerationPtr> g) {
            respond(reply_generation(g));
          });
      return;
    }
    case RouteKind::kGeneration:
      respond(reply_generation(core.gateway->Get(*who, call.id)));
      return;
    case RouteKind::kCancel: {
      // An empty body, `{}` or {"id": the same id} are all fine.
      if (!absl::StripAsciiWhitespace(call.body).empty()) {
        v1::CancelGenerationRequest req;
        if (absl::Status s = FromJson(call.body, &req); !s.ok()) {
          return respond(ErrorReply(s));
        }
        if (!req.id().empty() && req.id() != call.id) {
          return respond(ErrorReply(absl::InvalidArgumentError(
              "the body's id differs from the id in the path")));
        }
      }
      respond(reply_generation(core.gateway->Cancel(*who, call.id)));
      return;
    }
    case RouteKind::kMedia:
      respond(ServeMedia(core, call, *who));
      return;
    default:
      respond(ErrorReply(absl::NotFoundError("no such route")));
  }
}

// ---- One SSE stream (owns its socket once the request routed here) ----

// Lives on its connection's strand: every member below the sink is touched
// only there. The sink is the thread-safe boundary with the tracker.
class SseStream : public std::enable_shared_from_this<SseStream> {
 public:
  struct Params {
    bool single = true;
    std::string id;
    int64_t after_revision = 0;
    v1::WatchGenerationsRequest all;
    std::string authorization;
    unsigned version = 11;
    bhttp::verb method = bhttp::verb::get;
    RouteKind kind = RouteKind::kWatchOne;
    absl::Time start;
  };

  SseStream(std::shared_ptr<Core> core, beast::tcp_stream stream, Params p)
      : core_(std::move(core)),
        stream_(std::move(stream)),
        ex_(stream_.get_executor()),
        params_(std::move(p)),
        timer_(ex_) {}

  // Immutable: safe from any thread.
  const net::any_io_executor& executor() const { return ex_; }

  // On the strand.
  void Start() {
    stream_.expires_never();
    sink_ = std::make_shared<StreamSink>(params_.single, params_.after_revision,
                                         core_->options.stream_backlog_events);
    absl::Status reg = core_->RegisterStream(sink_, weak_from_this(), &id_);
    if (!reg.ok()) {
      core_->streams_rejected++;
      sink_->Close();
      SendErrorAndClose(reg);
      return;
    }
    registered_ = true;
    net::post(*core_->workers,
              [self = shared_from_this()] { self->Subscribe(); });
  }

  // Ends the stream with `event: error` (drain). On the strand.
  void EndWithError(absl::Status status) {
    if (closed_ || end_status_.has_value()) return;
    end_status_ = std::move(status);
    sink_->Close();
    core_->UnwatchLater(sink_->TakeSubscription());
    if (started_) Pump();
    // Not started: OnSubscribed sends end_status_ as the response.
  }

 private:
  // On a worker: authenticate and subscribe (both may block).
  void Subscribe() {
    absl::StatusOr<core::Subscription> sub;
    absl::StatusOr<auth::Principal> who =
        core_->authenticator->Authenticate(params_.authorization);
    std::optional<std::string> tenant;  // set while it holds a tenant slot
    if (!who.ok()) {
      sub = who.status();
    } else if (absl::Status s = core_->AcquireTenant(who->tenant); !s.ok()) {
      sub = s;
    } else {
      tenant = who->tenant;
      if (params_.single) {
        sub = core_->gateway->Watch(*who, params_.id, params_.after_revision,
                                    sink_);
      } else {
        sub = core_->gateway->WatchAll(*who, params_.all, sink_);
      }
    }
    if (tenant.has_value() && !sub.ok()) {
      core_->ReleaseTenant(*tenant);
      tenant.reset();
    }
    if (sub.ok() && sub->id != 0 && !sink_->AttachSubscription(sub->id)) {
      core_->gateway->Unwatch(sub->id);  // the stream closed meanwhile
      if (tenant.has_value()) core_->ReleaseTenant(*tenant);
      return;
    }
    net::post(ex_, [self = shared_from_this(), sub = std::move(sub),
                    tenant = std::move(tenant)] {
      self->tenant_ = tenant;
      self->OnSubscribed(sub);
    });
  }

  void OnSubscribed(const absl::StatusOr<core::Subscription>& sub) {
    if (closed_) {  // Close() or the worker unsubscribed
      ReleaseTenant();
      return;
    }
    if (!sub.ok() || end_status_.has_value()) {
      sink_->Close();
      core_->UnwatchLater(sink_->TakeSubscription());
      SendErrorAndClose(sub.ok() ? *end_status_ : sub.status());
      return;
    }
    if (sub->finished) sink_->MarkFinished();
    core_->streams_opened++;
    chunked_ = params_.version >= 11;
    out_ = absl::StrCat(
        params_.version >= 11 ? "HTTP/1.1" : "HTTP/1.0",
        " 200 OK\r\n"
        "Content-Type: text/event-stream; charset=utf-8\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "X-Accel-Buffering: no\r\n",
        chunked_ ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n",
        "\r\n");
    writing_ = true;
    stream_.expires_after(
        absl::ToChronoNanoseconds(core_->options.write_timeout));
    net::async_write(stream_, net::buffer(out_),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->OnHeadersWritten(ec);
                     });
  }

  void OnHeadersWritten(beast::error_code ec) {
    writing_ = false;
    if (closed_) return;
    stream_.expires_never();
    if (ec) return Close();
    started_ = true;
    sink_->Start(
        [ex = ex_, weak = std::weak_ptr<SseStream>(shared_from_this())] {
          net::post(ex, [weak] {
            if (auto self = weak.lock()) self->Pump();
          });
        });
    ArmHeartbeat();
    ReadForDisconnect();
    Pump();
  }

  // Writes what is queued, one write at a time.
  void Pump() {
    if (closed_ || !started_) return;
    if (!end_status_.has_value() && sink_->overflowed()) {
      // The client stopped reading. Unsubscribe now, even with a write
      // stuck in flight; the error follows that write, or write_timeout
      // closes the connection.
      core_->streams_cut_slow++;
      end_status_ = absl::ResourceExhaustedError(absl::StrCat(
          "this stream fell more than ", core_->options.stream_backlog_events,
          " events behind because the client is not reading; reconnect "
          "with Last-Event-ID",
          params_.single && last_revision_ > 0
              ? absl::StrCat(": ", last_revision_)
              : std::string(),
          " to resume"));
      sink_->Close();
      core_->UnwatchLater(sink_->TakeSubscription());
    }
    if (writing_ || finishing_) return;
    if (end_status_.has_value()) {
      Write(SseErrorFrame(*end_status_), /*finish=*/true);
      return;
    }
    // The whole backlog in one write: what piles up while a write is in
    // flight is what the backlog bound measures.
    StreamSink::Batch batch = sink_->Take(SIZE_MAX);
    std::string out;
    for (const core::EventPtr& e : batch.events) {
      absl::StrAppend(&out, *core_->frames.Frame(e));
      last_revision_ = e->generation().revision();
    }
    if (batch.overflowed) return Pump();  // raced with the check above
    if (out.empty() && !batch.done) return;
    Write(std::move(out), batch.done);
  }

  void Write(std::string data, bool finish) {
    writing_ = true;
    finishing_ = finish;
    if (chunked_) {
      out_.clear();
      if (!data.empty()) {
        char size[24];
        snprintf(size, sizeof(size), "%zx\r\n", data.size());
        out_ = absl::StrCat(size, data, "\r\n");
      }
      if (finish) out_ += "0\r\n\r\n";
    } else {
      out_ = std::move(data);
    }
    stream_.expires_after(
        absl::ToChronoNanoseconds(core_->options.write_timeout));
    net::async_write(stream_, net::buffer(out_),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->OnWrite(ec);
                     });
  }

  void OnWrite(beast::error_code ec) {
    writing_ = false;
    if (closed_) return;
    stream_.expires_never();
    if (ec || finishing_) return Close();
    wrote_since_tick_ = true;
    Pump();
  }

  void ArmHeartbeat() {
    timer_.expires_after(
        absl::ToChronoNanoseconds(core_->options.heartbeat_interval));
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_) return;
      if (!self->writing_ && !self->finishing_ && !self->wrote_since_tick_) {
        self->Write(std::string(kSseHeartbeat), false);
      }
      self->wrote_since_tick_ = false;
      self->ArmHeartbeat();
    });
  }

  // The client sends nothing after its request; a read that completes means
  // it went away (or misbehaves). Either way the stream ends.
  void ReadForDisconnect() {
    stream_.socket().async_read_some(
        net::buffer(discard_),
        [self = shared_from_this()](beast::error_code ec, size_t) {
          if (self->closed_) return;
          if (ec) return self->Close();
          self->ReadForDisconnect();
        });
  }

  void SendErrorAndClose(const absl::Status& status) {
    Reply reply = ErrorReply(status);
    reply.text->version(params_.version);
    reply.text->keep_alive(false);
    error_reply_ = reply.text;
    status_ = reply.status();
    stream_.expires_after(
        absl::ToChronoNanoseconds(core_->options.write_timeout));
    bhttp::async_write(stream_, *error_reply_,
                       [self = shared_from_this()](beast::error_code, size_t) {
                         self->Close();
                       });
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    timer_.cancel();
    if (sink_ != nullptr) {
      sink_->Close();
      core_->UnwatchLater(sink_->TakeSubscription());
    }
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    if (registered_) core_->RemoveStream(id_);
    ReleaseTenant();
    LogRequest(*core_, params_.method, params_.kind, status_, params_.start);
  }

  void ReleaseTenant() {
    if (tenant_.has_value()) core_->ReleaseTenant(*tenant_);
    tenant_.reset();
  }

  const std::shared_ptr<Core> core_;
  beast::tcp_stream stream_;
  const net::any_io_executor ex_;      // the connection's strand
  std::optional<std::string> tenant_;  // the tenant slot this stream holds
  const Params params_;
  net::steady_timer timer_;
  std::shared_ptr<StreamSink> sink_;
  uint64_t id_ = 0;
  bool registered_ = false;
  bool started_ = false;    // headers written, events flowing
  bool writing_ = false;    // one write in flight at most
  bool finishing_ = false;  // the write in flight is the last
  bool closed_ = false;
  bool chunked_ = true;
  bool wrote_since_tick_ = false;
  int status_ = 200;
  int64_t last_revision_ = 0;
  std::optional<absl::Status> end_status_;
  std::string out_;
  std::shared_ptr<StringResponse> error_reply_;
  char discard_[512];
};

// ---- One connection while it speaks request/response ----

// Lives on its strand. Parked in Core while a worker handles its request.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket socket, std::shared_ptr<Core> core)
      : stream_(std::move(socket)), core_(std::move(core)) {}

  void Start() {
    net::dispatch(stream_.get_executor(),
                  [self = shared_from_this()] { self->Read(); });
  }

  void Send(Reply reply) {
    reply_ = std::move(reply);
    LogRequest(*core_, method_, kind_, reply_.status(), start_);
    if (reply_.text) {
      WriteMessage(reply_.text);
    } else {
      WriteMessage(reply_.file);
    }
  }

  net::any_io_executor executor() { return stream_.get_executor(); }

 private:
  void Read() {
    parser_.emplace();
    parser_->body_limit(core_->options.max_body_bytes);
    stream_.expires_after(
        absl::ToChronoNanoseconds(core_->options.idle_timeout));
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](
                          beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted) {
      return Close();
    }
    start_ = absl::Now();
    keep_alive_ = false;
    if (ec == bhttp::error::body_limit) {
      return Send(ErrorReply(absl::InvalidArgumentError(absl::StrCat(
                                 "request body is larger than ",
                                 core_->options.max_body_bytes, " bytes")),
                             413));
    }
    if (ec == bhttp::error::header_limit ||
        ec == bhttp::error::buffer_overflow) {
      return Send(ErrorReply(
          absl::InvalidArgumentError("request headers are too large"), 431));
    }
    if (ec.category() ==
        bhttp::make_error_code(bhttp::error::bad_target).category()) {
      return Send(ErrorReply(absl::InvalidArgumentError(
          absl::StrCat("malformed HTTP request: ", ec.message()))));
    }
    if (ec) return Close();  // reset, broken pipe: nobody to answer
    core_->requests++;
    Dispatch(parser_->release());
  }

  void Dispatch(bhttp::request<bhttp::string_body> req) {
    method_ = req.method();
    keep_alive_ = req.keep_alive();
    version_ = req.version();
    kind_ = RouteKind::kNotFound;
    absl::StatusOr<Target> target = ParseTarget(req.target());
    if (!target.ok()) return Send(ErrorReply(target.status()));
    Route route = MatchRoute(target->path);
    kind_ = route.kind;
    if (route.kind == RouteKind::kNotFound) {
      return Send(ErrorReply(absl::NotFoundError(
          absl::StrCat("no route for ", Av(bhttp::to_string(req.method())), " ",
                       target->path))));
    }
    std::string allow;
    if (!AllowedMethod(route.kind, req.method(), &allow)) {
      Reply r = ErrorReply(absl::UnimplementedError(absl::StrCat(
                               "method ", Av(bhttp::to_string(req.method())),
                               " is not allowed on ", Av(RouteName(route.kind)),
                               "; allowed: ", allow)),
                           405);
      r.text->set(bhttp::field::allow, allow);
      return Send(std::move(r));
    }
    if (route.kind == RouteKind::kDashboard) {
      std::optional<Reply> r = DashboardReply(target->path);
      if (!r.has_value()) {
        return Send(ErrorReply(absl::NotFoundError("no such asset")));
      }
      if (req.method() == bhttp::verb::head) r->text->body().clear();
      return Send(*std::move(r));
    }
    if (route.kind == RouteKind::kWatchOne ||
        route.kind == RouteKind::kWatchAll) {
      return StartStream(req, *target, route);
    }
    ApiCall call;
    call.kind = route.kind;
    call.id = route.id;
    call.target = *std::move(target);
    call.method = req.method();
    call.authorization = Header(req, bhttp::field::authorization);
    call.content_type = Header(req, bhttp::field::content_type);
    call.range = Header(req, bhttp::field::range);
    call.traceparent = std::string(req["traceparent"]);
    if (call.traceparent.size() > 128) call.traceparent.clear();
    if (route.kind == RouteKind::kMedia && call.authorization.empty()) {
      // <video src> cannot send headers; the token may show in access logs.
      if (auto token = call.target.Param("access_token")) {
        call.authorization = absl::StrCat("Bearer ", *token);
      }
    }
    call.body = std::move(req.body());
    RunOnWorker(std::move(call));
  }

  void RunOnWorker(ApiCall call) {
    uint64_t ticket = core_->Park(shared_from_this());
    if (ticket == 0) {
      return Send(ErrorReply(absl::UnavailableError("server is stopping")));
    }
    // The gateway may keep `respond` past the server's life: weak refs only.
    Respond respond = [weak = std::weak_ptr<Core>(core_), ticket](Reply r) {
      std::shared_ptr<Core> core = weak.lock();
      if (core == nullptr) return;
      core->DeliverToParked(ticket, [&r](std::shared_ptr<HttpSession> session) {
        net::any_io_executor ex = session->executor();
        net::post(ex,
                  [session = std::move(session), r = std::move(r)]() mutable {
                    session->Send(std::move(r));
                  });
      });
    };
    net::post(*core_->workers, [core = core_, call = std::move(call),
                                respond = std::move(respond)] {
      RunApiCall(*core, call, respond);
    });
  }

  void StartStream(const bhttp::request<bhttp::string_body>& req,
                   const Target& target, const Route& route) {
    SseStream::Params p;
    p.single = route.kind == RouteKind::kWatchOne;
    p.id = route.id;
    p.kind = route.kind;
    p.method = req.method();
    p.version = req.version();
    p.start = start_;
    p.authorization = Header(req, bhttp::field::authorization);
    if (p.authorization.empty()) {
      // EventSource cannot set headers; the token may show in access logs.
      if (auto token = target.Param("access_token")) {
        p.authorization = absl::StrCat("Bearer ", *token);
      }
    }
    if (p.single) {
      for (const auto& [name, value] : target.query) {
        if (name != "after_revision" && name != "access_token") {
          return Send(ErrorReply(absl::InvalidArgumentError(
              absl::StrCat("unknown query parameter '", name, "'"))));
        }
      }
      // Last-Event-ID is a per-generation revision: it resumes only here.
      absl::StatusOr<int64_t> after =
          ResumeRevision(std::string(req["Last-Event-ID"]), target);
      if (!after.ok()) return Send(ErrorReply(after.status()));
      p.after_revision = *after;
    } else {
      // The firehose ignores Last-Event-ID (an id of one generation says
      // nothing about the others); it restarts with a SNAPSHOT of every
      // matching live generation and the client drops what it has.
      absl::StatusOr<v1::WatchGenerationsRequest> all =
          WatchAllRequestFromQuery(target, {"access_token"});
      if (!all.ok()) return Send(ErrorReply(all.status()));
      p.all = *std::move(all);
    }
    // The stream takes the socket; this session ends here.
    auto stream =
        std::make_shared<SseStream>(core_, std::move(stream_), std::move(p));
    stream->Start();
  }

  template <class Body>
  void WriteMessage(std::shared_ptr<bhttp::response<Body>> msg) {
    msg->version(version_);
    msg->keep_alive(keep_alive_);
    auto sr = std::make_shared<bhttp::response_serializer<Body>>(*msg);
    WriteSome(std::move(msg), std::move(sr));
  }

  // Writes in slices so that write_timeout bounds a stall, not a download.
  template <class Body>
  void WriteSome(std::shared_ptr<bhttp::response<Body>> msg,
                 std::shared_ptr<bhttp::response_serializer<Body>> sr) {
    stream_.expires_after(
        absl::ToChronoNanoseconds(core_->options.write_timeout));
    auto& serializer = *sr;
    bhttp::async_write_some(
        stream_, serializer,
        [self = shared_from_this(), msg = std::move(msg), sr = std::move(sr)](
            beast::error_code ec, size_t) mutable {
          if (ec) return self->Close();
          if (!sr->is_done()) {
            return self->WriteSome(std::move(msg), std::move(sr));
          }
          self->reply_ = Reply{};
          if (!msg->keep_alive()) return self->Close();
          self->Read();
        });
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  std::shared_ptr<Core> core_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Reply reply_;
  bhttp::verb method_ = bhttp::verb::get;
  RouteKind kind_ = RouteKind::kNotFound;
  unsigned version_ = 11;
  bool keep_alive_ = false;
  absl::Time start_;
};

}  // namespace

// The event loop's objects, in destruction order: the acceptor, then the
// worker pool (its queued tasks may hold connections), then the io_context
// (which destroys the connections still waiting in it).
class HttpServer::Loop {
 public:
  explicit Loop(int workers)
      : workers(static_cast<size_t>(std::max(1, workers))),
        guard(net::make_work_guard(ioc)),
        acceptor(ioc) {}

  net::io_context ioc;
  net::thread_pool workers;
  net::executor_work_guard<net::io_context::executor_type> guard;
  tcp::acceptor acceptor;
  net::steady_timer retry{ioc};
};

namespace {

void Accept(const std::shared_ptr<Core>& core, HttpServer::Loop* loop);

void OnAccept(const std::shared_ptr<Core>& core, HttpServer::Loop* loop,
              beast::error_code ec, tcp::socket socket) {
  if (ec == net::error::operation_aborted || !loop->acceptor.is_open()) return;
  if (ec) {
    // Out of descriptors, usually: back off instead of spinning.
    loop->retry.expires_after(std::chrono::milliseconds(50));
    loop->retry.async_wait([core, loop](beast::error_code e) {
      if (!e) Accept(core, loop);
    });
    return;
  }
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);  // SSE frames are small
  if (core->options.socket_send_buffer_bytes > 0) {
    socket.set_option(net::socket_base::send_buffer_size(
                          core->options.socket_send_buffer_bytes),
                      ignored);
  }
  std::make_shared<HttpSession>(std::move(socket), core)->Start();
  Accept(core, loop);
}

void Accept(const std::shared_ptr<Core>& core, HttpServer::Loop* loop) {
  // Each connection gets its own strand: its handlers never run in parallel.
  loop->acceptor.async_accept(
      net::make_strand(loop->ioc),
      [core, loop](beast::error_code ec, tcp::socket socket) {
        OnAccept(core, loop, ec, std::move(socket));
      });
}

}  // namespace

HttpServer::HttpServer(HttpServerOptions options, api::Gateway* gateway,
                       auth::Authenticator* authenticator,
                       std::function<std::string()> metrics, MediaSource* media)
    : core_(std::make_shared<Core>(std::move(options), gateway, authenticator,
                                   std::move(metrics), media)) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start() {
  if (started_) return absl::FailedPreconditionError("already started");
  absl::StatusOr<tcp::endpoint> endpoint = ParseListen(core_->options.listen);
  if (!endpoint.ok()) return endpoint.status();
  loop_ = std::make_unique<Loop>(core_->options.worker_threads);
  core_->workers = &loop_->workers;
  beast::error_code ec;
  tcp::acceptor& acceptor = loop_->acceptor;
  acceptor.open(endpoint->protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(*endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    loop_->workers.join();
    loop_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ",
                                               core_->options.listen, ": ",
                                               ec.message()));
  }
  port_ = acceptor.local_endpoint().port();
  started_ = true;
  Accept(core_, loop_.get());
  int n = std::max(1, core_->options.io_threads);
  for (int i = 0; i < n; ++i) {
    io_threads_.emplace_back([loop = loop_.get()] { loop->ioc.run(); });
  }
  return absl::OkStatus();
}

void HttpServer::Drain() {
  if (!started_ || stopped_) return;
  for (const std::weak_ptr<SseStream>& weak : core_->BeginDrain()) {
    std::shared_ptr<SseStream> stream = weak.lock();
    if (stream == nullptr) continue;
    net::any_io_executor ex = stream->executor();
    net::post(ex, [stream = std::move(stream)] {
      stream->EndWithError(absl::UnavailableError(
          "server is draining; reconnect (with Last-Event-ID) to resume on "
          "another replica"));
    });
  }
}

bool HttpServer::AwaitRequests(absl::Time deadline) {
  if (!started_ || stopped_) return true;
  return core_->AwaitNoneParked(deadline);
}

void HttpServer::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  std::vector<std::shared_ptr<StreamSink>> sinks = core_->BeginStop();
  // No handler runs after this: every socket and timer is frozen.
  loop_->guard.reset();
  loop_->ioc.stop();
  for (std::thread& t : io_threads_) t.join();
  io_threads_.clear();
  beast::error_code ec;
  loop_->acceptor.close(ec);
  // Closed sinks take no events; a worker still inside Watch sees that and
  // unwatches itself.
  for (const auto& sink : sinks) sink->Close();
  loop_->workers.join();
  for (const auto& sink : sinks) {
    if (uint64_t id = sink->TakeSubscription(); id != 0) {
      core_->gateway->Unwatch(id);
    }
  }
  core_->Clear();
  loop_.reset();
}

HttpServerStats HttpServer::stats() const {
  HttpServerStats s;
  s.requests = core_->requests.load();
  s.open_streams = core_->open_streams();
  s.streams_opened = core_->streams_opened.load();
  s.streams_rejected = core_->streams_rejected.load();
  s.streams_cut_slow = core_->streams_cut_slow.load();
  return s;
}

}  // namespace videogen::http
