#include "server/core/estimator.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/timestamp.pb.h"

namespace videogen::core {
namespace {

// How an estimate is computed (design.md §10).
//
// Samples: the newest `window` run times (create_time -> completed) of one
// (model, duration_seconds), newest first. Each sample weighs half as much
// as one a quarter window newer (exponential decay by rank), so when the
// upstream slows down the median follows after about window/4 new samples
// instead of window/2, while about 70% of the window still counts (for
// window = 50 the effective sample size is about 36).
//
// Conditioning on the time already run (`elapsed`):
//  - While elapsed is below the p90 of all samples: the weighted median and
//    90th percentile of the samples longer than `elapsed` (the empirical
//    distribution of run times, given that this one has lasted so long),
//    added to create_time. Every such sample exceeds `elapsed`, so the
//    estimate is always after `now`.
//  - Past that p90 the job is running long and the few samples left are
//    noise: expected = now + r and p90 = now + 2r, with r the typical tail,
//    max(p90 - median, median / 10, 1 s) of all samples, or the conditional
//    estimate above when that is later. The estimate keeps moving later
//    while the job runs (it never moves earlier as `elapsed` grows) and is
//    never in the past.
//
// With fewer than `min_samples` samples the documented timing (design.md §1)
// stands in, as if samples were spread evenly over its range: 5-6 min for a
// 5 s clip (median 5.5 min, p90 about 5.9), 11-14 min for a 10 s clip
// (median 12.5, p90 about 13.7), conditioned the same way; `samples` is 0.

constexpr char kDefaultModel[] = "klingai/v2-master-text-to-video";
constexpr int kDefaultDuration = 5;
// Points used to stand in for the documented timing range.
constexpr int kDefaultPoints = 21;
// How long to wait before asking a failing store again for one key.
constexpr absl::Duration kStoreRetry = absl::Seconds(30);

struct Weighted {
  absl::Duration value;
  double weight;
};

// The q-quantile of `points` (any order, weights > 0, not empty), with
// linear interpolation between weighted midpoints: with equal weights the
// median of an even count is the mean of the middle two.
absl::Duration Quantile(std::vector<Weighted> points, double q) {
  std::sort(
      points.begin(), points.end(),
      [](const Weighted& a, const Weighted& b) { return a.value < b.value; });
  double total = 0;
  for (const Weighted& p : points) total += p.weight;
  double target = q * total;
  double cumulative = 0;
  double prev_mid = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    double mid = cumulative + points[i].weight / 2;
    if (target <= mid) {
      if (i == 0) return points[0].value;
      double f = (target - prev_mid) / (mid - prev_mid);
      return points[i - 1].value + (points[i].value - points[i - 1].value) * f;
    }
    cumulative += points[i].weight;
    prev_mid = mid;
  }
  return points.back().value;
}

// The documented run-time range of a clip length (design.md §1).
std::pair<absl::Duration, absl::Duration> DocumentedRange(
    int duration_seconds) {
  if (duration_seconds <= 5) return {absl::Minutes(5), absl::Minutes(6)};
  // 10 s clips take 11-14 min; longer clips (not offered today) scale.
  double scale = duration_seconds / 10.0;
  return {absl::Minutes(11) * scale, absl::Minutes(14) * scale};
}

std::vector<Weighted> DocumentedPoints(int duration_seconds) {
  auto [lo, hi] = DocumentedRange(duration_seconds);
  std::vector<Weighted> points;
  points.reserve(kDefaultPoints);
  for (int i = 0; i < kDefaultPoints; ++i) {
    points.push_back({lo + (hi - lo) * i / (kDefaultPoints - 1), 1.0});
  }
  return points;
}

// `newest_first` run times weighted by recency (see the top comment).
std::vector<Weighted> WeightByRecency(
    const std::deque<absl::Duration>& newest_first, int window) {
  double half_life = std::max(1.0, window / 4.0);
  std::vector<Weighted> points;
  points.reserve(newest_first.size());
  for (size_t i = 0; i < newest_first.size(); ++i) {
    points.push_back({newest_first[i], std::exp2(-(i / half_life))});
  }
  return points;
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  ts.set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(ts.seconds())) /
                                    absl::Nanoseconds(1)));
  return ts;
}

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

struct Key {
  std::string model;
  int duration_seconds;
  bool operator==(const Key& o) const {
    return duration_seconds == o.duration_seconds && model == o.model;
  }
  template <typename H>
  friend H AbslHashValue(H h, const Key& k) {
    return H::combine(std::move(h), k.model, k.duration_seconds);
  }
};

Key KeyOf(const v1::Generation& g) {
  const v1::GenerateRequest& r = g.request();
  return {r.model().empty() ? kDefaultModel : r.model(),
          r.duration_seconds() > 0 ? r.duration_seconds() : kDefaultDuration};
}

// Thread-safety: every member is guarded by mu_; the store is called only
// with mu_ released, so a slow store never blocks estimates of keys that
// are already cached.
class WindowEstimator final : public Estimator {
 public:
  WindowEstimator(store::Store* store, EstimatorOptions options)
      : store_(store), options_(options) {
    options_.window = std::max(1, options_.window);
    options_.min_samples = std::max(1, options_.min_samples);
  }

