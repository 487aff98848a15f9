#include "server/core/estimator.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/core/clock.h"
#include "server/core/estimate_text.h"
#include "server/store/store.h"

namespace videogen::core {
namespace {

constexpr char kModel[] = "klingai/v2-master-text-to-video";

// A store that keeps only the estimator's samples (everything else is
// UNIMPLEMENTED), so these tests do not depend on a full store. Records the
// `limit` it was asked for and can fail reads. Thread-safe.
class SampleStore final : public store::Store {
 public:
  absl::Status AddSample(const store::DurationSample& s) override {
    absl::MutexLock lock(&mu_);
    if (!fail_.ok()) return fail_;
    samples_[{s.model, s.duration_seconds}].push_back(s);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<store::DurationSample>> RecentSamples(
      std::string_view model, int duration_seconds, int limit) override {
    absl::MutexLock lock(&mu_);
    ++reads_;
    last_limit_ = limit;
    if (!fail_.ok()) return fail_;
    std::vector<store::DurationSample> out;
    auto it = samples_.find({std::string(model), duration_seconds});
    if (it == samples_.end()) return out;
    const auto& all = it->second;
    for (auto s = all.rbegin(); s != all.rend() && limit > 0; ++s, --limit) {
      out.push_back(*s);
    }
    return out;
  }
  void Fail(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_ = std::move(status);
  }
  int reads() const {
    absl::MutexLock lock(&mu_);
    return reads_;
  }
  int last_limit() const {
    absl::MutexLock lock(&mu_);
    return last_limit_;
  }
  size_t stored(const std::string& model, int duration) const {
    absl::MutexLock lock(&mu_);
    auto it = samples_.find({model, duration});
    return it == samples_.end() ? 0 : it->second.size();
  }

  // ---- Not used by the estimator ----
  absl::Status Insert(const store::Record&, const store::Admission&,
                      std::optional<store::Record>*) override {
    return Unused();
  }
  absl::Status Update(const store::Record&,
                      const std::vector<store::Delivery>&) override {
    return Unused();
  }
  absl::Status Delete(std::string_view, int64_t) override { return Unused(); }
  absl::StatusOr<std::optional<store::Record>> Get(std::string_view) override {
    return Unused();
  }
  absl::StatusOr<std::optional<store::Record>> GetByRequestId(
      std::string_view, std::string_view) override {
    return Unused();
  }
  absl::StatusOr<std::vector<store::Record>> ClaimActive(std::string_view,
                                                         absl::Time, absl::Time,
                                                         int) override {
    return Unused();
  }
  absl::StatusOr<std::vector<std::string>> RenewLeases(std::string_view,
                                                       absl::Time,
                                                       absl::Time) override {
    return Unused();
  }
  absl::StatusOr<store::ListPage> List(const store::ListQuery&) override {
    return Unused();
  }
  absl::StatusOr<std::vector<std::string>> PurgeTerminalBefore(
      absl::Time) override {
    return Unused();
  }
  absl::Status SetWebhookStatus(std::string_view,
                                const v1::WebhookStatus&) override {
    return Unused();
  }
  store::ChangeFeed* feed() override { return nullptr; }
  absl::Status InsertKey(const store::ApiKey&) override { return Unused(); }
  absl::StatusOr<std::optional<store::ApiKey>> FindKeyByHash(
      std::string_view) override {
    return Unused();
  }
  absl::StatusOr<std::vector<store::ApiKey>> ListKeys() override {
    return Unused();
  }
  absl::Status RevokeKey(std::string_view, absl::Time) override {
    return Unused();
  }
  absl::StatusOr<std::vector<store::Delivery>> ClaimDeliveries(std::string_view,
                                                               absl::Time,
                                                               absl::Time,
                                                               int) override {
    return Unused();
  }
  absl::Status FinishDelivery(int64_t) override { return Unused(); }
  absl::Status RetryDelivery(int64_t, int, absl::Time) override {
    return Unused();
  }
  absl::Status DropDeliveries(std::string_view) override { return Unused(); }
  absl::StatusOr<std::pair<int64_t, absl::Time>> OutboxStats() override {
    return Unused();
  }

 private:
  static absl::Status Unused() {
    return absl::UnimplementedError("not used by the estimator");
  }

  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, int>, std::vector<store::DurationSample>>
      samples_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_ ABSL_GUARDED_BY(mu_);
  int reads_ ABSL_GUARDED_BY(mu_) = 0;
  int last_limit_ ABSL_GUARDED_BY(mu_) = 0;
};

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  ts.set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(ts.seconds())) /
                                    absl::Nanoseconds(1)));
  return ts;
}

