// videogen-server: the gRPC gateway. Wires store, upstream, tracker and the
// VideoGeneration service; drains in the order of design.md §3.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "httplib.h"
#include "server/api/event_stream.h"
#include "server/api/instrumented_store.h"
#include "server/api/log.h"
#include "server/api/metrics.h"
#include "server/api/service.h"
#include "server/api/validation.h"
#include "server/core/tracker.h"
#include "server/sim/sim_server.h"
#include "server/store/memory_store.h"
#include "server/store/sqlite_store.h"
#include "server/upstream/aimlapi_upstream.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC listen address host:port (port 0 picks a free port)");
ABSL_FLAG(std::string, metrics_listen, "",
          "Prometheus /metrics address host:port, e.g. 127.0.0.1:9464; empty "
          "turns metrics off");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain; with --tls_key_file serves TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for TLS");
ABSL_FLAG(std::string, store, "sqlite", "sqlite (durable) or memory");
ABSL_FLAG(std::string, data_dir, "videogen-data",
          "directory of the SQLite database (--store=sqlite)");
ABSL_FLAG(absl::Duration, retention, absl::Hours(24 * 30),
          "how long terminal generations are kept");
ABSL_FLAG(bool, simulate, false,
          "run the simulated AI/ML API in-process (default when no key)");
ABSL_FLAG(absl::Duration, sim_queued_for, absl::Seconds(1),
          "--simulate: time a job stays queued");
ABSL_FLAG(absl::Duration, sim_generating_for, absl::Seconds(3),
          "--simulate: time a job is generating");
ABSL_FLAG(double, sim_error_rate, 0, "--simulate: share of jobs that fail");
ABSL_FLAG(std::string, upstream_url, "https://api.aimlapi.com",
          "base URL of the AI/ML API");
ABSL_FLAG(std::string, upstream_endpoint, "legacy",
          "legacy (/v2/generate/video/kling/generation) or generations "
          "(/v2/video/generations)");
ABSL_FLAG(std::string, api_key_file, "",
          "file holding the AI/ML API key (else env AIMLAPI_KEY)");
ABSL_FLAG(double, upstream_rate_limit, 20,
          "upstream requests per second, all generations together (0 = off)");
ABSL_FLAG(int, upstream_max_in_flight, 64, "upstream requests in flight");
ABSL_FLAG(absl::Duration, upstream_timeout, absl::Seconds(30),
          "timeout of one upstream HTTP request");
ABSL_FLAG(std::string, models, "",
          "comma-separated accepted models (default: the known Kling models)");
ABSL_FLAG(absl::Duration, poll_initial_delay, absl::Seconds(2),
          "wait before a generation's first poll");
ABSL_FLAG(absl::Duration, poll_interval, absl::Seconds(5),
          "time between polls of one generation (with +-20% jitter)");
ABSL_FLAG(absl::Duration, generation_deadline, absl::Minutes(30),
          "a generation not done by then is FAILED with DEADLINE_EXCEEDED");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(15),
          "heartbeat on idle streams so proxies keep them open");
ABSL_FLAG(absl::Duration, drain_grace, absl::Seconds(20),
          "on SIGTERM: time in-flight RPCs get before they are cancelled");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Seconds(30),
          "server-sent HTTP/2 keepalive ping interval");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(10),
          "close a connection whose keepalive ping is unanswered this long");
ABSL_FLAG(absl::Duration, keepalive_min_ping_interval, absl::Seconds(10),
          "most frequent client keepalive pings permitted");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Minutes(30),
          "close connections after this age so load rebalances (0 = never)");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::Minutes(5),
          "time open RPCs get after max_connection_age");
ABSL_FLAG(std::string, log_format, "json", "json or text");

