#pragma once

// A store that implements only what the webhook Dispatcher uses: the outbox
// (with the leases and ordering store.h specifies), Get and
// SetWebhookStatus. Everything else answers UNIMPLEMENTED. It also records
// the RetryDelivery calls so tests can check the delays chosen, and can
// play another replica recording a 410 right after a claim.
// Thread-safe.

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/store/store.h"

namespace videogen::webhooks::test_support {

class FakeOutbox final : public store::Store {
 public:
  struct RetryCall {
    int64_t seq = 0;
    int attempts = 0;
    absl::Time next_attempt;
    absl::Time called;
  };

  // Adds a delivery due now; returns its seq.
  int64_t Enqueue(store::Delivery d) {
    absl::MutexLock lock(&mu_);
    d.seq = ++last_seq_;
    if (d.created == absl::InfinitePast()) d.created = absl::Now();
    if (d.next_attempt == absl::InfinitePast()) d.next_attempt = d.created;
    generations_[d.generation_id];  // Get finds it
    deliveries_[d.seq] = d;
    return d.seq;
  }

  std::vector<store::Delivery> Pending() {
    absl::MutexLock lock(&mu_);
    std::vector<store::Delivery> out;
    for (const auto& [seq, d] : deliveries_) out.push_back(d);
    return out;
  }

  std::optional<v1::WebhookStatus> Status(const std::string& generation_id) {
    absl::MutexLock lock(&mu_);
    auto it = generations_.find(generation_id);
    if (it == generations_.end() || !it->second.has_value()) {
      return std::nullopt;
    }
    return it->second;
  }

  std::vector<RetryCall> Retries() {
    absl::MutexLock lock(&mu_);
    return retries_;
  }

  // Once a delivery of `generation_id` has been claimed, DropDeliveries runs
  // for it, as when another replica's receiver answered 410 for an earlier
  // event of the generation between this replica's claim and its attempt.
  void DropAfterClaim(const std::string& generation_id) {
    absl::MutexLock lock(&mu_);
    drop_after_claim_.insert(generation_id);
  }

  // Ends every lease, as if their holder died long ago.
  void ExpireLeases() {
    absl::MutexLock lock(&mu_);
    for (auto& [seq, d] : deliveries_) d.lease_until = absl::InfinitePast();
  }

  // Waits until `done` holds (checked on every change) or `timeout` passes.
  bool WaitFor(std::function<bool(FakeOutbox&)> done,
               absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (done(*this)) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return done(*this);
  }

  // ---- What the Dispatcher uses ----
  absl::StatusOr<std::vector<store::Delivery>> ClaimDeliveries(
      std::string_view owner, absl::Time now, absl::Time until,
      int limit) override {
    absl::MutexLock lock(&mu_);
    std::vector<store::Delivery*> due;
    for (auto& [seq, d] : deliveries_) {
      if (d.next_attempt <= now && d.lease_until <= now) due.push_back(&d);
    }
    std::stable_sort(due.begin(), due.end(), [](auto* a, auto* b) {
      return a->next_attempt < b->next_attempt;
    });
    std::vector<store::Delivery> out;
    for (store::Delivery* d : due) {
      if (static_cast<int>(out.size()) >= limit) break;
      d->owner = std::string(owner);
      d->lease_until = until;
      out.push_back(*d);
    }
    for (const store::Delivery& d : out) {
      if (drop_after_claim_.erase(d.generation_id) != 0) {
        DropLocked(d.generation_id);
      }
    }
    return out;
  }

  absl::Status FinishDelivery(int64_t seq) override {
    absl::MutexLock lock(&mu_);
    deliveries_.erase(seq);
    return absl::OkStatus();
  }

  absl::Status RetryDelivery(int64_t seq, int attempts,
                             absl::Time next_attempt) override {
    absl::MutexLock lock(&mu_);
    retries_.push_back({seq, attempts, next_attempt, absl::Now()});
    auto it = deliveries_.find(seq);
    if (it == deliveries_.end()) return absl::OkStatus();
    it->second.attempts = attempts;
    it->second.next_attempt = next_attempt;
    it->second.owner.clear();
    it->second.lease_until = absl::InfinitePast();
    return absl::OkStatus();
  }

  absl::Status DropDeliveries(std::string_view generation_id) override {
    absl::MutexLock lock(&mu_);
    DropLocked(generation_id);
    return absl::OkStatus();
  }

  absl::StatusOr<std::pair<int64_t, absl::Time>> OutboxStats() override {
    absl::MutexLock lock(&mu_);
    absl::Time oldest = absl::InfiniteFuture();
    for (const auto& [seq, d] : deliveries_)
      oldest = std::min(oldest, d.created);
    return std::make_pair(static_cast<int64_t>(deliveries_.size()), oldest);
  }

  absl::StatusOr<std::optional<store::Record>> Get(
      std::string_view id) override {
    absl::MutexLock lock(&mu_);
    auto it = generations_.find(std::string(id));
    if (it == generations_.end()) return std::optional<store::Record>();
    store::Record r;
    r.generation.set_id(std::string(id));
    r.webhooks_gone = gone_.count(std::string(id)) != 0;
    if (it->second.has_value()) {
      *r.generation.mutable_webhook_status() = *it->second;
    }
    return std::optional<store::Record>(r);
  }

  absl::Status SetWebhookStatus(std::string_view id,
                                const v1::WebhookStatus& status) override {
    absl::MutexLock lock(&mu_);
    generations_[std::string(id)] = status;
    return absl::OkStatus();
  }

  // ---- Not used by the Dispatcher ----
  absl::Status Insert(const store::Record&, const store::Admission&,
                      std::optional<store::Record>*) override {
    return Unused();
  }
  absl::Status Update(const store::Record&,
                      const std::vector<store::Delivery>&) override {
    return Unused();
  }
  absl::Status Delete(std::string_view, int64_t) override { return Unused(); }
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
  absl::Status AddSample(const store::DurationSample&) override {
    return Unused();
  }
  absl::StatusOr<std::vector<store::DurationSample>> RecentSamples(
      std::string_view, int, int) override {
    return Unused();
  }

 private:
  static absl::Status Unused() {
    return absl::UnimplementedError("not part of the outbox fake");
  }

  // DropDeliveries as store.h has it: marks the generation, then removes
  // its deliveries.
  void DropLocked(std::string_view generation_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    gone_.insert(std::string(generation_id));
    for (auto it = deliveries_.begin(); it != deliveries_.end();) {
      it = it->second.generation_id == generation_id ? deliveries_.erase(it)
                                                     : std::next(it);
    }
  }

  absl::Mutex mu_;
  int64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int64_t, store::Delivery> deliveries_ ABSL_GUARDED_BY(mu_);
  // Known generations and their webhook status (nullopt: none yet).
  std::map<std::string, std::optional<v1::WebhookStatus>> generations_
      ABSL_GUARDED_BY(mu_);
  std::vector<RetryCall> retries_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> gone_ ABSL_GUARDED_BY(mu_);  // DropDeliveries
  std::set<std::string> drop_after_claim_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::webhooks::test_support
