#pragma once

// The retry schedule of webhook deliveries (--webhook_retry_schedule).

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace videogen::webhooks {

// Standard Webhooks: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and
// 10 h later (8 attempts over about 28 hours).
inline constexpr char kDefaultRetrySchedule[] = "5s,5m,30m,2h,5h,10h,10h";

// "5s,5m,30m" -> {5s, 5m, 30m}: the delays before the 2nd, 3rd, ... attempt
// (the first is immediate), so a delivery gets size() + 1 attempts. Entries
// are absl durations >= 0, comma-separated, spaces allowed; an empty text
// means no retries. INVALID_ARGUMENT naming the bad entry otherwise.
absl::StatusOr<std::vector<absl::Duration>> ParseRetrySchedule(
    absl::string_view text);

// `delay` spread uniformly over [delay * (1 - jitter), delay * (1 + jitter)]
// so that receivers recovering from an outage are not hit by every retry in
// the same second. `jitter` is clamped to [0, 1].
absl::Duration Jittered(absl::Duration delay, double jitter,
                        std::mt19937_64& rng);

}  // namespace videogen::webhooks