  v1::GenerationEstimate Estimate(const v1::Generation& g,
                                  absl::Time now) override {
    Key key = KeyOf(g);
    std::deque<absl::Duration> samples = Samples(key, now);
    absl::Time start = g.has_create_time() ? FromProto(g.create_time()) : now;
    start = std::min(start, now);

    v1::GenerationEstimate out;
    std::vector<Weighted> points;
    if (static_cast<int>(samples.size()) >= options_.min_samples) {
      points = WeightByRecency(samples, options_.window);
      out.set_samples(static_cast<int32_t>(samples.size()));
    } else {
      points = DocumentedPoints(key.duration_seconds);
    }
    auto [expected, p90] = Conditioned(std::move(points), start, now);
    *out.mutable_expected_complete_time() = ToProto(expected);
    *out.mutable_p90_complete_time() = ToProto(p90);
    return out;
  }

  void Observe(const v1::Generation& g, absl::Time completed) override {
    if (!g.has_create_time()) return;
    absl::Duration took = completed - FromProto(g.create_time());
    if (took <= absl::ZeroDuration()) return;  // clock skew between replicas
    Key key = KeyOf(g);
    // A failed write only loses durability: this process still learns.
    store_->AddSample({key.model, key.duration_seconds, took, completed})
        .IgnoreError();
    absl::MutexLock lock(&mu_);
    Entry& e = entries_[key];
    if (e.loaded) {
      Push(e, took);
    } else {
      // A load may be in flight and may or may not see this sample; it
      // merges these when it lands.
      e.pending.push_back(took);
      if (static_cast<int>(e.pending.size()) > options_.window) {
        e.pending.erase(e.pending.begin());  // a store that stays down
      }
    }
  }

 private:
  struct Entry {
    bool loaded = false;
    std::deque<absl::Duration> newest_first;  // at most options_.window
    std::vector<absl::Duration> pending;      // observed before the load
    absl::Time retry_after = absl::InfinitePast();
  };

  void Push(Entry& e, absl::Duration took) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    e.newest_first.push_front(took);
    while (static_cast<int>(e.newest_first.size()) > options_.window) {
      e.newest_first.pop_back();
    }
  }

  // The window of an entry: loaded, or (while the store fails) what this
  // process observed itself, newest first.
  static std::deque<absl::Duration> Known(const Entry& e) {
    if (e.loaded) return e.newest_first;
    return std::deque<absl::Duration>(e.pending.rbegin(), e.pending.rend());
  }

  // The cached window of `key`, loaded from the store on first use.
  std::deque<absl::Duration> Samples(const Key& key, absl::Time now) {
    {
      absl::MutexLock lock(&mu_);
      auto it = entries_.find(key);
      if (it != entries_.end() &&
          (it->second.loaded || now < it->second.retry_after)) {
        return Known(it->second);
      }
    }
    auto loaded =
        store_->RecentSamples(key.model, key.duration_seconds, options_.window);
    absl::MutexLock lock(&mu_);
    Entry& e = entries_[key];
    if (e.loaded) return e.newest_first;  // another thread won the race
    if (!loaded.ok()) {
      // Estimate from what this process saw; ask the store again later.
      e.retry_after = now + kStoreRetry;
      return Known(e);
    }
    std::vector<absl::Duration> pending = std::move(e.pending);
    e.pending.clear();
    e.loaded = true;
    e.newest_first.clear();
    for (const store::DurationSample& s : *loaded) {
      e.newest_first.push_back(s.took);
    }
    // Samples observed while loading that the store did not return yet.
    // Run times, not identities, are matched (each loaded one at most
    // once): equal run times are interchangeable for the estimate.
    std::vector<bool> matched(e.newest_first.size(), false);
    std::vector<absl::Duration> missing;
    for (absl::Duration took : pending) {
      bool found = false;
      for (size_t i = 0; i < matched.size() && !found; ++i) {
        if (!matched[i] && e.newest_first[i] == took) {
          matched[i] = found = true;
        }
      }
      if (!found) missing.push_back(took);
    }
    for (absl::Duration took : missing) e.newest_first.push_front(took);
    while (static_cast<int>(e.newest_first.size()) > options_.window) {
      e.newest_first.pop_back();
    }
    return e.newest_first;
  }

  // (expected, p90) completion times for a job started at `start`, given
  // the run-time distribution `points` (see the top comment).
  static std::pair<absl::Time, absl::Time> Conditioned(
      std::vector<Weighted> points, absl::Time start, absl::Time now) {
    absl::Duration elapsed = now - start;
    std::vector<Weighted> longer;
    for (const Weighted& p : points) {
      if (p.value > elapsed) longer.push_back(p);
    }
    absl::Duration median = Quantile(points, 0.5);
    absl::Duration p90 = Quantile(points, 0.9);
    if (elapsed < p90) {
      // Not empty: p90 <= the longest sample, and elapsed < p90.
      return {start + Quantile(longer, 0.5), start + Quantile(longer, 0.9)};
    }
    absl::Duration tail =
        std::max({p90 - median, median / 10, absl::Seconds(1)});
    absl::Time expected = now + tail;
    absl::Time late = now + 2 * tail;
    if (!longer.empty()) {
      // Never sooner than the conditional estimate a moment ago would have
      // said: both rules grow with `elapsed`, so their maximum does too.
      expected = std::max(expected, start + Quantile(longer, 0.5));
      late = std::max({late, expected, start + Quantile(longer, 0.9)});
    }
    return {expected, late};
  }

  store::Store* const store_;
  EstimatorOptions options_;
  absl::Mutex mu_;
  absl::flat_hash_map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<Estimator> NewEstimator(store::Store* store,
                                        EstimatorOptions options) {
  return std::make_unique<WindowEstimator>(store, options);
}

}  // namespace videogen::core
