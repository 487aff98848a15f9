#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/store/pg/change_feed.h"
#include "server/store/pg/pool.h"
#include "server/store/store.h"

namespace videogen::store {

struct PostgresOptions {
  // Connections for store calls (the change feed has its own).
  int pool_size = 4;
  // Shows in pg_stat_activity; the feed's connection adds "-feed".
  std::string application_name = "videogen";
  absl::Duration connect_timeout = absl::Seconds(10);
  // Server-side bound for each statement (SET statement_timeout).
  absl::Duration statement_timeout = absl::Seconds(30);
  // Change feed: backstop re-read interval and reconnect back-off.
  absl::Duration feed_backstop_interval = absl::Seconds(2);
  absl::Duration feed_reconnect_min = absl::Milliseconds(100);
  absl::Duration feed_reconnect_max = absl::Seconds(5);
  // Called on the feed thread when its connection fails (it reconnects by
  // itself); for logging. The status never holds the URL.
  std::function<void(const absl::Status&)> on_feed_error;
  // How long superseded revisions stay in the history the change feed
  // reads; a feed cut off for longer than this catches up with the latest
  // revision of each generation but may skip intermediate ones.
  absl::Duration revision_retention = absl::Minutes(15);
  // Estimator samples kept per (model, duration_seconds).
  int samples_per_key = 500;
};

// A Store shared by several replicas through one PostgreSQL database
// (design.md §6), on libpq.
//
// - Schema: versioned migrations applied at Open under an advisory lock, so
//   replicas starting together are safe (see pg/schema.cc).
// - Calls borrow a connection from a small pool; statements are prepared
//   once per connection. Writes are single statements or short
//   transactions; Insert's admission check holds a per-tenant
//   transaction-level advisory lock, so quotas hold across replicas.
// - Update is compare-and-set on `version`; ClaimActive bumps it, which
//   fences a replica that lost its lease. Claims use FOR UPDATE SKIP LOCKED.
// - Every revision-raising write (Insert, and Update when the revision goes
//   up) records the revision in generation_revisions and sends NOTIFY
//   "ID:REVISION" in its transaction; feed() is a pg::PgChangeFeed that
//   delivers every revision from that history.
//
// Thread-safe: any thread may call; each call holds one pooled connection
// for its duration (blocking libpq calls, bounded by statement_timeout and
// TCP keepalives). The change feed runs on its own thread.
class PostgresStore final : public Store {
 public:
  // Connects (libpq URI or key=value string; env VIDEOGEN_DATABASE_URL is
  // the caller's business), migrates the schema and checks it. Errors never
  // contain the URL.
  static absl::StatusOr<std::unique_ptr<PostgresStore>> Open(
      const std::string& database_url, const PostgresOptions& options = {});

  ~PostgresStore() override;
  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

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
  ChangeFeed* feed() override { return &feed_; }
  // Connectivity plus the schema version this code expects.
  absl::Status CheckIntegrity() override;

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

  // The change feed's counters (connects, notifications, catch-up passes).
  pg::FeedStats feed_stats() const { return feed_.stats(); }

 private:
  PostgresStore(const PostgresOptions& options, pg::ConnectParams connect,
                std::vector<std::string> setup, int64_t change_head);

  // Runs `fn(connection)` on a pooled connection. Reads pass
  // `retry_if_lost`: a connection that turns out dead (the server restarted
  // since it was last used) is dropped and the read runs once more.
  template <typename Fn>
  auto WithConnection(bool retry_if_lost, Fn&& fn)
      -> decltype(fn(std::declval<pg::Connection&>()));

  absl::Status InsertLocked(pg::Connection& conn, const Record& record,
                            const Admission& admission,
                            std::optional<Record>* existing);
  absl::Status CheckAdmission(pg::Connection& conn, const Record& record,
                              const Admission& admission,
                              std::optional<Record>* existing);
  absl::StatusOr<bool> UpdateLocked(pg::Connection& conn, const Record& record);

  const PostgresOptions options_;
  pg::Pool pool_;
  pg::PgChangeFeed feed_;
};

}  // namespace videogen::store
