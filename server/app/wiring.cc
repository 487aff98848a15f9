#include "server/app/wiring.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/api/log.h"
#include "server/api/metrics.h"
#include "server/api/request_errors.h"
#include "server/media/sha256.h"
#include "server/store/memory_store.h"
#include "server/store/postgres_store.h"
#include "server/store/sqlite_store.h"
#include "server/util/proto_time.h"
#include "server/webhooks/retry_schedule.h"

namespace videogen::app {
namespace {

using api::Log;

constexpr char kServiceName[] = "videogen.v1.VideoGeneration";

int Ms(absl::Duration d) {
  if (d == absl::ZeroDuration()) return INT32_MAX;  // "never"
  return static_cast<int>(absl::ToInt64Milliseconds(d));
}

absl::StatusOr<std::string> ReadFile(const std::string& flag,
                                     const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read --", flag, "=", path,
                     ": the file is missing or not readable by this user"));
  }
  std::stringstream s;
  s << in.rdbuf();
  if (s.str().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--", flag, "=", path, " is empty"));
  }
  return s.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(
    const Config& c) {
  if (c.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFile("tls_cert_file", c.tls_cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile("tls_key_file", c.tls_key_file);
  if (!key.ok()) return key.status();
  if (cert->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--tls_cert_file=", c.tls_cert_file, " holds no PEM certificate"));
  }
  if (key->find("PRIVATE KEY-----") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--tls_key_file=", c.tls_key_file, " holds no PEM private key"));
  }
  grpc::SslServerCredentialsOptions opts(
      GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  opts.pem_key_cert_pairs.push_back({*key, *cert});
  if (!c.tls_client_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadFile("tls_client_ca_file", c.tls_client_ca_file);
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
    opts.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

void ApplyChannelArgs(const Config& c, grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, Ms(c.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             Ms(c.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      Ms(c.keepalive_min_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             Ms(c.max_connection_age));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             Ms(c.max_connection_age_grace));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             c.max_concurrent_streams_per_connection);
  builder.SetMaxReceiveMessageSize(c.max_message_bytes);
}

// Drops the reflection service's builder plugin (see StartGrpc).
class WithoutReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                         return p->name().find("reflection") !=
                                std::string::npos;
                       }),
        plugins->end());
  }
};

}  // namespace

std::string ReplicaId(const Config& c) {
  if (!c.replica_id.empty()) return c.replica_id;
  if (c.store != "postgres") return "local";
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "-", getpid());
}

absl::StatusOr<std::unique_ptr<store::Store>> OpenStore(const Config& c,
                                                        StoreUser user) {
  if (c.store == "memory") {
    Log("warn", "store_memory",
        {{"message", "--store=memory: generations are lost on restart"}});
    return std::unique_ptr<store::Store>(new store::MemoryStore());
  }
  if (c.store == "postgres") {
    store::PostgresOptions o;
    o.application_name = "videogen-" + ReplicaId(c);
    o.on_feed_error = [](const absl::Status& s) {
      // The feed reconnects and catches up by itself; say so once per error.
      Log("warn", "change_feed_error", {{"error", std::string(s.message())}});
    };
    auto pg = store::PostgresStore::Open(c.database_url, o);
    if (!pg.ok()) return pg.status();
    return std::unique_ptr<store::Store>(std::move(*pg));
  }
  store::SqliteOptions o;
  if (user == StoreUser::kKeysCommand) {
    o.role = store::SqliteOptions::Role::kKeyAdmin;
  }
  auto sqlite = store::SqliteStore::Open(c.data_dir, o);
  if (!sqlite.ok()) return sqlite.status();
  return std::unique_ptr<store::Store>(std::move(*sqlite));
}

