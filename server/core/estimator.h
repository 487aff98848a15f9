#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "server/store/store.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::core {

// Learns how long generations of one model and duration take, from recent
// completed ones (a bounded window per key, persisted through the store so a
// restart or another replica shares it), and estimates when a running
// generation completes, conditioned on how long it has already run
// (design.md §10). With too few samples the documented timing stands in
// (samples = 0). Thread-safe.
class Estimator {
 public:
  virtual ~Estimator() = default;
  // An estimate for `g` at `now` (g.create_time, g.request().model and
  // duration_seconds are used). Never earlier than `now`.
  virtual v1::GenerationEstimate Estimate(const v1::Generation& g,
                                          absl::Time now) = 0;
  // Records a completed generation (create_time -> `completed`).
  virtual void Observe(const v1::Generation& g, absl::Time completed) = 0;
};

struct EstimatorOptions {
  int window = 50;      // samples kept per (model, duration)
  int min_samples = 3;  // fewer: documented timing, samples = 0
};

std::unique_ptr<Estimator> NewEstimator(store::Store* store,
                                        EstimatorOptions options = {});

}  // namespace videogen::core
