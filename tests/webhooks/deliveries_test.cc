// Which outbox entries a change produces (server/webhooks/deliveries.h).
#include "server/webhooks/deliveries.h"

#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace videogen::webhooks {
namespace {

v1::GenerationEvent Event(v1::Generation::State state, const std::string& url) {
  v1::GenerationEvent e;
  e.set_type(v1::GenerationEvent::TYPE_UPDATE);
  v1::Generation* g = e.mutable_generation();
  g->set_id("gen-abc");
  g->set_state(state);
  g->set_revision(4);
  g->set_tenant("acme");
  g->mutable_request()->set_prompt("a fox");
  g->mutable_request()->set_webhook_url(url);
  e.mutable_observe_time()->set_seconds(1767225600);
  e.mutable_observe_time()->set_nanos(500000000);
  return e;
}

TEST(DeliveriesForTest, TerminalStateMakesOneDelivery) {
  const v1::GenerationEvent e =
      Event(v1::Generation::STATE_COMPLETED, "https://8.8.8.8/hook");
  std::vector<store::Delivery> out = DeliveriesFor(e.generation(), e);
  ASSERT_EQ(out.size(), 1u);
  const store::Delivery& d = out[0];
  EXPECT_EQ(d.generation_id, "gen-abc");
  EXPECT_EQ(d.revision, 4);
  EXPECT_EQ(d.tenant, "acme");
  EXPECT_EQ(d.url, "https://8.8.8.8/hook");
  EXPECT_EQ(d.attempts, 0);
  EXPECT_EQ(d.created,
            absl::FromUnixSeconds(1767225600) + absl::Milliseconds(500));
  EXPECT_EQ(d.next_attempt, d.created);
  // The body is the event itself, as proto3 JSON.
  v1::GenerationEvent parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(d.body, &parsed).ok())
      << d.body;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, e));
  EXPECT_NE(d.body.find("\"STATE_COMPLETED\""), std::string::npos) << d.body;
  EXPECT_NE(d.body.find("\"webhookUrl\""), std::string::npos) << d.body;
}

TEST(DeliveriesForTest, EmptyStatesMeansTerminalStatesOnly) {
  for (auto state :
       {v1::Generation::STATE_COMPLETED, v1::Generation::STATE_FAILED,
        v1::Generation::STATE_CANCELLED}) {
    const v1::GenerationEvent e = Event(state, "https://8.8.8.8/");
    EXPECT_EQ(DeliveriesFor(e.generation(), e).size(), 1u) << state;
  }
  for (auto state :
       {v1::Generation::STATE_QUEUED, v1::Generation::STATE_GENERATING}) {
    const v1::GenerationEvent e = Event(state, "https://8.8.8.8/");
    EXPECT_TRUE(DeliveriesFor(e.generation(), e).empty()) << state;
  }
}

TEST(DeliveriesForTest, ExplicitStatesReplaceTheDefault) {
  v1::GenerationEvent e =
      Event(v1::Generation::STATE_GENERATING, "https://8.8.8.8/");
  auto* states = e.mutable_generation()->mutable_request();
  states->add_webhook_states(v1::Generation::STATE_GENERATING);
  states->add_webhook_states(v1::Generation::STATE_GENERATING);  // duplicate
  EXPECT_EQ(DeliveriesFor(e.generation(), e).size(), 1u);
  e.mutable_generation()->set_state(v1::Generation::STATE_COMPLETED);
  EXPECT_TRUE(DeliveriesFor(e.generation(), e).empty());
}

TEST(DeliveriesForTest, NoUrlNoDelivery) {
  const v1::GenerationEvent e = Event(v1::Generation::STATE_COMPLETED, "");
  EXPECT_TRUE(DeliveriesFor(e.generation(), e).empty());
}

TEST(DeliveriesForTest, HeartbeatsAreNeverDelivered) {
  v1::GenerationEvent e =
      Event(v1::Generation::STATE_COMPLETED, "https://8.8.8.8/");
  e.set_type(v1::GenerationEvent::TYPE_HEARTBEAT);
  EXPECT_TRUE(DeliveriesFor(e.generation(), e).empty());
}

TEST(DeliveriesForTest, UnsetObserveTimeMeansNow) {
  v1::GenerationEvent e =
      Event(v1::Generation::STATE_FAILED, "https://8.8.8.8/");
  e.clear_observe_time();
  const absl::Time before = absl::Now();
  std::vector<store::Delivery> out = DeliveriesFor(e.generation(), e);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_GE(out[0].created, before);
  EXPECT_LE(out[0].created, absl::Now());
}

}  // namespace
}  // namespace videogen::webhooks