absl::StatusOr<Upstreams> StartUpstream(const Config& c) {
  upstream::AimlApiOptions opts;
  opts.base_url = c.upstream_url;
  opts.api_key = c.api_key;
  opts.endpoint = c.upstream_endpoint == "generations"
                      ? upstream::EndpointFamily::kGenerations
                      : upstream::EndpointFamily::kLegacy;
  opts.rate_limit_per_second = c.upstream_rate_limit;
  opts.max_in_flight = c.upstream_max_in_flight;
  // A connection for every request in flight: otherwise (HTTP/1.1) a submit
  // whose intent is already recorded as sent waits inside curl for a
  // connection, and a crash or a timeout there leaves a generation that
  // never left reported as SUBMIT_UNCONFIRMED instead of resubmitted.
  opts.max_connections = std::max(opts.max_connections, opts.max_in_flight);
  opts.request_timeout = c.upstream_timeout;
  opts.on_attempt = [](const upstream::AttemptRecord& a) {
    api::Metrics& m = api::Metrics::Global();
    const std::string endpoint = a.kind == upstream::CallKind::kSubmit
                                     ? "submit"
                                 : a.kind == upstream::CallKind::kPoll ? "poll"
                                                                       : "logs";
    const std::string status_class =
        a.http_status == 0 ? "transport"
                           : absl::StrCat(a.http_status / 100, "xx");
    m.Add("videogen_upstream_requests_total",
          {{"endpoint", endpoint}, {"status_class", status_class}});
    m.Observe("videogen_upstream_request_duration_seconds",
              {{"endpoint", endpoint}}, absl::ToDoubleSeconds(a.latency));
    if (a.attempt > 1) m.Add("videogen_upstream_retries_total", {});
    if (a.http_status == 0 || a.http_status >= 400) {
      m.Add("videogen_upstream_faults_total",
            {{"endpoint", endpoint}, {"kind", status_class}});
    }
  };
  Upstreams out;
  if (c.simulate || c.api_key.empty()) {
    if (!c.simulate) {
      Log("warn", "simulate_default",
          {{"message",
            "NO API KEY (AIMLAPI_KEY or --api_key_file): running against the "
            "built-in SIMULATED upstream; no real videos will be made"}});
    }
    sim::SimOptions sim_opts;
    sim_opts.queued_for = c.sim_queued_for;
    sim_opts.generating_for = c.sim_generating_for;
    sim_opts.error_rate = c.sim_error_rate;
    out.sim = std::make_unique<sim::SimServer>(sim_opts);
    if (absl::Status s = out.sim->Start(); !s.ok()) return s;
    opts.base_url = out.sim->base_url();
    opts.api_key = sim_opts.api_key;
    opts.rate_limit_per_second = 0;
    Log("info", "simulator_started", {{"url", opts.base_url}});
  } else if (absl::Status s = upstream::AimlApiUpstream::CheckBaseUrl(
                 opts.base_url, !opts.api_key.empty());
             !s.ok()) {
    return s;
  }
  out.client = std::make_unique<upstream::AimlApiUpstream>(opts);
  return out;
}

core::TrackerOptions TrackerOptionsFor(const Config& c,
                                       const std::string& replica) {
  core::TrackerOptions o;
  o.poll_initial_delay = c.poll_initial_delay;
  o.poll_interval = c.poll_interval;
  o.generation_deadline = c.generation_deadline;
  o.owner = replica;
  o.lease_duration = c.lease_duration;
  o.shared_store = c.store == "postgres";
  o.max_outstanding_submits = c.max_outstanding_submits;
  o.reconcile_window = c.reconcile_window;
  o.reconcile_rate_per_minute = c.reconcile_rate;
  o.reconcile_interval = c.reconcile_interval;
  o.on_poll_lag = [](absl::Duration lag) {
    api::Metrics::Global().Observe("videogen_poll_lag_seconds", {},
                                   absl::ToDoubleSeconds(lag));
  };
  return o;
}

absl::StatusOr<std::unique_ptr<media::MediaStore>> OpenMediaStore(
    const Config& c) {
  if (c.mirror == "s3") {
    media::S3Options s3;
    s3.endpoint = c.s3_endpoint;
    s3.bucket = c.s3_bucket;
    s3.region = c.s3_region;
    s3.staging_dir = c.data_dir + "/media-staging";
    if (absl::Status s = media::S3CredentialsFromEnv(s3); !s.ok()) return s;
    return media::NewS3MediaStore(s3);
  }
  return media::NewLocalMediaStore(c.data_dir + "/media");
}