absl::Time At(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

v1::Generation Gen(absl::Time created, int duration = 5,
                   const std::string& model = kModel) {
  v1::Generation g;
  g.mutable_request()->set_model(model);
  g.mutable_request()->set_duration_seconds(duration);
  *g.mutable_create_time() = Ts(created);
  return g;
}

class EstimatorTest : public ::testing::Test {
 protected:
  // Records one generation created now that completes after `took`, moving
  // the clock to its completion.
  void Complete(Estimator& e, absl::Duration took, int duration = 5,
                const std::string& model = kModel) {
    v1::Generation g = Gen(clock_.Now(), duration, model);
    clock_.Advance(took);
    e.Observe(g, clock_.Now());
  }
  // Expected and p90 completion, as offsets from the generation's creation.
  std::pair<absl::Duration, absl::Duration> Offsets(
      const v1::GenerationEstimate& est, absl::Time created) {
    return {At(est.expected_complete_time()) - created,
            At(est.p90_complete_time()) - created};
  }

  FakeClock clock_;
  SampleStore store_;
};

TEST_F(EstimatorTest, ColdStartUsesDocumentedTiming) {
  auto e = NewEstimator(&store_);
  absl::Time t0 = clock_.Now();

  v1::GenerationEstimate five = e->Estimate(Gen(t0, 5), t0);
  EXPECT_EQ(five.samples(), 0);
  auto [exp5, p90_5] = Offsets(five, t0);
  EXPECT_EQ(exp5, absl::Seconds(330));  // 5-6 min: median 5.5 min
  EXPECT_GT(p90_5, exp5);
  EXPECT_LE(p90_5, absl::Minutes(6));

  v1::GenerationEstimate ten = e->Estimate(Gen(t0, 10), t0);
  EXPECT_EQ(ten.samples(), 0);
  auto [exp10, p90_10] = Offsets(ten, t0);
  EXPECT_EQ(exp10, absl::Seconds(750));  // 11-14 min: median 12.5 min
  EXPECT_GT(p90_10, exp10);
  EXPECT_LE(p90_10, absl::Minutes(14));
}

TEST_F(EstimatorTest, ColdStartIsConditionedOnElapsed) {
  auto e = NewEstimator(&store_);
  absl::Time t0 = clock_.Now();
  absl::Time now = t0 + absl::Seconds(340);  // past the documented median
  v1::GenerationEstimate est = e->Estimate(Gen(t0, 5), now);
  EXPECT_EQ(est.samples(), 0);
  EXPECT_GT(At(est.expected_complete_time()), now);
  EXPECT_GT(At(est.expected_complete_time()), t0 + absl::Seconds(330));
  EXPECT_LE(At(est.expected_complete_time()), t0 + absl::Minutes(6));
  EXPECT_GE(At(est.p90_complete_time()), At(est.expected_complete_time()));
}

TEST_F(EstimatorTest, FewerThanMinSamplesStillDocumented) {
  auto e = NewEstimator(&store_, {.window = 50, .min_samples = 3});
  Complete(*e, absl::Seconds(100));
  Complete(*e, absl::Seconds(100));
  absl::Time now = clock_.Now();
  v1::GenerationEstimate est = e->Estimate(Gen(now), now);
  EXPECT_EQ(est.samples(), 0);
  EXPECT_EQ(Offsets(est, now).first, absl::Seconds(330));

  Complete(*e, absl::Seconds(100));
  now = clock_.Now();
  est = e->Estimate(Gen(now), now);
  EXPECT_EQ(est.samples(), 3);
  EXPECT_EQ(Offsets(est, now),
            std::make_pair(absl::Seconds(100), absl::Seconds(100)));
}

TEST_F(EstimatorTest, LearnsTheMedianPerModelAndDuration) {
  auto e = NewEstimator(&store_);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> secs(360, 440);
  for (int i = 0; i < 40; ++i) Complete(*e, absl::Seconds(secs(rng)));
  for (int i = 0; i < 5; ++i) Complete(*e, absl::Seconds(900), 10);
  for (int i = 0; i < 5; ++i) {
    Complete(*e, absl::Seconds(60), 5, "klingai/v1.6-standard/text-to-video");
  }

  absl::Time now = clock_.Now();
  v1::GenerationEstimate est = e->Estimate(Gen(now, 5), now);
  EXPECT_EQ(est.samples(), 40);
  auto [expected, p90] = Offsets(est, now);
  EXPECT_GE(expected, absl::Seconds(385));
  EXPECT_LE(expected, absl::Seconds(415));
  EXPECT_GT(p90, expected);
  EXPECT_LE(p90, absl::Seconds(440));

  v1::GenerationEstimate ten = e->Estimate(Gen(now, 10), now);
  EXPECT_EQ(ten.samples(), 5);
  EXPECT_EQ(Offsets(ten, now).first, absl::Seconds(900));

  v1::GenerationEstimate other =
      e->Estimate(Gen(now, 5, "klingai/v1.6-standard/text-to-video"), now);
  EXPECT_EQ(other.samples(), 5);
  EXPECT_EQ(Offsets(other, now).first, absl::Seconds(60));

  EXPECT_EQ(store_.stored(kModel, 5), 40u);
  EXPECT_EQ(store_.stored(kModel, 10), 5u);
}

TEST_F(EstimatorTest, ConditionsOnElapsedTime) {
  auto e = NewEstimator(&store_);
  // 300, 310, ..., 400 s.
  for (int s = 300; s <= 400; s += 10) Complete(*e, absl::Seconds(s));
  absl::Time t0 = clock_.Now();
  auto [fresh, fresh_p90] = Offsets(e->Estimate(Gen(t0), t0), t0);

  absl::Time now = t0 + absl::Seconds(355);
  v1::GenerationEstimate est = e->Estimate(Gen(t0), now);
  auto [expected, p90] = Offsets(est, t0);
  // Only the runs longer than 355 s are left: 360..400.
  EXPECT_GT(expected, absl::Seconds(360));
  EXPECT_LT(expected, absl::Seconds(400));
  EXPECT_GT(expected, fresh);
  EXPECT_GE(p90, expected);
  EXPECT_LE(p90, absl::Seconds(400));
}

TEST_F(EstimatorTest, FollowsAnUpstreamSlowdownWithinTheWindow) {
  const int window = 40;
  auto e = NewEstimator(&store_, {.window = window, .min_samples = 3});
  for (int i = 0; i < window; ++i) Complete(*e, absl::Seconds(300));
  absl::Time now = clock_.Now();
  EXPECT_EQ(Offsets(e->Estimate(Gen(now), now), now).first, absl::Seconds(300));

  // The upstream doubles its run time. Within half a window the median is
  // the new run time even though most of the window is still old.
  int followed_after = 0;
  for (int i = 1; i <= window / 2; ++i) {
    Complete(*e, absl::Seconds(600));
    now = clock_.Now();
    if (Offsets(e->Estimate(Gen(now), now), now).first >= absl::Seconds(590)) {
      followed_after = i;
      break;
    }
  }
  EXPECT_GT(followed_after, 1);  // one slow run is not a trend
  EXPECT_LT(followed_after, window / 2);
}

TEST_F(EstimatorTest, JobPastItsP90MovesLaterAndNeverIntoThePast) {
  auto e = NewEstimator(&store_);
  for (int s = 300; s <= 400; s += 10) Complete(*e, absl::Seconds(s));
  absl::Time t0 = clock_.Now();
  v1::GenerationEstimate fresh = e->Estimate(Gen(t0), t0);

  absl::Time now = At(fresh.p90_complete_time()) + absl::Seconds(1);
  v1::GenerationEstimate late = e->Estimate(Gen(t0), now);
  EXPECT_GT(At(late.expected_complete_time()), now);
  EXPECT_GT(At(late.p90_complete_time()), At(late.expected_complete_time()));

  // Long past every sample: still ahead of now, and later than before.
  absl::Time much_later = t0 + absl::Minutes(30);
  v1::GenerationEstimate later = e->Estimate(Gen(t0), much_later);
  EXPECT_GT(At(later.expected_complete_time()), much_later);
  EXPECT_GT(At(later.expected_complete_time()),
            At(late.expected_complete_time()));
  EXPECT_EQ(later.samples(), 11);
}

TEST_F(EstimatorTest, NeverBeforeNowAtAnyElapsedTime) {
  auto cold = NewEstimator(&store_);
  SampleStore other;
  auto learned = NewEstimator(&other);
  std::mt19937 rng(3);
  std::exponential_distribution<double> tail(1.0 / 60);
  for (int i = 0; i < 30; ++i) {
    v1::Generation g = Gen(clock_.Now());
    absl::Duration took = absl::Seconds(240 + tail(rng));
    clock_.Advance(took);
    learned->Observe(g, clock_.Now());
  }
  // Mostly quick runs and two very slow ones: past the p90 the few slow
  // runs still left must not make the estimate jump back.
  SampleStore outliers;
  auto skewed = NewEstimator(&outliers);
  for (int i = 0; i < 20; ++i) {
    v1::Generation g = Gen(clock_.Now());
    clock_.Advance(absl::Seconds(i == 4 || i == 12 ? 1500 : 300 + i));
    skewed->Observe(g, clock_.Now());
  }
  absl::Time t0 = clock_.Now();
  for (auto* e : {cold.get(), learned.get(), skewed.get()}) {
    absl::Time previous = absl::InfinitePast();
    for (int s = 0; s <= 1800; s += 5) {
      absl::Time now = t0 + absl::Seconds(s);
      v1::GenerationEstimate est = e->Estimate(Gen(t0), now);
      absl::Time expected = At(est.expected_complete_time());
      ASSERT_GT(expected, now) << "elapsed " << s << " s";
      ASSERT_GE(At(est.p90_complete_time()), expected) << s;
      // A job that runs on is never expected to finish sooner than before.
      ASSERT_GE(expected, previous) << s;
      previous = expected;
    }
  }
}

TEST_F(EstimatorTest, WindowIsBounded) {
  auto e = NewEstimator(&store_, {.window = 5, .min_samples = 3});
  for (int i = 0; i < 5; ++i) Complete(*e, absl::Seconds(100));
  for (int i = 0; i < 5; ++i) Complete(*e, absl::Seconds(200));
  absl::Time now = clock_.Now();
  v1::GenerationEstimate est = e->Estimate(Gen(now), now);
  EXPECT_EQ(est.samples(), 5);
  // The five old runs fell out: nothing of them is left in the median.
  EXPECT_EQ(Offsets(est, now),
            std::make_pair(absl::Seconds(200), absl::Seconds(200)));

  // A fresh estimator asks the store for no more than the window either.
  auto reloaded = NewEstimator(&store_, {.window = 5, .min_samples = 3});
  EXPECT_EQ(reloaded->Estimate(Gen(now), now).samples(), 5);
  EXPECT_EQ(store_.last_limit(), 5);
}

TEST_F(EstimatorTest, SamplesPersistAcrossRestarts) {
  {
    auto first = NewEstimator(&store_);
    for (int i = 0; i < 4; ++i) Complete(*first, absl::Seconds(500));
  }
  auto second = NewEstimator(&store_);
  absl::Time now = clock_.Now();
  v1::GenerationEstimate est = second->Estimate(Gen(now), now);
  EXPECT_EQ(est.samples(), 4);
  EXPECT_EQ(Offsets(est, now).first, absl::Seconds(500));

  // Loaded once per key, then served from memory; new runs add to both.
  int reads = store_.reads();
  second->Estimate(Gen(now), now);
  EXPECT_EQ(store_.reads(), reads);
  Complete(*second, absl::Seconds(500));
  now = clock_.Now();
  EXPECT_EQ(second->Estimate(Gen(now), now).samples(), 5);
  EXPECT_EQ(store_.stored(kModel, 5), 5u);
}

TEST_F(EstimatorTest, StoreOutageFallsBackAndRetriesLater) {
  store_.Fail(absl::UnavailableError("disk gone"));
  auto e = NewEstimator(&store_);
  absl::Time now = clock_.Now();
  v1::GenerationEstimate est = e->Estimate(Gen(now), now);
  EXPECT_EQ(est.samples(), 0);
  EXPECT_EQ(Offsets(est, now).first, absl::Seconds(330));
  // Runs seen by this process still count while the store is down, both
  // before the next read attempt and after it fails again.
  for (int i = 0; i < 3; ++i) Complete(*e, absl::Seconds(5));
  now = clock_.Now();
  int reads = store_.reads();
  est = e->Estimate(Gen(now), now);
  EXPECT_EQ(store_.reads(), reads);  // not asked again within the pause
  EXPECT_EQ(est.samples(), 3);
  EXPECT_EQ(Offsets(est, now).first, absl::Seconds(5));
  clock_.Advance(absl::Minutes(1));
  now = clock_.Now();
  est = e->Estimate(Gen(now), now);
  EXPECT_GT(store_.reads(), reads);
  EXPECT_EQ(est.samples(), 3);

  // Back up: the store's samples (none were written meanwhile) plus this
  // process's own are used.
  store_.Fail(absl::OkStatus());
  clock_.Advance(absl::Minutes(1));
  Complete(*e, absl::Seconds(5));
  now = clock_.Now();
  est = e->Estimate(Gen(now), now);
  EXPECT_EQ(est.samples(), 4);
  EXPECT_EQ(store_.stored(kModel, 5), 1u);
}

TEST_F(EstimatorTest, ConcurrentObserveAndEstimate) {
  auto e = NewEstimator(&store_, {.window = 50, .min_samples = 3});
  std::vector<std::thread> threads;
  absl::Time t0 = clock_.Now();
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        v1::Generation g = Gen(t0);
        if (i % 2 == 0) {
          e->Observe(g, t0 + absl::Seconds(100 + t));
        } else {
          v1::GenerationEstimate est = e->Estimate(g, t0);
          ASSERT_GT(At(est.expected_complete_time()), t0);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(store_.stored(kModel, 5), 200u);
  EXPECT_EQ(e->Estimate(Gen(t0), t0).samples(), 50);
}

TEST(DescribeEstimateTest, Phrases) {
  absl::Time t0 = absl::FromUnixSeconds(1'700'000'000);
  v1::GenerationEstimate est;
  EXPECT_EQ(DescribeEstimate(est, t0), "");
  *est.mutable_expected_complete_time() = Ts(t0 + absl::Seconds(190));
  *est.mutable_p90_complete_time() = Ts(t0 + absl::Seconds(300));
  EXPECT_EQ(DescribeEstimate(est, t0), "about 3 min left");
  EXPECT_EQ(DescribeEstimate(est, t0 + absl::Seconds(100)), "about 2 min left");
  EXPECT_EQ(DescribeEstimate(est, t0 + absl::Seconds(150)),
            "less than a minute left");
  EXPECT_EQ(DescribeEstimate(est, t0 + absl::Seconds(200)), "any moment now");
  EXPECT_EQ(DescribeEstimate(est, t0 + absl::Seconds(300)), "running long");
  *est.mutable_expected_complete_time() = Ts(t0 + absl::Hours(3));
  *est.mutable_p90_complete_time() = Ts(t0 + absl::Hours(4));
  EXPECT_EQ(DescribeEstimate(est, t0), "about 3 h left");
}

}  // namespace
}  // namespace videogen::core
