#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/change_publisher.h"
#include "server/store/store.h"

namespace videogen::store {

// A Store kept in process memory: nothing survives a restart. For tests and
// `--store=memory`. Thread-safe: one mutex guards everything, every call is
// short, and the change feed is delivered after that mutex is released
// (ChangePublisher). Lists and quota checks scan every record: fine for the
// tests and a single small server, not for millions of rows.
class MemoryStore final : public Store {
 public:
  // How many estimator samples are kept per (model, duration_seconds).
  static constexpr int kSamplesKept = 500;

  absl::Status Insert(const Record& record, const Admission& admission,
                      std::optional<Record>* existing) override;
  absl::Status Update(const Record& record,
                      const std::vector<Delivery>& outbox) override;
  absl::Status Delete(std::string_view id, int64_t version) override;
  absl::StatusOr<std::optional<Record>> Get(std::string_view id) override;
  absl::StatusOr<std::optional<Record>> GetByRequestId(
      std::string_view tenant, std::string_view request_id) override;
  absl::StatusOr<std::vector<Record>> ClaimActive(std::string_view owner,
                                                  absl::Time now,
                                                  absl::Time until,
                                                  int limit) override;
  absl::StatusOr<std::vector<std::string>> RenewLeases(
      std::string_view owner, absl::Time now, absl::Time until) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::vector<std::string>> PurgeTerminalBefore(
      absl::Time cutoff) override;
  absl::Status SetWebhookStatus(std::string_view id,
                                const v1::WebhookStatus& status) override;
  ChangeFeed* feed() override { return &publisher_; }

  absl::Status InsertKey(const ApiKey& key) override;
  absl::StatusOr<std::optional<ApiKey>> FindKeyByHash(
      std::string_view key_hash) override;
  absl::StatusOr<std::vector<ApiKey>> ListKeys() override;
  absl::Status RevokeKey(std::string_view key_id, absl::Time when) override;

  absl::StatusOr<std::vector<Delivery>> ClaimDeliveries(std::string_view owner,
                                                        absl::Time now,
                                                        absl::Time until,
                                                        int limit) override;
  absl::Status FinishDelivery(int64_t seq) override;
  absl::Status RetryDelivery(int64_t seq, int attempts,
                             absl::Time next_attempt) override;
  absl::Status DropDeliveries(std::string_view generation_id) override;
  absl::StatusOr<std::pair<int64_t, absl::Time>> OutboxStats() override;

  absl::Status AddSample(const DurationSample& sample) override;
  absl::StatusOr<std::vector<DurationSample>> RecentSamples(
      std::string_view model, int duration_seconds, int limit) override;

  // Number of generations held.
  size_t size() const;

 private:
  // A stored generation: the record (generation.webhook_status cleared) and
  // the webhook state kept beside it.
  struct Row {
    Record record;
    std::optional<v1::WebhookStatus> webhook;
    bool webhooks_gone = false;  // DropDeliveries
  };
  using RequestKey = std::pair<std::string, std::string>;  // tenant, rid

  Record Merged(const Row& row) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status Admit(const Record& record, const Admission& admission) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void EraseLocked(std::map<std::string, Row, std::less<>>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a feed change for `row`'s generation (published after unlock).
  void Announce(const Row& row) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Row, std::less<>> records_ ABSL_GUARDED_BY(mu_);
  // (tenant, request_id) -> id, for non-empty request_ids.
  std::map<RequestKey, std::string> by_request_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, Delivery> outbox_ ABSL_GUARDED_BY(mu_);
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, ApiKey, std::less<>> keys_ ABSL_GUARDED_BY(mu_);
  // (model, duration_seconds) -> samples, newest `completed` first.
  std::map<std::pair<std::string, int>, std::deque<DurationSample>, std::less<>>
      samples_ ABSL_GUARDED_BY(mu_);
  ChangePublisher publisher_;
};

}  // namespace videogen::store