absl::StatusOr<std::unique_ptr<webhooks::Dispatcher>> StartDispatcher(
    const Config& c, const std::string& replica, store::Store* store) {
  webhooks::DispatcherOptions o;
  o.owner = replica;
  o.allow_insecure = c.webhook_allow_insecure;
  if (!c.webhook_retry_schedule.empty()) {
    auto schedule = webhooks::ParseRetrySchedule(c.webhook_retry_schedule);
    if (!schedule.ok()) return schedule.status();
    o.retry_schedule = *std::move(schedule);
  }
  std::string none_secret;
  if (!c.webhook_secret_file.empty()) {
    std::ifstream in(c.webhook_secret_file);
    std::stringstream s;
    s << in.rdbuf();
    none_secret = std::string(absl::StripAsciiWhitespace(s.str()));
    if (none_secret.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot read a whsec_ secret from --webhook_secret_file=",
          c.webhook_secret_file));
    }
  }
  // A tenant's secret comes from one of its live keys. The dispatcher thread
  // is the only caller, so a plain map caches the answers for a few seconds
  // (a revoked key stops signing within that time, as it stops calling).
  struct Cached {
    absl::StatusOr<std::string> secret;
    absl::Time until;
  };
  auto cache = std::make_shared<std::map<std::string, Cached>>();
  o.secret_for = [store, none_secret, cache](
                     const std::string& tenant) -> absl::StatusOr<std::string> {
    if (tenant.empty()) {
      if (none_secret.empty()) {
        return absl::FailedPreconditionError(
            "no webhook secret: with --auth=none set --webhook_secret_file");
      }
      return none_secret;
    }
    const absl::Time now = absl::Now();
    if (auto it = cache->find(tenant);
        it != cache->end() && it->second.until > now) {
      return it->second.secret;
    }
    absl::StatusOr<std::vector<store::ApiKey>> keys = store->ListKeys();
    if (!keys.ok()) return keys.status();
    absl::StatusOr<std::string> secret = absl::FailedPreconditionError(
        absl::StrCat("tenant \"", tenant, "\" has no live key to sign with"));
    for (const store::ApiKey& k : *keys) {
      if (k.tenant == tenant && !k.revoked.has_value() &&
          !k.webhook_secret.empty()) {
        secret = k.webhook_secret;
        break;
      }
    }
    (*cache)[tenant] = Cached{secret, now + absl::Seconds(5)};
    return secret;
  };
  o.hooks.on_store_error = [](std::string_view operation,
                              const absl::Status& s) {
    Log("warn", "webhook_store_error",
        {{"operation", std::string(operation)},
         {"error", std::string(s.message())}});
  };
  o.hooks.on_attempt = [](const webhooks::AttemptReport& a) {
    api::Metrics& m = api::Metrics::Global();
    m.Add("videogen_webhook_attempts_total", {{"reason", a.reason}});
    m.Observe("videogen_webhook_queue_age_seconds", {},
              absl::ToDoubleSeconds(a.queue_age));
  };
  o.hooks.on_settled = [](std::string_view outcome, absl::Duration delay) {
    api::Metrics& m = api::Metrics::Global();
    m.Add("videogen_webhook_deliveries_total",
          {{"outcome", std::string(outcome)}});
    m.Observe("videogen_webhook_delivery_delay_seconds", {},
              absl::ToDoubleSeconds(delay));
  };
  return webhooks::Dispatcher::Create(store, std::move(o));
}

std::unique_ptr<auth::Authenticator> NewAuthenticator(const Config& c,
                                                      store::Store* store,
                                                      core::Clock* clock) {
  if (c.auth == "none") {
    Log("warn", "auth_none",
        {{"message",
          "--auth=none: EVERY CALLER IS AN ADMIN and spends the upstream key; "
          "use --auth=keys outside a trusted loopback setup"}});
    return auth::NewAllowAllAuthenticator();
  }
  Log("info", "auth_keys",
      {{"message",
        "--auth=keys: every call needs authorization: Bearer KEY "
        "(videogen-server keys create --tenant=NAME)"}});
  return auth::NewKeyAuthenticator(store, clock);
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpc(
    const Config& c, api::VideoGenerationService* service, bool metrics_on,
    int* port) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
      Credentials(c);
  if (!creds.ok()) return creds.status();
  grpc::EnableDefaultHealthCheckService(true);
  api::RouteProtobufLogs();
  grpc::ServerBuilder builder;
  if (c.reflection) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  } else {
    // Linking grpc++_reflection registers its plugin at static init, so
    // reflection would be on whatever the flag says: take it out.
    builder.SetOption(std::make_unique<WithoutReflection>());
  }
  builder.AddListeningPort(c.listen, *creds, port);
  builder.RegisterService(service);
  ApplyChannelArgs(c, builder);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  // First, so the metrics count the code it rewrites.
  interceptors.push_back(std::make_unique<api::BadRequestInterceptorFactory>());
  if (metrics_on) {
    interceptors.push_back(
        std::make_unique<api::GrpcMetricsInterceptorFactory>());
  }
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", c.listen,
                     ": the address is in use or not valid host:port"));
  }
  server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  return server;
}

