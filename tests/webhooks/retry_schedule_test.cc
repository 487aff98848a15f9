// --webhook_retry_schedule parsing and jitter.
#include "server/webhooks/retry_schedule.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::webhooks {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(RetryScheduleTest, DefaultIsTheStandardWebhooksSchedule) {
  absl::StatusOr<std::vector<absl::Duration>> s =
      ParseRetrySchedule(kDefaultRetrySchedule);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(*s, ElementsAre(absl::Seconds(5), absl::Minutes(5),
                              absl::Minutes(30), absl::Hours(2), absl::Hours(5),
                              absl::Hours(10), absl::Hours(10)));
}

TEST(RetryScheduleTest, AcceptsSpacesAndMixedUnits) {
  absl::StatusOr<std::vector<absl::Duration>> s =
      ParseRetrySchedule(" 250ms, 1.5s ,0s,1h30m ");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(*s, ElementsAre(absl::Milliseconds(250), absl::Seconds(1.5),
                              absl::ZeroDuration(),
                              absl::Hours(1) + absl::Minutes(30)));
}

TEST(RetryScheduleTest, EmptyMeansNoRetries) {
  absl::StatusOr<std::vector<absl::Duration>> s = ParseRetrySchedule("  ");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->empty());
}

TEST(RetryScheduleTest, RefusesBadEntriesByName) {
  for (const char* bad : {"5s,,5m", "5s,5x", "-5s", "5", "inf", "5s;5m"}) {
    absl::StatusOr<std::vector<absl::Duration>> s = ParseRetrySchedule(bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("--webhook_retry_schedule"));
  }
  EXPECT_THAT(ParseRetrySchedule("5s,5x").status().message(),
              HasSubstr("\"5x\""));
}

TEST(RetryScheduleTest, RefusesAbsurdlyLongLists) {
  std::string text = "1s";
  for (int i = 0; i < 100; ++i) text += ",1s";
  EXPECT_FALSE(ParseRetrySchedule(text).ok());
}

TEST(JitterTest, StaysWithinTheBandAndSpreads) {
  std::mt19937_64 rng(42);
  std::set<int64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    const absl::Duration d = Jittered(absl::Seconds(10), 0.2, rng);
    ASSERT_GE(d, absl::Seconds(8));
    ASSERT_LE(d, absl::Seconds(12));
    seen.insert(absl::ToInt64Milliseconds(d));
  }
  EXPECT_GT(seen.size(), 100u);
}

TEST(JitterTest, ZeroJitterAndZeroDelayAreExact) {
  std::mt19937_64 rng(1);
  EXPECT_EQ(Jittered(absl::Minutes(5), 0, rng), absl::Minutes(5));
  EXPECT_EQ(Jittered(absl::ZeroDuration(), 0.5, rng), absl::ZeroDuration());
  // Out-of-range jitter is clamped: never a negative delay.
  for (int i = 0; i < 100; ++i) {
    EXPECT_GE(Jittered(absl::Seconds(1), 7.0, rng), absl::ZeroDuration());
  }
}

}  // namespace
}  // namespace videogen::webhooks
