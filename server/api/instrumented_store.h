#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "server/api/metrics.h"
#include "server/store/store.h"

namespace videogen::api {
namespace internal {

// Runs `f` and records how long it took as a store write of kind `op`.
template <typename F>
auto TimedStoreWrite(const char* op, F f) {
  const absl::Time start = absl::Now();
  auto result = f();
  Metrics::Global().Observe("videogen_store_write_duration_seconds",
                            {{"op", op}},
                            absl::ToDoubleSeconds(absl::Now() - start));
  return result;
}

}  // namespace internal

// Times every durable write of the wrapped store
// (videogen_store_write_duration_seconds{op}; `op` is one of a fixed set of
// method names). Reads and the change feed pass straight through.
// Thread-safe as the wrapped store.
class InstrumentedStore final : public store::Store {
 public:
  explicit InstrumentedStore(std::unique_ptr<store::Store> inner)
      : inner_(std::move(inner)) {}

  // ---- Generations ----
  absl::Status Insert(const store::Record& record,
                      const store::Admission& admission,
                      std::optional<store::Record>* existing) override {
    return internal::TimedStoreWrite(
        "insert", [&] { return inner_->Insert(record, admission, existing); });
  }
  absl::Status Update(const store::Record& record,
                      const std::vector<store::Delivery>& outbox) override {
    return internal::TimedStoreWrite(
        "update", [&] { return inner_->Update(record, outbox); });
  }
  absl::Status Delete(std::string_view id, int64_t version) override {
    return internal::TimedStoreWrite(
        "delete", [&] { return inner_->Delete(id, version); });
  }
  absl::StatusOr<std::optional<store::Record>> Get(
      std::string_view id) override {
    return inner_->Get(id);
  }
  absl::StatusOr<std::optional<store::Record>> GetByRequestId(
      std::string_view tenant, std::string_view request_id) override {
    return inner_->GetByRequestId(tenant, request_id);
  }
  absl::StatusOr<std::vector<store::Record>> ClaimActive(std::string_view owner,
                                                         absl::Time now,
                                                         absl::Time until,
                                                         int limit) override {
    return internal::TimedStoreWrite("claim_active", [&] {
      return inner_->ClaimActive(owner, now, until, limit);
    });
  }
  absl::StatusOr<std::vector<std::string>> RenewLeases(
      std::string_view owner, absl::Time now, absl::Time until) override {
    return internal::TimedStoreWrite(
        "renew_leases", [&] { return inner_->RenewLeases(owner, now, until); });
  }
  absl::StatusOr<store::ListPage> List(const store::ListQuery& q) override {
    return inner_->List(q);
  }
  absl::StatusOr<std::vector<std::string>> PurgeTerminalBefore(
      absl::Time cutoff) override {
    return internal::TimedStoreWrite(
        "purge", [&] { return inner_->PurgeTerminalBefore(cutoff); });
  }
  absl::Status SetWebhookStatus(std::string_view id,
                                const v1::WebhookStatus& status) override {
    return internal::TimedStoreWrite("set_webhook_status", [&] {
      return inner_->SetWebhookStatus(id, status);
    });
  }
  store::ChangeFeed* feed() override { return inner_->feed(); }
  absl::Status CheckIntegrity() override { return inner_->CheckIntegrity(); }

  // ---- API keys ----
  absl::Status InsertKey(const store::ApiKey& key) override {
    return internal::TimedStoreWrite("insert_key",
                                     [&] { return inner_->InsertKey(key); });
  }
  absl::StatusOr<std::optional<store::ApiKey>> FindKeyByHash(
      std::string_view key_hash) override {
    return inner_->FindKeyByHash(key_hash);
  }
  absl::StatusOr<std::vector<store::ApiKey>> ListKeys() override {
    return inner_->ListKeys();
  }
  absl::Status RevokeKey(std::string_view key_id, absl::Time when) override {
    return internal::TimedStoreWrite(
        "revoke_key", [&] { return inner_->RevokeKey(key_id, when); });
  }

  // ---- Webhook outbox ----
  absl::StatusOr<std::vector<store::Delivery>> ClaimDeliveries(
      std::string_view owner, absl::Time now, absl::Time until,
      int limit) override {
    return internal::TimedStoreWrite("claim_deliveries", [&] {
      return inner_->ClaimDeliveries(owner, now, until, limit);
    });
  }
  absl::Status FinishDelivery(int64_t seq) override {
    return internal::TimedStoreWrite(
        "finish_delivery", [&] { return inner_->FinishDelivery(seq); });
  }
  absl::Status RetryDelivery(int64_t seq, int attempts,
                             absl::Time next_attempt) override {
    return internal::TimedStoreWrite("retry_delivery", [&] {
      return inner_->RetryDelivery(seq, attempts, next_attempt);
    });
  }
  absl::Status DropDeliveries(std::string_view generation_id) override {
    return internal::TimedStoreWrite("drop_deliveries", [&] {
      return inner_->DropDeliveries(generation_id);
    });
  }
  absl::StatusOr<std::pair<int64_t, absl::Time>> OutboxStats() override {
    return inner_->OutboxStats();
  }

  // ---- Estimator samples ----
  absl::Status AddSample(const store::DurationSample& sample) override {
    return internal::TimedStoreWrite("add_sample",
                                     [&] { return inner_->AddSample(sample); });
  }
  absl::StatusOr<std::vector<store::DurationSample>> RecentSamples(
      std::string_view model, int duration_seconds, int limit) override {
    return inner_->RecentSamples(model, duration_seconds, limit);
  }

 private:
  std::unique_ptr<store::Store> inner_;
};

}  // namespace videogen::api
