#pragma once

#include <string>

#include "absl/time/time.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::core {

// A short human phrase for an estimate as of `now`, for the CLI's live
// line: "about 3 min left", "less than a minute left", "any moment now"
// (past the expected time, before the p90), "running long" (past the p90).
// Empty when `estimate` has no expected time. `now` may be later than when
// the server computed the estimate: the CLI counts down between events.
// Thread-compatible (a pure function).
std::string DescribeEstimate(const v1::GenerationEstimate& estimate,
                             absl::Time now);

}  // namespace videogen::core
