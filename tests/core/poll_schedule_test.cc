#include "server/core/poll_schedule.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::core {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

TEST(PollScheduleTest, PopsDueInTimeOrder) {
  PollSchedule s;
  EXPECT_EQ(s.NextDue(), absl::InfiniteFuture());
  s.Schedule("c", kT0 + absl::Seconds(3));
  s.Schedule("a", kT0 + absl::Seconds(1));
  s.Schedule("b", kT0 + absl::Seconds(2));
  EXPECT_EQ(s.NextDue(), kT0 + absl::Seconds(1));
  EXPECT_THAT(s.PopDue(kT0), IsEmpty());
  EXPECT_THAT(s.PopDue(kT0 + absl::Seconds(2)), ElementsAre("a", "b"));
  EXPECT_EQ(s.size(), 1u);
  EXPECT_THAT(s.PopDue(kT0 + absl::Hours(1)), ElementsAre("c"));
  EXPECT_EQ(s.NextDue(), absl::InfiniteFuture());
}

TEST(PollScheduleTest, RescheduleKeepsOneEntryPerId) {
  PollSchedule s;
  s.Schedule("a", kT0 + absl::Seconds(1));
  s.Schedule("a", kT0 + absl::Seconds(10));
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(s.NextDue(), kT0 + absl::Seconds(10));
  EXPECT_THAT(s.PopDue(kT0 + absl::Seconds(5)), IsEmpty());
  s.Schedule("a", kT0 + absl::Seconds(2));
  EXPECT_THAT(s.PopDue(kT0 + absl::Hours(1)), ElementsAre("a"));
}

TEST(PollScheduleTest, RemoveIsLazyButComplete) {
  PollSchedule s;
  s.Schedule("a", kT0);
  s.Schedule("b", kT0 + absl::Seconds(1));
  s.Remove("a");
  EXPECT_FALSE(s.Contains("a"));
  EXPECT_TRUE(s.Contains("b"));
  EXPECT_EQ(s.NextDue(), kT0 + absl::Seconds(1));
  EXPECT_THAT(s.PopDue(kT0 + absl::Hours(1)), ElementsAre("b"));
}

}  // namespace
}  // namespace videogen::core