void RegisterCollectors(core::Tracker* tracker, api::StreamRegistry* registry,
                        store::Store* store, media::MirrorStats* mirror_stats,
                        media::MediaStore* media_store) {
  api::Metrics& m = api::Metrics::Global();
  api::DescribeVideogenMetrics(m);
  using T = api::Metrics::Type;
  m.Describe("videogen_webhook_attempts_total", T::kCounter,
             "Webhook delivery attempts by outcome reason.");
  m.Describe("videogen_webhook_deliveries_total", T::kCounter,
             "Webhook deliveries ended, by outcome.");
  m.Describe("videogen_webhook_queue_age_seconds", T::kHistogram,
             "Age of a delivery when its attempt starts.",
             {0.1, 1, 5, 30, 60, 300, 1800, 7200});
  m.Describe("videogen_webhook_delivery_delay_seconds", T::kHistogram,
             "From the change to the end of its delivery.",
             {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 300});
  m.Describe("videogen_webhook_outbox", T::kGauge, "Deliveries pending.");
  m.Describe("videogen_webhook_outbox_oldest_seconds", T::kGauge,
             "Age of the oldest pending delivery.");
  m.Describe("videogen_mirror_bytes_total", T::kCounter,
             "Bytes of video copied into the media store.");
  m.Describe("videogen_mirror_failures_total", T::kCounter,
             "Mirror copies that failed after retries, by reason.");
  m.Describe("videogen_generation_duration_seconds", T::kHistogram,
             "From create to COMPLETED, by model and clip duration.",
             {30, 60, 120, 240, 300, 360, 420, 540, 660, 780, 900, 1200, 1800});
  m.Describe("videogen_media_store_bytes", T::kGauge,
             "Bytes held by the media store (local store only).");
  m.AddCollector([tracker, registry, store, mirror_stats,
                  media_store](api::Metrics& m) {
    m.Set("videogen_open_streams", {}, registry->size());
    // Every state each time, so a count that drops to zero shows zero.
    const auto counts = tracker->CountByState();
    for (int s = v1::Generation::STATE_QUEUED;
         s <= v1::Generation::STATE_CANCELLED; ++s) {
      auto state = static_cast<v1::Generation::State>(s);
      auto it = counts.find(state);
      m.Set("videogen_generations",
            {{"state", v1::Generation::State_Name(state)}},
            it == counts.end() ? 0 : it->second);
    }
    if (auto outbox = store->OutboxStats(); outbox.ok()) {
      m.Set("videogen_webhook_outbox", {}, outbox->first);
      m.Set("videogen_webhook_outbox_oldest_seconds", {},
            outbox->first == 0
                ? 0
                : absl::ToDoubleSeconds(absl::Now() - outbox->second));
    }
    const media::MirrorStats::Snapshot ms = mirror_stats->snapshot();
    m.Set("videogen_mirror_bytes_total", {},
          static_cast<double>(ms.bytes_mirrored));
    for (const auto& [reason, n] : ms.failures) {
      m.Set("videogen_mirror_failures_total", {{"reason", reason}},
            static_cast<double>(n));
    }
    if (media_store != nullptr) {
      if (auto bytes = media_store->StoredBytes(); bytes.has_value()) {
        m.Set("videogen_media_store_bytes", {}, static_cast<double>(*bytes));
      }
    }
    m.Set("videogen_log_lines_dropped_total", {},
          static_cast<double>(util::DroppedLogLines()));
  });
}

