#include "server/api/metrics.h"

#include <algorithm>

#include "grpcpp/support/interceptor.h"

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
}

namespace {

// Records the status a finished RPC sends. Lives for one RPC.
class GrpcMetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit GrpcMetricsInterceptor(std::string method)
      : method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    using H = grpc::experimental::InterceptionHookPoints;
    if (m->QueryInterceptionHookPoint(H::PRE_SEND_STATUS)) {
      Metrics::Global().Add(
          "videogen_grpc_requests_total",
          {{"method", method_}, {"code", CodeName(m->GetSendStatus())}});
    }
    m->Proceed();
  }

 private:
  static std::string CodeName(const grpc::Status& s) {
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
    int code = s.error_code();
    return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
  }
  std::string method_;
};

}  // namespace

grpc::experimental::Interceptor*
GrpcMetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new GrpcMetricsInterceptor(info->method());
}

}  // namespace videogen::api
