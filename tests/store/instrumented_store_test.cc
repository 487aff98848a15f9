// InstrumentedStore (server/api/instrumented_store.h): it forwards every
// method (the conformance suite runs through it) and times the writes.
#include "server/api/instrumented_store.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/api/metrics.h"
#include "server/store/memory_store.h"
#include "tests/store/store_conformance.h"

namespace videogen::api {
namespace {

std::unique_ptr<store::Store> MakeInstrumentedMemoryStore() {
  return std::make_unique<InstrumentedStore>(
      std::make_unique<store::MemoryStore>());
}

}  // namespace

VIDEOGEN_INSTANTIATE_STORE_CONFORMANCE(Instrumented,
                                       MakeInstrumentedMemoryStore);

namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(InstrumentedStore, TimesWritesByOperation) {
  DescribeVideogenMetrics(Metrics::Global());
  InstrumentedStore s(std::make_unique<store::MemoryStore>());
  store::Record r;
  r.generation.set_id("g1");
  r.generation.set_revision(1);
  ASSERT_TRUE(s.Insert(r, store::Admission{}, nullptr).ok());
  r.version = 5;  // stored is 1: a failed write is timed too
  EXPECT_EQ(s.Update(r, {}).code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(s.Get("g1").ok());
  const std::string text = Metrics::Global().Render();
  EXPECT_THAT(text, HasSubstr("videogen_store_write_duration_seconds_count{op="
                              "\"insert\"} 1"));
  EXPECT_THAT(text, HasSubstr("videogen_store_write_duration_seconds_count{op="
                              "\"update\"} 1"));
  EXPECT_THAT(text, Not(HasSubstr("op=\"get\"")));
}

}  // namespace
}  // namespace videogen::api