void GenerationLogSink::OnEvent(core::EventPtr event) {
  if (event->type() != v1::GenerationEvent::TYPE_UPDATE) return;
  const v1::Generation& g = event->generation();
  nlohmann::json fields = {{"generation_id", g.id()},
                           {"tenant", g.tenant()},
                           {"request_id", g.request().request_id()},
                           {"state", v1::Generation::State_Name(g.state())},
                           {"revision", g.revision()},
                           {"upstream_status", g.upstream_status()}};
  if (g.has_error()) fields["reason"] = g.error().reason();
  if (g.done() && g.usage().credits_used() > 0) {
    api::Metrics::Global().Add("videogen_tenant_credits_used_total",
                               {{"tenant", api::TenantLabel(g.tenant())}},
                               static_cast<double>(g.usage().credits_used()));
  }
  if (g.state() == v1::Generation::STATE_COMPLETED) {
    // The run times the estimator learns from, for dashboards (§10).
    api::Metrics::Global().Observe(
        "videogen_generation_duration_seconds",
        {{"model", g.request().model()},
         {"duration", std::to_string(g.request().duration_seconds())}},
        absl::ToDoubleSeconds(util::FromTimestamp(g.update_time()) -
                              util::FromTimestamp(g.create_time())));
  }
  if (g.revision() == 1) {
    api::Metrics& m = api::Metrics::Global();
    m.Add("videogen_tenant_generations_total",
          {{"tenant", api::TenantLabel(g.tenant())}});
    m.Add("videogen_tenant_video_seconds_total",
          {{"tenant", api::TenantLabel(g.tenant())}},
          g.request().duration_seconds());
  }
  Log("info", "generation_updated", std::move(fields));
}

namespace {

// "ID.SHA256" (or "ID.size-N" for an object of unknown hash): a re-mirrored
// object gets a new name, so a stale copy is never served for it.
std::string CacheName(std::string_view id, const media::MediaObject& object) {
  // Abseil's string_view is not std::string_view on Debian 12.
  const absl::string_view name(id.data(), id.size());
  return object.sha256.empty() ? absl::StrCat(name, ".size-", object.size)
                               : absl::StrCat(name, ".", object.sha256);
}

// The store's refusals are videogen's problem, not the caller's: S3's 403
// (wrong credentials) must not reach the client as its own 403. Only "there
// is no copy" passes through; the rest is 503 with the store's message,
// which never carries a secret.
absl::Status ForCaller(const absl::Status& s) {
  if (absl::IsNotFound(s) || absl::IsInvalidArgument(s)) {
    return absl::NotFoundError(s.message());
  }
  return absl::UnavailableError(absl::StrCat("media store: ", s.message()));
}

http::MediaFile FileOf(std::string path, const media::MediaObject& object) {
  return http::MediaFile{std::move(path), object.size, object.content_type,
                         object.sha256};
}

}  // namespace

MediaSourceAdapter::MediaSourceAdapter(media::MediaStore* store,
                                       int64_t cache_bytes)
    : store_(store),
      cache_bytes_(cache_bytes),
      cache_dir_(store != nullptr ? store->staging_dir() + "/http-cache"
                                  : std::string()) {}

absl::StatusOr<http::MediaFile> MediaSourceAdapter::Open(
    std::string_view /*tenant_scope*/, std::string_view generation_id) {
  if (store_ == nullptr) {
    return absl::NotFoundError("mirroring is off on this server");
  }
  // Asked every time, also for a cached copy: the store is the truth
  // (retention may have removed the object since).
  absl::StatusOr<media::MediaObject> obj = store_->Open(generation_id);
  if (absl::IsNotFound(obj.status())) Forget(generation_id);
  if (!obj.ok()) return ForCaller(obj.status());
  if (!obj->local_path.empty()) return FileOf(obj->local_path, *obj);
  absl::StatusOr<http::MediaFile> file = OpenCached(generation_id, *obj);
  if (!file.ok()) return ForCaller(file.status());
  return file;
}

