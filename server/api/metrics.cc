#include "server/api/metrics.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/support/interceptor.h"
#include "server/api/methods.h"

namespace videogen::api {

Metrics& Metrics::Global() {
  static Metrics* metrics = new Metrics();
  return *metrics;
}

void Metrics::Describe(const std::string& name, Type type,
                       const std::string& help, std::vector<double> buckets) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.type = type;
  f.help = help;
  f.buckets = std::move(buckets);
  enabled_.store(true, std::memory_order_relaxed);
  // Unlabelled families show up at zero from the first scrape.
  if (type != Type::kHistogram) f.series.try_emplace(Labels{});
}

void Metrics::Add(const std::string& name, const Labels& labels, double delta) {
  if (!enabled_.load(std::memory_order_relaxed)) return;
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  it->second.series.erase(Labels{});  // labelled now
  it->second.series[labels].value += delta;
}

void Metrics::Set(const std::string& name, const Labels& labels, double value) {
  if (!enabled_.load(std::memory_order_relaxed)) return;
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  if (!labels.empty()) it->second.series.erase(Labels{});
  it->second.series[labels].value = value;
}

void Metrics::Observe(const std::string& name, const Labels& labels,
                      double value) {
  if (!enabled_.load(std::memory_order_relaxed)) return;
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  Family& f = it->second;
  Series& s = f.series[labels];
  s.counts.resize(f.buckets.size());
  auto bucket = std::lower_bound(f.buckets.begin(), f.buckets.end(), value);
  if (bucket != f.buckets.end()) ++s.counts[bucket - f.buckets.begin()];
  s.sum += value;
  ++s.count;
}

void Metrics::AddCollector(std::function<void(Metrics&)> collector) {
  absl::MutexLock lock(&mu_);
  collectors_.push_back(std::move(collector));
}

void Metrics::ClearCollectors() {
  absl::MutexLock lock(&mu_);
  collectors_.clear();
}

std::string Metrics::Render() {
  std::vector<std::function<void(Metrics&)>> collectors;
  {
    absl::MutexLock lock(&mu_);
    collectors = collectors_;
  }
  for (auto& c : collectors) c(*this);  // they take mu_ themselves
  absl::MutexLock lock(&mu_);
  return RenderPrometheus(families_);
}

void DescribeVideogenMetrics(Metrics& m) {
  using T = Metrics::Type;
  const std::vector<double> latency = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,  0.1,    0.25,  0.5,
                                       1,      2.5,   5,      10,    30};
  m.Describe("videogen_grpc_requests_total", T::kCounter,
             "Finished gRPC requests by method and status code.");
  m.Describe("videogen_open_streams", T::kGauge,
             "Server streams open now (Generate and Watch*).");
  m.Describe("videogen_generations", T::kGauge,
             "Generations known to this process, by state.");
  m.Describe("videogen_upstream_requests_total", T::kCounter,
             "Upstream HTTP attempts by endpoint and status class.");
  m.Describe("videogen_upstream_request_duration_seconds", T::kHistogram,
             "Upstream HTTP attempt latency.", latency);
  m.Describe("videogen_upstream_retries_total", T::kCounter,
             "Upstream attempts that were retries.");
  m.Describe("videogen_upstream_faults_total", T::kCounter,
             "Failed upstream attempts by kind (status class or transport).");
  m.Describe("videogen_poll_lag_seconds", T::kHistogram,
             "How late polls start against their schedule.", latency);
  m.Describe("videogen_fanout_latency_seconds", T::kHistogram,
             "From the server observing a change to writing it to a stream.",
             latency);
  m.Describe("videogen_store_write_duration_seconds", T::kHistogram,
             "Durable store write latency.", latency);
  m.Describe("videogen_tenant_generations_total", T::kCounter,
             "Generations created, by tenant.");
  m.Describe("videogen_tenant_video_seconds_total", T::kCounter,
             "Seconds of video requested, by tenant.");
  m.Describe("videogen_tenant_credits_used_total", T::kCounter,
             "Upstream credits reported for finished generations, by tenant.");
  m.Describe("videogen_quota_rejections_total", T::kCounter,
             "Creates refused by a quota, by tenant and limit.");
  m.Describe("videogen_log_lines_dropped_total", T::kCounter,
             "Log lines dropped because stderr could not keep up.");
}

// Tenants get a label of their own up to this many; the rest share
// "other", so the label set stays bounded however many keys exist.
constexpr size_t kMaxTenantLabels = 100;

std::string TenantLabel(const std::string& tenant) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* seen = new absl::flat_hash_set<std::string>();
  absl::MutexLock lock(&mu);
  if (seen->contains(tenant)) return tenant.empty() ? "-" : tenant;
  if (seen->size() >= kMaxTenantLabels) return "other";
  seen->insert(tenant);
  return tenant.empty() ? "-" : tenant;
}

namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int n = static_cast<int>(code);
  return n >= 0 && n <= 16 ? kNames[n] : "UNKNOWN";
}

// Records the status a finished RPC sends. Lives for one RPC.
class GrpcMetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit GrpcMetricsInterceptor(std::string method)
      : method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    using H = grpc::experimental::InterceptionHookPoints;
    if (m->QueryInterceptionHookPoint(H::PRE_SEND_STATUS)) {
      CountGrpcRequest(method_, m->GetSendStatus().error_code());
    }
    m->Proceed();
  }

 private:
  std::string method_;
};

}  // namespace

// The method label: a method this server serves, or "unknown". Unknown
// names come from clients and are unbounded: each one as its own series
// would let anyone grow the metrics without limit.
std::string MethodLabel(const char* method) {
  if (method == nullptr) return "unknown";
  if (KindOf(method) != MethodKind::kNotOurs) return method;
  static const auto* known = [] {
    auto* names = new absl::flat_hash_set<std::string>();
    names->insert("/grpc.health.v1.Health/Check");
    names->insert("/grpc.health.v1.Health/Watch");
    names->insert(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
    names->insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    return names;
  }();
  return known->contains(method) ? method : "unknown";
}

void CountGrpcRequest(const std::string& method, grpc::StatusCode code) {
  if (!Metrics::Global().enabled()) return;  // one per stream: skip the labels
  Metrics::Global().Add("videogen_grpc_requests_total",
                        {{"method", method}, {"code", CodeName(code)}});
}

grpc::experimental::Interceptor*
GrpcMetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  std::string method = MethodLabel(info->method());
  if (KindOf(method) == MethodKind::kStreaming) return nullptr;
  return new GrpcMetricsInterceptor(std::move(method));
}

}  // namespace videogen::api
