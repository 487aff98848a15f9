// The order the upstream client's rate limiter admits waiting calls in
// (server/upstream/admission_queue.h): tenants in turn, each one's reads
// before its submits.
// Pure data structure, so every order here is exact.
#include "server/upstream/admission_queue.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::upstream {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr AdmissionClass kRead = AdmissionClass::kRead;
constexpr AdmissionClass kSubmit = AdmissionClass::kSubmit;

std::vector<std::string> Drain(AdmissionQueue<std::string>& q) {
  std::vector<std::string> out;
  while (!q.empty()) out.push_back(q.Pop());
  return out;
}

TEST(AdmissionQueue, OneLaneIsFifo) {
  AdmissionQueue<std::string> q;
  EXPECT_TRUE(q.empty());
  q.Push(kRead, "a", "p1");
  q.Push(kRead, "a", "p2");
  q.Push(kRead, "a", "p3");
  EXPECT_EQ(q.size(), 3u);
  EXPECT_THAT(Drain(q), ElementsAre("p1", "p2", "p3"));
  EXPECT_EQ(q.size(), 0u);
}

TEST(AdmissionQueue, ALanesReadsGoBeforeItsSubmitsQueuedEarlier) {
  AdmissionQueue<std::string> q;
  for (int i = 0; i < 5; ++i) q.Push(kSubmit, "", absl::StrCat("s", i));
  q.Push(kRead, "", "p0");
  q.Push(kRead, "", "p1");
  // One tenant (--auth=none): every poll before every waiting create.
  EXPECT_THAT(Drain(q), ElementsAre("p0", "p1", "s0", "s1", "s2", "s3", "s4"));
}

TEST(AdmissionQueue, AReadArrivingBetweenSubmitsJumpsTheQueue) {
  AdmissionQueue<std::string> q;
  q.Push(kSubmit, "a", "s1");
  q.Push(kSubmit, "a", "s2");
  EXPECT_EQ(q.Pop(), "s1");
  q.Push(kRead, "a", "p1");
  EXPECT_EQ(q.Pop(), "p1");
  EXPECT_EQ(q.Pop(), "s2");
  EXPECT_TRUE(q.empty());
}

TEST(AdmissionQueue, TenantsTakeTurnsAtPolls) {
  // A tenant with 100 polls waiting delays another tenant's poll by one
  // turn at most.
  AdmissionQueue<std::string> q;
  for (int i = 0; i < 100; ++i) q.Push(kRead, "busy", absl::StrCat("b", i));
  q.Push(kRead, "quiet", "q0");
  std::vector<std::string> order = Drain(q);
  ASSERT_EQ(order.size(), 101u);
  const auto pos = std::find(order.begin(), order.end(), "q0") - order.begin();
  EXPECT_LE(pos, 1);
  // The busy tenant's own polls stay in order.
  order.erase(order.begin() + pos);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], absl::StrCat("b", i));
}

TEST(AdmissionQueue, TenantsTakeTurnsAtSubmitsRoundRobin) {
  AdmissionQueue<std::string> q;
  q.Push(kSubmit, "a", "a1");
  q.Push(kSubmit, "a", "a2");
  q.Push(kSubmit, "a", "a3");
  q.Push(kSubmit, "b", "b1");
  q.Push(kSubmit, "c", "c1");
  q.Push(kSubmit, "c", "c2");
  EXPECT_THAT(Drain(q), ElementsAre("a1", "b1", "c1", "a2", "c2", "a3"));
}

TEST(AdmissionQueue, AFloodOfOneTenantsPollsDoesNotStarveAnothersCreate) {
  // The flooding tenant's accepted jobs keep its reads queue full; its own
  // creates wait for them, another tenant's create takes its turn.
  AdmissionQueue<std::string> q;
  for (int i = 0; i < 3; ++i) q.Push(kSubmit, "flood", absl::StrCat("fs", i));
  for (int i = 0; i < 50; ++i) q.Push(kRead, "flood", absl::StrCat("fp", i));
  q.Push(kSubmit, "quiet", "qs");
  q.Push(kRead, "quiet", "qp");
  std::vector<std::string> order = Drain(q);
  ASSERT_EQ(order.size(), 55u);
  EXPECT_THAT(std::vector<std::string>(order.begin(), order.begin() + 4),
              ElementsAre("fp0", "qp", "fp1", "qs"));
  EXPECT_THAT(std::vector<std::string>(order.end() - 3, order.end()),
              ElementsAre("fs0", "fs1", "fs2"));
}

TEST(AdmissionQueue, TheTurnContinuesAfterTheLaneServedLast) {
  // A lane that empties and comes back does not get to go first again.
  AdmissionQueue<std::string> q;
  q.Push(kRead, "a", "a1");
  q.Push(kRead, "b", "b1");
  EXPECT_EQ(q.Pop(), "a1");
  q.Push(kRead, "a", "a2");
  EXPECT_EQ(q.Pop(), "b1");
  EXPECT_EQ(q.Pop(), "a2");
  // Reads and submits share the lane's turn.
  q.Push(kSubmit, "a", "sa");
  q.Push(kSubmit, "b", "sb");
  EXPECT_EQ(q.Pop(), "sb");
  q.Push(kRead, "b", "pb");
  EXPECT_EQ(q.Pop(), "sa");
  EXPECT_EQ(q.Pop(), "pb");
  EXPECT_TRUE(q.empty());
}

TEST(AdmissionQueue, TheUnauthenticatedLaneTakesItsTurnToo) {
  // --auth=none files everything under tenant "".
  AdmissionQueue<std::string> q;
  q.Push(kRead, "", "n1");
  q.Push(kRead, "", "n2");
  q.Push(kRead, "#usage-log", "log");
  std::vector<std::string> order = Drain(q);
  EXPECT_THAT(order, UnorderedElementsAre("n1", "n2", "log"));
  EXPECT_NE(order.back(), "log") << "the other lane waited for all of ''";
}

TEST(AdmissionQueue, MoveOnlyItemsAndTakeAll) {
  AdmissionQueue<std::unique_ptr<int>> q;
  q.Push(kSubmit, "a", std::make_unique<int>(1));
  q.Push(kRead, "b", std::make_unique<int>(2));
  q.Push(kRead, "a", std::make_unique<int>(3));
  std::vector<std::unique_ptr<int>> all = q.TakeAll();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  std::vector<int> values;
  for (const auto& p : all) values.push_back(*p);
  EXPECT_THAT(values, UnorderedElementsAre(1, 2, 3));
  EXPECT_THAT(q.TakeAll(), IsEmpty());
  q.Push(kRead, "a", std::make_unique<int>(4));
  EXPECT_EQ(*q.Pop(), 4);
}

}  // namespace
}  // namespace videogen::upstream