absl::StatusOr<http::MediaFile> MediaSourceAdapter::OpenCached(
    std::string_view id, const media::MediaObject& object) {
  absl::call_once(cache_once_, [this] { cache_status_ = PrepareCache(); });
  if (!cache_status_.ok()) return cache_status_;
  const std::string name = CacheName(id, object);
  const std::string path = absl::StrCat(cache_dir_, "/", name);
  std::shared_ptr<Fetching> fetch;
  bool leader = false;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = cached_.find(name); it != cached_.end()) {
      it->second.last_used = ++tick_;
      return FileOf(path, object);
    }
    auto [it, inserted] = fetching_.try_emplace(name);
    if (inserted) it->second = std::make_shared<Fetching>();
    leader = inserted;
    fetch = it->second;
  }
  if (!leader) {
    fetch->done.WaitForNotification();
    if (!fetch->status.ok()) return fetch->status;
    return FileOf(path, object);
  }
  absl::Status s = Fetch(id, object, path);
  std::vector<std::string> victims;
  {
    absl::MutexLock lock(&mu_);
    fetching_.erase(name);
    if (s.ok()) {
      cached_[name] = Cached{object.size, ++tick_};
      cached_total_ += object.size;
      victims = EvictLocked(name);
    }
  }
  fetch->status = s;
  fetch->done.Notify();
  for (const std::string& v : victims) {
    unlink(absl::StrCat(cache_dir_, "/", v).c_str());
  }
  if (!s.ok()) return s;
  return FileOf(path, object);
}

absl::Status MediaSourceAdapter::PrepareCache() {
  std::error_code ec;
  std::filesystem::create_directories(cache_dir_, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("media cache ", cache_dir_, ": ", ec.message()));
  }
  // Copies of an earlier process may belong to media purged since.
  for (const auto& e : std::filesystem::directory_iterator(cache_dir_, ec)) {
    std::filesystem::remove(e.path(), ec);
  }
  return absl::OkStatus();
}

absl::Status MediaSourceAdapter::Fetch(std::string_view id,
                                       const media::MediaObject& object,
                                       const std::string& path) {
  const std::string temp =
      absl::StrCat(cache_dir_, "/.part-", CacheName(id, object), "-",
                   temp_counter_.fetch_add(1));
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("media cache: cannot create a file in ", cache_dir_));
  }
  media::Sha256 hash;
  int64_t got = 0;
  bool write_failed = false;
  absl::Status s =
      store_->Read(id, 0, object.size, [&](std::string_view chunk) {
        const char* p = chunk.data();
        size_t left = chunk.size();
        while (left > 0) {
          ssize_t n = ::write(fd, p, left);
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) {
            write_failed = true;
            return false;
          }
          p += n;
          left -= static_cast<size_t>(n);
        }
        hash.Update(absl::string_view(chunk.data(), chunk.size()));
        got += static_cast<int64_t>(chunk.size());
        return true;
      });
  if (::close(fd) != 0) write_failed = true;
  if (s.ok() && write_failed) {
    s = absl::InternalError("media cache: write failed (disk full?)");
  } else if (s.ok() && got != object.size) {
    s = absl::DataLossError(
        absl::StrCat("media store sent ", got, " bytes of ", object.size));
  } else if (s.ok() && !object.sha256.empty() &&
             hash.HexDigest() != object.sha256) {
    s = absl::DataLossError(
        "the media store's copy does not match its SHA-256");
  }
  if (s.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    s = absl::InternalError("media cache: rename failed");
  }
  if (!s.ok()) ::unlink(temp.c_str());
  return s;
}

std::vector<std::string> MediaSourceAdapter::EvictLocked(
    const std::string& keep) {
  std::vector<std::string> victims;
  while (cached_total_ > cache_bytes_ && cached_.size() > 1) {
    auto oldest = cached_.end();
    for (auto it = cached_.begin(); it != cached_.end(); ++it) {
      if (it->first == keep) continue;
      if (oldest == cached_.end() ||
          it->second.last_used < oldest->second.last_used) {
        oldest = it;
      }
    }
    cached_total_ -= oldest->second.size;
    victims.push_back(oldest->first);
    cached_.erase(oldest);
  }
  return victims;
}

void MediaSourceAdapter::Forget(std::string_view id) {
  const std::string prefix =
      absl::StrCat(absl::string_view(id.data(), id.size()), ".");
  std::vector<std::string> victims;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = cached_.begin(); it != cached_.end();) {
      if (absl::StartsWith(it->first, prefix)) {
        cached_total_ -= it->second.size;
        victims.push_back(it->first);
        cached_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (const std::string& v : victims) {
    ::unlink(absl::StrCat(cache_dir_, "/", v).c_str());
  }
}

}  // namespace videogen::app
