#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace videogen::bench {

// Outcome of a closed-loop load run.
struct LoadResult {
  int64_t ok = 0;
  int64_t errors = 0;
  std::string first_error;
  absl::Duration elapsed;
  std::vector<int64_t> latency_us;  // successful calls only
};

// `concurrency` CreateGeneration calls in flight for `duration`.
LoadResult RunCreateLoad(const std::shared_ptr<grpc::Channel>& channel,
                         int concurrency, absl::Duration duration);
// `concurrency` Generate streams, each read to its terminal event.
LoadResult RunGenerateLoad(const std::shared_ptr<grpc::Channel>& channel,
                           int concurrency, absl::Duration duration);
// `concurrency` threads POSTing the create call straight to the simulator
// (libcurl, one kept-alive connection per thread).
LoadResult RunDirectHttpLoad(const std::string& base_url,
                             const std::string& key, int concurrency,
                             absl::Duration duration);

}  // namespace videogen::bench
