#include "server/app/server.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "httplib.h"
#include "server/api/event_stream.h"
#include "server/api/gateway_impl.h"
#include "server/api/instrumented_store.h"
#include "server/api/log.h"
#include "server/api/metrics.h"
#include "server/api/service.h"
#include "server/api/validation.h"
#include "server/app/wiring.h"
#include "server/auth/authenticator.h"
#include "server/core/estimator.h"
#include "server/core/fanout_hub.h"
#include "server/core/tracker.h"
#include "server/http/http_server.h"
#include "server/media/mirror_pool.h"
#include "server/sim/sim_server.h"
#include "server/upstream/aimlapi_upstream.h"
#include "server/webhooks/deliveries.h"
#include "server/webhooks/dispatcher.h"
#include "server/webhooks/retry_schedule.h"
#include "server/webhooks/url_policy.h"

namespace videogen::app {
namespace {

using api::Log;

// Serves /metrics on --metrics_listen from its own thread.
class MetricsServer {
 public:
  absl::Status Start(const std::string& address) {
    const size_t colon = address.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics_listen=", address, " is not host:port"));
    }
    server_.Get("/metrics", [](const httplib::Request&, httplib::Response& r) {
      r.set_content(api::Metrics::Global().Render(),
                    "text/plain; version=0.0.4; charset=utf-8");
    });
    const std::string host = address.substr(0, colon);
    port_ = port == 0 ? server_.bind_to_any_port(host)
                      : (server_.bind_to_port(host, port) ? port : -1);
    if (port_ <= 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot listen for metrics on ", address, " (address in use?)"));
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    return absl::OkStatus();
  }
  int port() const { return port_; }
  void Stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  ~MetricsServer() { Stop(); }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace

class Server::Impl {
 public:
  explicit Impl(Config config) : config_(std::move(config)) {}
  ~Impl() { Drain(); }

  absl::Status Start();
  void Drain();
  void Purge();

  Config config_;
  bool started_ = false;
  bool drained_ = false;
  core::SystemClock clock_;
  std::unique_ptr<store::Store> store_;
  Upstreams upstreams_;
  std::unique_ptr<core::Estimator> estimator_;
  std::unique_ptr<media::MediaStore> media_store_;
  media::MirrorStats mirror_stats_;
  std::unique_ptr<media::Mirror> mirror_;
  std::unique_ptr<webhooks::Dispatcher> dispatcher_;
  std::unique_ptr<core::FanoutHub> hub_;
  std::unique_ptr<core::Tracker> tracker_;
  std::unique_ptr<auth::Authenticator> auth_;
  std::unique_ptr<api::Gateway> gateway_;
  std::unique_ptr<api::StreamRegistry> registry_;
  std::unique_ptr<api::VideoGenerationService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<MediaSourceAdapter> media_source_;
  std::unique_ptr<http::HttpServer> http_;
  core::Subscription log_sub_;
  int grpc_port_ = 0;
  // Readiness follows the shared database (design.md §6): a replica that
  // cannot reach it says NOT_SERVING so the mesh sends calls elsewhere.
  std::thread readiness_;
  absl::Notification stop_readiness_;

