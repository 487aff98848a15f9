#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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

struct SqliteOptions {
  // How hard each commit is pushed to disk. See the comment on kFull in
  // sqlite_store.cc for why kFull is the default; kNormal exists so the
  // benchmark can show what the choice costs.
  enum class Sync { kFull, kNormal };
  Sync sync = Sync::kFull;
  // How long a statement waits for a lock held by another connection.
  int busy_timeout_ms = 5000;
  // Who opens the data dir.
  //  - kServer holds <data_dir>/videogen.lock for as long as the store is
  //    open, so a second server on the same data dir is refused, and
  //    migrates the schema.
  //  - kKeyAdmin is `videogen-server keys`, which must work beside the
  //    server running on the data dir (design.md §7: a revocation reaches
  //    the running server within seconds). With no server there it opens
  //    like one (creates and migrates the database) but lets the lock go
  //    once open, so a server can start meanwhile. Beside a running server
  //    it takes no lock and migrates nothing: the file must already have
  //    exactly this binary's schema version, else FAILED_PRECONDITION. Its
  //    few short writes then share the file with the server's under SQLite's
  //    WAL locking (BEGIN IMMEDIATE; both sides wait up to busy_timeout_ms).
  enum class Role { kServer, kKeyAdmin };
  Role role = Role::kServer;
  // How long a server waits for <data_dir>/videogen.lock before it says
  // another server holds it. The keys command holds the lock for the few
  // milliseconds it takes to create or migrate the database, and a server
  // started in that moment must wait for it, not be refused.
  absl::Duration lock_wait = absl::Seconds(2);
};

// The default Store: one SQLite file, <data_dir>/videogen.db, in WAL mode.
// Thread-safe: the store mutex owns the connection; any thread may call,
// writes are serialized (and so are reads, which share the connection).
// Every write is one BEGIN IMMEDIATE transaction, so a quota check and its
// insert, or a compare-and-set and its outbox rows, commit together. The
// change feed is delivered after the mutex is released (ChangePublisher). A
// lock file (<data_dir>/videogen.lock, flock) keeps a second server off the
// same data dir; the OS drops it when the process dies, even on kill -9.
// The keys command opens the file beside a running server
// (SqliteOptions::Role::kKeyAdmin); its feed sees only its own writes.
class SqliteStore final : public Store {
 public:
  // Schema version this code writes (PRAGMA user_version).
  static int SchemaVersion();

  // Creates data_dir if missing, opens or creates the database, checks that
  // it can be written and migrates the schema (see SqliteOptions::Role for
  // the keys command's open beside a running server). Errors are
  // FAILED_PRECONDITION (or DATA_LOSS for a corrupt file) with a message that
  // says what to do.
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(
      const std::string& data_dir, const SqliteOptions& options = {});

  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

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
  // PRAGMA quick_check: DATA_LOSS, saying what to do, when the file is
  // damaged. Reads every page: call it at startup, not per request.
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

  // The database file's path.
  const std::string& path() const { return path_; }

  // The journal mode SQLite reports ("wal" once open). For tests.
  absl::StatusOr<std::string> JournalMode();

 private:
  // A prepared statement owned by the store; finalized in the destructor.
  using Stmt = sqlite3_stmt*;

  // `lock_fd` is the flocked lock file, closed with the store; -1 for none.
  SqliteStore(std::string path, int lock_fd);

  // `migrate` false: only checks that the schema is exactly this binary's
  // (a running server owns migrations).
  absl::Status Init(const SqliteOptions& options, bool migrate);
  absl::Status Migrate(bool migrate) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MigrateSteps(bool migrate) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PrepareAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every prepared statement's slot and SQL.
  std::vector<std::pair<Stmt*, const char*>> StatementTable()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Stmt> Prepare(const std::string& sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int64_t> PragmaInt(const char* sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` in one BEGIN IMMEDIATE transaction: commits when it
  // returns OK, rolls back otherwise.
  absl::Status Write(const std::function<absl::Status()>& body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Steps a statement that returns no rows.
  absl::Status StepDone(Stmt stmt, const std::string& doing)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::optional<Record>> GetOne(Stmt stmt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Admit(const Record& record, const Admission& admission)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Binds the generations columns (?1..?16) of insert_ and update_.
  absl::Status BindRow(Stmt stmt, const Record& record, int64_t version,
                       const std::string& body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteLabels(const v1::Generation& g)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AppendDeliveries(const std::vector<Delivery>& outbox)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Stmt> ListStmt(const ListQuery& query)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a feed change (published by publisher_.Flush() after unlock).
  void Announce(const v1::Generation& g, const std::string* webhook_status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Turns a SQLite result code into a Status that names the file and what
  // to do about it.
  absl::Status Error(int rc, const std::string& doing) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const int lock_fd_;

  mutable absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt begin_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt commit_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt rollback_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt get_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt get_by_request_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt count_active_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt count_recent_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt sum_budget_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt insert_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt head_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt update_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt delete_labels_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt insert_label_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt insert_delivery_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt delete_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt claim_active_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt renew_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt purge_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt set_webhook_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt insert_key_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt key_by_id_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt key_by_hash_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt list_keys_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt revoke_key_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt claim_deliveries_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt finish_delivery_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt retry_delivery_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt mark_webhooks_gone_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt drop_deliveries_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt outbox_stats_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt insert_sample_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt trim_samples_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt recent_samples_ ABSL_GUARDED_BY(mu_) = nullptr;
  // List statements by filter shape (their SQL text); few distinct shapes.
  std::map<std::string, Stmt> list_ ABSL_GUARDED_BY(mu_);
  // The change feed; never delivers while mu_ is held.
  ChangePublisher publisher_;
};

}  // namespace videogen::store
