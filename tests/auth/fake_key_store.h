#pragma once

#include <atomic>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/store/store.h"

namespace videogen::auth::testing {

// A store that implements only the API-key methods, in memory, and counts
// FindKeyByHash calls so tests can see what the authenticator's cache saves.
// Everything else is UNIMPLEMENTED: the auth layer must not call it.
// Thread-safe.
class FakeKeyStore final : public store::Store {
 public:
  absl::Status InsertKey(const store::ApiKey& key) override {
    absl::MutexLock lock(&mu_);
    if (fail_) return absl::UnavailableError("database is down");
    for (const auto& k : keys_) {
      if (k.key_id == key.key_id || k.key_hash == key.key_hash) {
        return absl::AlreadyExistsError("duplicate key");
      }
    }
    keys_.push_back(key);
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<store::ApiKey>> FindKeyByHash(
      std::string_view key_hash) override {
    finds_.fetch_add(1);
    absl::MutexLock lock(&mu_);
    if (fail_) return absl::UnavailableError("database is down");
    for (const auto& k : keys_) {
      if (loose_ || k.key_hash == key_hash) return k;
    }
    return std::nullopt;
  }
  absl::StatusOr<std::vector<store::ApiKey>> ListKeys() override {
    absl::MutexLock lock(&mu_);
    if (fail_) return absl::UnavailableError("database is down");
    return keys_;
  }
  absl::Status RevokeKey(std::string_view key_id, absl::Time when) override {
    absl::MutexLock lock(&mu_);
    if (fail_) return absl::UnavailableError("database is down");
    for (auto& k : keys_) {
      if (k.key_id == key_id) {
        k.revoked = when;
        return absl::OkStatus();
      }
    }
    return absl::NotFoundError("no such key");
  }

  int finds() const { return finds_.load(); }
  // A broken store that answers any hash with its first key.
  void set_loose(bool loose) {
    absl::MutexLock lock(&mu_);
    loose_ = loose;
  }
  void set_fail(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_ = fail;
  }
  std::vector<store::ApiKey> keys() {
    absl::MutexLock lock(&mu_);
    return keys_;
  }

  // ---- not used by auth/ ----
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
  absl::Status AddSample(const store::DurationSample&) override {
    return Unused();
  }
  absl::StatusOr<std::vector<store::DurationSample>> RecentSamples(
      std::string_view, int, int) override {
    return Unused();
  }

 private:
  static absl::Status Unused() {
    return absl::UnimplementedError("FakeKeyStore: keys only");
  }

  std::atomic<int> finds_{0};
  absl::Mutex mu_;
  std::vector<store::ApiKey> keys_ ABSL_GUARDED_BY(mu_);
  bool fail_ ABSL_GUARDED_BY(mu_) = false;
  bool loose_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace videogen::auth::testing
