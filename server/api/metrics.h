#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"

namespace videogen::api {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Process-wide metric families. Thread-safe: any thread records, the metrics
// HTTP thread renders. Names follow Prometheus conventions (videogen_ prefix,
// base units, _total on counters); the text format is written only by
// RenderPrometheus in exposition.cc.
class Metrics {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  struct Series {
    double value = 0;              // counter or gauge
    std::vector<uint64_t> counts;  // histogram: per bucket, not cumulative
    double sum = 0;
    uint64_t count = 0;
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<double> buckets;  // histogram upper bounds, ascending
    std::map<Labels, Series> series;
  };

  static Metrics& Global();

  void Describe(const std::string& name, Type type, const std::string& help,
                std::vector<double> buckets = {});
  void Add(const std::string& name, const Labels& labels, double delta = 1);
  void Set(const std::string& name, const Labels& labels, double value);
  void Observe(const std::string& name, const Labels& labels, double value);
  // Runs before every render, to refresh gauges read from elsewhere.
  void AddCollector(std::function<void(Metrics&)> collector);
  // Drops every collector. Called at shutdown before what they read goes.
  void ClearCollectors();

  std::string Render();

  // Whether anything is recorded (--metrics_listen set). Hot paths check it
  // before building names and labels.
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

 private:
  // False until a family is described (--metrics_listen set): recording is
  // then a single atomic load, so hot paths pay nothing with metrics off.
  std::atomic<bool> enabled_{false};
  absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(Metrics&)>> collectors_ ABSL_GUARDED_BY(mu_);
};

// The text exposition format 0.0.4 of `families`.
std::string RenderPrometheus(
    const std::map<std::string, Metrics::Family>& families);

// Declares every videogen metric family (so all appear from the first
// scrape, at zero).
void DescribeVideogenMetrics(Metrics& m);

// A tenant's value for a `tenant` label: its name for the first 100 tenants
// seen, "other" after that ("-" for the unnamed tenant of --auth=none).
std::string TenantLabel(const std::string& tenant);

// Counts one finished RPC in videogen_grpc_requests_total{method,code}.
void CountGrpcRequest(const std::string& method, grpc::StatusCode code);

// Counts finished RPCs by method and code, except the three streaming
// VideoGeneration methods: their streams count themselves (CountGrpcRequest),
// because an interceptor adds a completion-queue round trip to every message
// written on its call.
class GrpcMetricsInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace videogen::api
