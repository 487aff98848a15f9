#include "server/webhooks/retry_schedule.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace videogen::webhooks {
namespace {

// More would be a typo, not a policy; it also bounds the attempts column.
constexpr size_t kMaxEntries = 100;

}  // namespace

absl::StatusOr<std::vector<absl::Duration>> ParseRetrySchedule(
    absl::string_view text) {
  std::vector<absl::Duration> out;
  if (absl::StripAsciiWhitespace(text).empty()) return out;
  for (absl::string_view entry : absl::StrSplit(text, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    absl::Duration delay;
    if (!absl::ParseDuration(entry, &delay) || delay < absl::ZeroDuration() ||
        delay == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--webhook_retry_schedule: \"", entry,
                       "\" is not a duration like 5s, 30m or 10h (the list is "
                       "comma-separated, e.g. \"",
                       kDefaultRetrySchedule, "\")"));
    }
    out.push_back(delay);
  }
  if (out.size() > kMaxEntries) {
    return absl::InvalidArgumentError(
        absl::StrCat("--webhook_retry_schedule has ", out.size(),
                     " entries; at most ", kMaxEntries, " are allowed"));
  }
  return out;
}

absl::Duration Jittered(absl::Duration delay, double jitter,
                        std::mt19937_64& rng) {
  jitter = std::clamp(jitter, 0.0, 1.0);
  if (jitter == 0 || delay <= absl::ZeroDuration()) return delay;
  std::uniform_real_distribution<double> factor(1 - jitter, 1 + jitter);
  return delay * factor(rng);
}

}  // namespace videogen::webhooks
