#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/core/events.h"
#include "server/store/memory_store.h"

namespace videogen::core::testing {

// A MemoryStore wrapper that counts writes and can fail them, or fail the
// next N compare-and-sets as if another writer had won. Thread-safe.
class TestStore final : public store::Store {
 public:
  void FailWrites(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_ = std::move(status);
  }
  int update_count() const { return updates_.load(); }
  store::MemoryStore& inner() { return inner_; }

  absl::Status Insert(const store::Record& record,
                      const store::Admission& admission,
                      std::optional<store::Record>* existing) override {
    if (absl::Status s = Failure(); !s.ok()) return s;
    return inner_.Insert(record, admission, existing);
  }
  absl::Status Update(const store::Record& record,
                      const std::vector<store::Delivery>& outbox) override {
    if (absl::Status s = Failure(); !s.ok()) return s;
    ++updates_;
    return inner_.Update(record, outbox);
  }
  absl::Status Delete(std::string_view id, int64_t version) override {
    if (absl::Status s = Failure(); !s.ok()) return s;
    return inner_.Delete(id, version);
  }
  absl::StatusOr<std::optional<store::Record>> Get(
      std::string_view id) override {
    return inner_.Get(id);
  }
  absl::StatusOr<std::optional<store::Record>> GetByRequestId(
      std::string_view tenant, std::string_view request_id) override {
    return inner_.GetByRequestId(tenant, request_id);
  }
  absl::StatusOr<std::vector<store::Record>> ClaimActive(std::string_view owner,
                                                         absl::Time now,
                                                         absl::Time until,
                                                         int limit) override {
    return inner_.ClaimActive(owner, now, until, limit);
  }
  absl::StatusOr<std::vector<std::string>> RenewLeases(
      std::string_view owner, absl::Time now, absl::Time until) override {
    return inner_.RenewLeases(owner, now, until);
  }
  absl::StatusOr<store::ListPage> List(const store::ListQuery& q) override {
    return inner_.List(q);
  }
  absl::StatusOr<std::vector<std::string>> PurgeTerminalBefore(
      absl::Time cutoff) override {
    return inner_.PurgeTerminalBefore(cutoff);
  }
  absl::Status SetWebhookStatus(std::string_view id,
                                const v1::WebhookStatus& status) override {
    return inner_.SetWebhookStatus(id, status);
  }
  store::ChangeFeed* feed() override { return inner_.feed(); }
  absl::Status InsertKey(const store::ApiKey& key) override {
    return inner_.InsertKey(key);
  }
  absl::StatusOr<std::optional<store::ApiKey>> FindKeyByHash(
      std::string_view key_hash) override {
    return inner_.FindKeyByHash(key_hash);
  }
  absl::StatusOr<std::vector<store::ApiKey>> ListKeys() override {
    return inner_.ListKeys();
  }
  absl::Status RevokeKey(std::string_view key_id, absl::Time when) override {
    return inner_.RevokeKey(key_id, when);
  }
  absl::StatusOr<std::vector<store::Delivery>> ClaimDeliveries(
      std::string_view owner, absl::Time now, absl::Time until,
      int limit) override {
    return inner_.ClaimDeliveries(owner, now, until, limit);
  }
  absl::Status FinishDelivery(int64_t seq) override {
    return inner_.FinishDelivery(seq);
  }
  absl::Status RetryDelivery(int64_t seq, int attempts,
                             absl::Time next_attempt) override {
    return inner_.RetryDelivery(seq, attempts, next_attempt);
  }
  absl::Status DropDeliveries(std::string_view generation_id) override {
    return inner_.DropDeliveries(generation_id);
  }
  absl::StatusOr<std::pair<int64_t, absl::Time>> OutboxStats() override {
    return inner_.OutboxStats();
  }
  absl::Status AddSample(const store::DurationSample& sample) override {
    return inner_.AddSample(sample);
  }
  absl::StatusOr<std::vector<store::DurationSample>> RecentSamples(
      std::string_view model, int duration_seconds, int limit) override {
    return inner_.RecentSamples(model, duration_seconds, limit);
  }

 private:
  absl::Status Failure() {
    absl::MutexLock lock(&mu_);
    return fail_;
  }
  store::MemoryStore inner_;
  std::atomic<int> updates_{0};
  absl::Mutex mu_;
  absl::Status fail_ ABSL_GUARDED_BY(mu_);
};

// Records every event it gets and, like every real sink, drops what is not
// newer than what it holds for that generation. Thread-safe.
class RecordingSink final : public EventSink {
 public:
  void OnEvent(EventPtr event) override {
    absl::MutexLock lock(&mu_);
    int64_t& last = last_[event->generation().id()];
    if (event->generation().revision() <= last) {
      ++dropped_;
      return;
    }
    last = event->generation().revision();
    events_.push_back(std::move(event));
  }
  std::vector<EventPtr> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<int64_t> revisions() const {
    absl::MutexLock lock(&mu_);
    std::vector<int64_t> out;
    for (const EventPtr& e : events_) out.push_back(e->generation().revision());
    return out;
  }
  size_t size() const {
    absl::MutexLock lock(&mu_);
    return events_.size();
  }
  EventPtr last() const {
    absl::MutexLock lock(&mu_);
    return events_.empty() ? nullptr : events_.back();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<EventPtr> events_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> last_ ABSL_GUARDED_BY(mu_);
  int dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace videogen::core::testing
