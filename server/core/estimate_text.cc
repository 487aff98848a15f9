#include "server/core/estimate_text.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace videogen::core {
namespace {

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

}  // namespace

std::string DescribeEstimate(const v1::GenerationEstimate& estimate,
                             absl::Time now) {
  if (!estimate.has_expected_complete_time()) return "";
  absl::Time expected = FromProto(estimate.expected_complete_time());
  // An estimate without a p90 is treated as having it at the expected time.
  absl::Time p90 =
      estimate.has_p90_complete_time()
          ? std::max(expected, FromProto(estimate.p90_complete_time()))
          : expected;
  if (now >= p90) return "running long";
  if (now >= expected) return "any moment now";
  absl::Duration left = expected - now;
  if (left < absl::Minutes(1)) return "less than a minute left";
  int64_t minutes = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(absl::ToDoubleMinutes(left))));
  if (minutes < 90) return absl::StrCat("about ", minutes, " min left");
  int64_t hours = static_cast<int64_t>(std::llround(minutes / 60.0));
  return absl::StrCat("about ", hours, " h left");
}

}  // namespace videogen::core