namespace videogen {
namespace {

using api::Log;

constexpr char kServiceName[] = "videogen.v1.VideoGeneration";

// Flags fall back to VIDEOGEN_<NAME> environment variables; the command line
// wins because absl keeps the last value given.
std::vector<char*> WithEnvFallbacks(int argc, char** argv,
                                    std::vector<std::string>& storage) {
  static const char* kNames[] = {"listen",
                                 "metrics_listen",
                                 "store",
                                 "data_dir",
                                 "retention",
                                 "upstream_url",
                                 "upstream_endpoint",
                                 "api_key_file",
                                 "poll_initial_delay",
                                 "poll_interval",
                                 "generation_deadline",
                                 "heartbeat_interval",
                                 "drain_grace",
                                 "log_format",
                                 "models",
                                 "tls_cert_file",
                                 "tls_key_file"};
  for (const char* name : kNames) {
    std::string env = absl::StrCat("VIDEOGEN_", absl::AsciiStrToUpper(name));
    if (const char* v = std::getenv(env.c_str())) {
      storage.push_back(absl::StrCat("--", name, "=", v));
    }
  }
  std::vector<char*> out = {argv[0]};
  for (auto& s : storage) out.push_back(s.data());
  for (int i = 1; i < argc; ++i) out.push_back(argv[i]);
  return out;
}

absl::StatusOr<std::string> ReadApiKey() {
  std::string path = absl::GetFlag(FLAGS_api_key_file);
  if (path.empty()) {
    const char* env = std::getenv("AIMLAPI_KEY");
    return env ? std::string(absl::StripAsciiWhitespace(env)) : "";
  }
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read --api_key_file ", path));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(buf.str()));
}

absl::StatusOr<std::unique_ptr<store::Store>> OpenStore() {
  const std::string kind = absl::GetFlag(FLAGS_store);
  if (kind == "memory") {
    Log("warn", "store_memory",
        {{"message", "--store=memory: generations are lost on restart"}});
    return std::unique_ptr<store::Store>(new store::MemoryStore());
  }
  if (kind != "sqlite") {
    return absl::InvalidArgumentError(
        absl::StrCat("--store=", kind, " is unknown; use sqlite or memory"));
  }
  auto sqlite = store::SqliteStore::Open(absl::GetFlag(FLAGS_data_dir));
  if (!sqlite.ok()) return sqlite.status();
  return std::unique_ptr<store::Store>(std::move(*sqlite));
}

std::vector<std::string> Models() {
  std::string flag = absl::GetFlag(FLAGS_models);
  if (flag.empty()) return api::DefaultModels();
  return absl::StrSplit(flag, ',', absl::SkipWhitespace());
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials() {
  std::string cert = absl::GetFlag(FLAGS_tls_cert_file);
  std::string key = absl::GetFlag(FLAGS_tls_key_file);
  if (cert.empty() && key.empty()) return grpc::InsecureServerCredentials();
  auto read = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  grpc::SslServerCredentialsOptions opts;
  opts.pem_key_cert_pairs.push_back({read(key), read(cert)});
  return grpc::SslServerCredentials(opts);
}

int Ms(absl::Duration d) {
  if (d == absl::ZeroDuration()) return INT32_MAX;  // "never"
  return static_cast<int>(absl::ToInt64Milliseconds(d));
}

void ApplyKeepalive(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             Ms(absl::GetFlag(FLAGS_keepalive_time)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             Ms(absl::GetFlag(FLAGS_keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      Ms(absl::GetFlag(FLAGS_keepalive_min_ping_interval)));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             Ms(absl::GetFlag(FLAGS_max_connection_age)));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             Ms(absl::GetFlag(FLAGS_max_connection_age_grace)));
}

// Blocks until SIGTERM or SIGINT; purges old records once an hour meanwhile.
int WaitForSignal(const sigset_t& signals, store::Store& store) {
  while (true) {
    timespec hour{3600, 0};
    int sig = sigtimedwait(&signals, nullptr, &hour);
    if (sig == SIGTERM || sig == SIGINT) return sig;
    auto purged =
        store.PurgeTerminalBefore(absl::Now() - absl::GetFlag(FLAGS_retention));
    if (purged.ok() && *purged > 0) Log("info", "purged", {{"count", *purged}});
  }
}

// Upstream attempt metrics; runs on the curl loop thread.
void RecordAttempt(const upstream::AttemptRecord& a) {
  api::Metrics& m = api::Metrics::Global();
  const std::string endpoint =
      a.kind == upstream::CallKind::kSubmit ? "submit" : "poll";
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
}

// Serves /metrics on --metrics_listen from its own thread.
class MetricsServer {
 public:
  absl::Status Start(const std::string& address) {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics_listen=", address, " is not host:port"));
    }
    int port = 0;
    if (!absl::SimpleAtoi(address.substr(colon + 1), &port)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics_listen=", address, " has no port number"));
    }
    server_.Get("/metrics", [](const httplib::Request&, httplib::Response& r) {
      r.set_content(api::Metrics::Global().Render(),
                    "text/plain; version=0.0.4; charset=utf-8");
    });
    const std::string host = address.substr(0, colon);
    port_ = port == 0 ? server_.bind_to_any_port(host)
                      : (server_.bind_to_port(host, port) ? port : -1);
    if (port_ <= 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen for metrics on ", address));
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

struct Upstreams {
  std::unique_ptr<sim::SimServer> sim;
  std::unique_ptr<upstream::AimlApiUpstream> client;
};

absl::StatusOr<Upstreams> StartUpstream() {
  absl::StatusOr<std::string> key = ReadApiKey();
  if (!key.ok()) return key.status();
  upstream::AimlApiOptions opts;
  opts.base_url = absl::GetFlag(FLAGS_upstream_url);
  opts.api_key = *key;
  opts.endpoint = absl::GetFlag(FLAGS_upstream_endpoint) == "generations"
                      ? upstream::EndpointFamily::kGenerations
                      : upstream::EndpointFamily::kLegacy;
  opts.rate_limit_per_second = absl::GetFlag(FLAGS_upstream_rate_limit);
  opts.max_in_flight = absl::GetFlag(FLAGS_upstream_max_in_flight);
  opts.request_timeout = absl::GetFlag(FLAGS_upstream_timeout);
  opts.on_attempt = RecordAttempt;
  Upstreams out;
  if (absl::GetFlag(FLAGS_simulate) || key->empty()) {
    if (!absl::GetFlag(FLAGS_simulate)) {
      Log("warn", "simulate_default",
          {{"message",
            "NO API KEY (AIMLAPI_KEY or --api_key_file): running against the "
            "built-in SIMULATED upstream; no real videos will be made"}});
    }
    sim::SimOptions sim_opts;
    sim_opts.queued_for = absl::GetFlag(FLAGS_sim_queued_for);
    sim_opts.generating_for = absl::GetFlag(FLAGS_sim_generating_for);
    sim_opts.error_rate = absl::GetFlag(FLAGS_sim_error_rate);
    out.sim = std::make_unique<sim::SimServer>(sim_opts);
    if (absl::Status s = out.sim->Start(); !s.ok()) return s;
    opts.base_url = out.sim->base_url();
    opts.api_key = sim_opts.api_key;
    opts.rate_limit_per_second = 0;
    Log("info", "simulator_started", {{"url", opts.base_url}});
  }
  out.client = std::make_unique<upstream::AimlApiUpstream>(opts);
  return out;
}

core::TrackerOptions TrackerFlags() {
  core::TrackerOptions o;
  o.poll_initial_delay = absl::GetFlag(FLAGS_poll_initial_delay);
  o.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  o.generation_deadline = absl::GetFlag(FLAGS_generation_deadline);
  o.on_poll_lag = [](absl::Duration lag) {
    api::Metrics::Global().Observe("videogen_poll_lag_seconds", {},
                                   absl::ToDoubleSeconds(lag));
  };
  return o;
}

// Logs every change of every generation: one line per event, with ids.
class LogSink final : public core::EventSink {
 public:
  void OnEvent(core::EventPtr event) override {
    if (event->type() != v1::GenerationEvent::TYPE_UPDATE) return;
    const v1::Generation& g = event->generation();
    nlohmann::json fields = {{"generation_id", g.id()},
                             {"request_id", g.request().request_id()},
                             {"state", v1::Generation::State_Name(g.state())},
                             {"revision", g.revision()},
                             {"upstream_status", g.upstream_status()}};
    if (g.has_error()) fields["reason"] = g.error().reason();
    Log("info", "generation_updated", std::move(fields));
  }
};

int Fail(const absl::Status& status, const char* what) {
  Log("error", "startup_failed",
      {{"what", what}, {"error", std::string(status.message())}});
  return 1;
}

int Run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts

  auto opened = OpenStore();
  if (!opened.ok()) return Fail(opened.status(), "store");
  std::unique_ptr<store::Store> store =
      std::make_unique<api::InstrumentedStore>(*std::move(opened));
  auto upstreams = StartUpstream();
  if (!upstreams.ok()) return Fail(upstreams.status(), "upstream");
  core::SystemClock clock;
  auto tracker = std::make_unique<core::Tracker>(
      TrackerFlags(), upstreams->client.get(), store.get(), &clock);
  if (absl::Status s = tracker->Recover(); !s.ok()) return Fail(s, "recover");
  tracker->StartPoller();
  core::Subscription log_sub =
      tracker->SubscribeAll(core::Filter{}, std::make_shared<LogSink>());

  api::StreamRegistry registry(absl::GetFlag(FLAGS_heartbeat_interval));
  std::unique_ptr<MetricsServer> metrics;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    api::Metrics& m = api::Metrics::Global();
    api::DescribeVideogenMetrics(m);
    m.AddCollector([&registry, t = tracker.get()](api::Metrics& m) {
      m.Set("videogen_open_streams", {}, registry.size());
      // Every state each time, so a count that drops to zero shows zero.
      const auto counts = t->CountByState();
      for (int s = v1::Generation::STATE_QUEUED;
           s <= v1::Generation::STATE_CANCELLED; ++s) {
        auto state = static_cast<v1::Generation::State>(s);
        auto it = counts.find(state);
        m.Set("videogen_generations",
              {{"state", v1::Generation::State_Name(state)}},
              it == counts.end() ? 0 : it->second);
      }
    });
    metrics = std::make_unique<MetricsServer>();
    if (absl::Status s = metrics->Start(absl::GetFlag(FLAGS_metrics_listen));
        !s.ok()) {
      return Fail(s, "metrics");
    }
    Log("info", "metrics_listening", {{"port", metrics->port()}});
  }
  api::VideoGenerationService service(tracker.get(), &registry,
                                      api::Validator(Models()));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), ServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  ApplyKeepalive(builder);
  if (metrics != nullptr) {
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(
        std::make_unique<api::GrpcMetricsInterceptorFactory>());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat(
                    "cannot listen on ", absl::GetFlag(FLAGS_listen),
                    " (address in use or invalid?)")),
                "listen");
  }
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  std::string host = absl::GetFlag(FLAGS_listen);
  host = host.substr(0, host.rfind(':'));
  Log("info", "server_listening",
      {{"address", absl::StrCat(host, ":", port)},
       {"store", absl::GetFlag(FLAGS_store)},
       {"simulate", upstreams->sim != nullptr}});