  void WatchReadiness();
};

void Server::Impl::WatchReadiness() {
  bool serving = true;
  while (!stop_readiness_.WaitForNotificationWithTimeout(absl::Seconds(5))) {
    const absl::Status s = store_->CheckIntegrity();
    if (s.ok() == serving) continue;
    serving = s.ok();
    // The named service only: the liveness probe ("") must not restart a
    // pod because its database is away.
    grpc_->GetHealthCheckService()->SetServingStatus(
        "videogen.v1.VideoGeneration", serving);
    Log(serving ? "info" : "error", "readiness_changed",
        {{"serving", serving}, {"error", std::string(s.message())}});
  }
}

absl::Status Server::Impl::Start() {
  api::SetLogFormat(config_.log_format == "text" ? api::LogFormat::kText
                                                 : api::LogFormat::kJson);
  const std::string replica = ReplicaId(config_);
  absl::StatusOr<std::unique_ptr<store::Store>> opened = OpenStore(config_);
  if (!opened.ok()) return opened.status();
  if (absl::Status s = (*opened)->CheckIntegrity(); !s.ok()) return s;
  store_ = std::make_unique<api::InstrumentedStore>(*std::move(opened));

  absl::StatusOr<Upstreams> upstreams = StartUpstream(config_);
  if (!upstreams.ok()) return upstreams.status();
  upstreams_ = *std::move(upstreams);

  estimator_ = core::NewEstimator(store_.get());
  if (config_.mirror != "none") {
    absl::StatusOr<std::unique_ptr<media::MediaStore>> ms =
        OpenMediaStore(config_);
    if (!ms.ok()) return ms.status();
    media_store_ = *std::move(ms);
    media::MirrorOptions mo;
    mo.stats = &mirror_stats_;
    mirror_ = media::NewMirror(media_store_.get(), mo);
  }

  absl::StatusOr<std::unique_ptr<webhooks::Dispatcher>> dispatcher =
      StartDispatcher(config_, replica, store_.get());
  if (!dispatcher.ok()) return dispatcher.status();
  dispatcher_ = *std::move(dispatcher);

  hub_ = std::make_unique<core::FanoutHub>(store_.get(), &clock_);
  core::TrackerOptions to = TrackerOptionsFor(config_, replica);
  to.estimator = estimator_.get();
  to.mirror = mirror_.get();
  to.outbox_for = [](const v1::Generation& g) {
    if (g.request().webhook_url().empty())
      return std::vector<store::Delivery>{};
    v1::GenerationEvent event;
    event.set_type(v1::GenerationEvent::TYPE_UPDATE);
    *event.mutable_generation() = g;
    *event.mutable_observe_time() = g.update_time();
    return webhooks::DeliveriesFor(g, event);
  };
  to.on_outbox = [d = dispatcher_.get()] { d->Kick(); };
  tracker_ = std::make_unique<core::Tracker>(to, upstreams_.client.get(),
                                             store_.get(), &clock_);
  if (absl::Status s = tracker_->Recover(); !s.ok()) return s;
  tracker_->Start();
  absl::StatusOr<core::Subscription> log_sub =
      hub_->SubscribeAll(core::Filter{}, std::make_shared<GenerationLogSink>());
  if (log_sub.ok()) log_sub_ = *log_sub;

  auth_ = NewAuthenticator(config_, store_.get(), &clock_);
  api::GatewayOptions go;
  go.check_webhook_url =
      [insecure = config_.webhook_allow_insecure](const std::string& url) {
        return webhooks::ValidateWebhookUrl(url, insecure);
      };
  gateway_ = std::make_unique<api::GatewayImpl>(
      tracker_.get(), hub_.get(), store_.get(),
      api::Validator(config_.models.empty() ? api::DefaultModels()
                                            : config_.models),
      std::move(go));
  api::StreamLimits limits;
  limits.max_streams = config_.max_streams;
  limits.max_streams_per_tenant = config_.max_streams_per_tenant;
  limits.max_backlog = static_cast<size_t>(config_.stream_backlog);
  registry_ =
      std::make_unique<api::StreamRegistry>(config_.heartbeat_interval, limits);
  service_ = std::make_unique<api::VideoGenerationService>(
      gateway_.get(), auth_.get(), registry_.get());

  const bool metrics_on =
      !config_.metrics_listen.empty() || !config_.http_listen.empty();
  if (metrics_on) {
    RegisterCollectors(tracker_.get(), registry_.get(), store_.get(),
                       &mirror_stats_, media_store_.get());
  }
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc =
      StartGrpc(config_, service_.get(), metrics_on, &grpc_port_);
  if (!grpc.ok()) return grpc.status();
  grpc_ = *std::move(grpc);
  if (!config_.metrics_listen.empty()) {
    metrics_ = std::make_unique<MetricsServer>();
    if (absl::Status s = metrics_->Start(config_.metrics_listen); !s.ok()) {
      return s;
    }
    Log("info", "metrics_listening", {{"port", metrics_->port()}});
  }
  if (!config_.http_listen.empty()) {
    http::HttpServerOptions ho;
    ho.listen = config_.http_listen;
    ho.heartbeat_interval = config_.heartbeat_interval;
    ho.max_streams = static_cast<int>(config_.max_streams);
    ho.max_streams_per_tenant = config_.max_streams_per_tenant;
    ho.stream_backlog_events = static_cast<size_t>(config_.stream_backlog);
    media_source_ = std::make_unique<MediaSourceAdapter>(media_store_.get());
    http_ = std::make_unique<http::HttpServer>(
        ho, gateway_.get(), auth_.get(),
        [] { return api::Metrics::Global().Render(); }, media_source_.get());
    if (absl::Status s = http_->Start(); !s.ok()) return s;
    Log("info", "http_listening", {{"port", http_->port()}});
  }
  if (config_.store == "postgres") {
    readiness_ = std::thread([this] { WatchReadiness(); });
  }
  started_ = true;
  std::string host = config_.listen.substr(0, config_.listen.rfind(':'));
  Log("info", "server_listening",
      {{"address", absl::StrCat(host, ":", grpc_port_)},
       {"store", config_.store},
       {"replica_id", replica},
       {"auth", config_.auth},
       {"mirror", config_.mirror},
       {"simulate", upstreams_.sim != nullptr}});
  return absl::OkStatus();
}

void Server::Impl::Drain() {
  if (drained_) return;
  drained_ = true;
  const absl::Duration grace = config_.drain_grace;
  const absl::Time deadline = absl::Now() + grace;
  Log("info", "drain_started",
      {{"grace_ms", absl::ToInt64Milliseconds(grace)}});
  if (readiness_.joinable()) {
    stop_readiness_.Notify();
    readiness_.join();
  }
  if (grpc_ != nullptr) grpc_->GetHealthCheckService()->SetServingStatus(false);
  if (registry_ != nullptr) registry_->Drain();  // watchers resume elsewhere
  if (http_ != nullptr) http_->Drain();
  // Unary calls (a create waiting for its submit) get until the deadline,
  // on both edges. gRPC's Shutdown waits for every call to finish, and a
  // create finishes only when its submit answers: so at the deadline the
  // tracker stops, which answers those creates UNAVAILABLE (HTTP 503), and
  // Shutdown can return.
  absl::Notification shut;
  std::thread shutdown([&] {
    if (grpc_ != nullptr) {
      grpc_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoMilliseconds(grace));
    }
    shut.Notify();
  });
  shut.WaitForNotificationWithDeadline(deadline);
  if (http_ != nullptr) http_->AwaitRequests(deadline);
  if (tracker_ != nullptr) tracker_->Stop();
  shutdown.join();
  if (registry_ != nullptr) registry_->AwaitEmpty(absl::Seconds(1));
  // Nothing may read the tracker or registry after this point.
  api::Metrics::Global().ClearCollectors();
  if (metrics_ != nullptr) metrics_->Stop();
  if (http_ != nullptr) http_->Stop();
  if (hub_ != nullptr && log_sub_.id != 0) hub_->Unsubscribe(log_sub_.id);
  upstreams_.client.reset();  // cancels calls in flight; sent stays sent
  tracker_.reset();
  if (dispatcher_ != nullptr) dispatcher_->Stop();
  mirror_.reset();  // aborts copies; the next start mirrors them again
  grpc_.reset();
  service_.reset();
  registry_.reset();
  http_.reset();
  gateway_.reset();
  hub_.reset();
  dispatcher_.reset();
  upstreams_.sim.reset();
  store_.reset();
  Log("info", "drain_finished");
  api::FlushLogs();
}

void Server::Impl::Purge() {
  if (store_ == nullptr) return;
  absl::StatusOr<std::vector<std::string>> purged =
      store_->PurgeTerminalBefore(absl::Now() - config_.retention);
  if (!purged.ok()) {
    Log("warn", "purge_failed",
        {{"error", std::string(purged.status().message())}});
    return;
  }
  for (const std::string& id : *purged) {
    if (media_store_ != nullptr) media_store_->Remove(id).IgnoreError();
    if (media_source_ != nullptr) media_source_->Forget(id);
  }
  if (!purged->empty()) Log("info", "purged", {{"count", purged->size()}});
}

Server::Server(Config config)
    : impl_(std::make_unique<Impl>(std::move(config))) {}
Server::~Server() = default;
absl::Status Server::Start() { return impl_->Start(); }
void Server::Drain() { impl_->Drain(); }
void Server::Purge() { impl_->Purge(); }
int Server::grpc_port() const { return impl_->grpc_port_; }
int Server::http_port() const {
  return impl_->http_ != nullptr ? impl_->http_->port() : 0;
}
int Server::metrics_port() const {
  return impl_->metrics_ != nullptr ? impl_->metrics_->port() : 0;
}

}  // namespace videogen::app