  int sig = WaitForSignal(signals, *store);
  const absl::Duration grace = absl::GetFlag(FLAGS_drain_grace);
  Log("info", "drain_started",
      {{"signal", sig}, {"grace_ms", absl::ToInt64Milliseconds(grace)}});
  health->SetServingStatus(false);  // every service NOT_SERVING
  registry.Drain();                 // watchers: UNAVAILABLE, resume elsewhere
  server->Shutdown(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(grace));
  registry.AwaitEmpty(absl::Seconds(1));
  tracker->Unsubscribe(log_sub.id);
  tracker->StopPoller();
  upstreams->client.reset();  // cancels calls still in flight
  tracker.reset();
  upstreams->sim.reset();
  if (metrics != nullptr) metrics->Stop();
  store.reset();
  Log("info", "drain_finished");
  return 0;
}

}  // namespace
}  // namespace videogen

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "videogen-server: gRPC gateway for text-to-video generation.\n"
      "Example: videogen-server --simulate --listen=127.0.0.1:50051");
  std::vector<std::string> storage;
  std::vector<char*> args = videogen::WithEnvFallbacks(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  videogen::api::SetLogFormat(absl::GetFlag(FLAGS_log_format) == "text"
                                  ? videogen::api::LogFormat::kText
                                  : videogen::api::LogFormat::kJson);
  return videogen::Run();
}
