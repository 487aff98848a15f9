#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
};

// The default Store: one SQLite file, <data_dir>/videogen.db, in WAL mode.
// Thread-safe: the store mutex owns the connection; any thread may call,
// writes are serialized (and so are reads, which share the connection). A
// lock file (<data_dir>/videogen.lock, flock) keeps a second server off the
// same data dir; the OS drops it when the process dies, even on kill -9.
class SqliteStore final : public Store {
 public:
  // Schema version this code writes (PRAGMA user_version).
  static int SchemaVersion();

  // Creates data_dir if missing, opens or creates the database, checks that
  // it can be written and migrates the schema. Errors are
  // FAILED_PRECONDITION (or DATA_LOSS for a corrupt file) with a message that
  // says what to do.
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(
      const std::string& data_dir, const SqliteOptions& options = {});

  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  absl::Status Put(const Record& record) override;
  absl::Status Delete(std::string_view id) override;
  absl::StatusOr<std::optional<Record>> Get(std::string_view id) override;
  absl::StatusOr<std::optional<Record>> GetByRequestId(
      std::string_view request_id) override;
  absl::StatusOr<std::vector<Record>> LoadActive() override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<int64_t> PurgeTerminalBefore(absl::Time cutoff) override;

  // The database file's path.
  const std::string& path() const { return path_; }

  // The journal mode SQLite reports ("wal" once open). For tests.
  absl::StatusOr<std::string> JournalMode();

 private:
  // A prepared statement owned by the store; finalized in the destructor.
  using Stmt = sqlite3_stmt*;

  SqliteStore(std::string path, int lock_fd);

  absl::Status Init(const SqliteOptions& options);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MigrateSteps() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PrepareAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Stmt> Prepare(const std::string& sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int64_t> PragmaInt(const char* sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PutLocked(const Record& record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::optional<Record>> GetOne(Stmt stmt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Stmt> ListStmt(const ListQuery& query)
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
  Stmt request_owner_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt upsert_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt delete_labels_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt insert_label_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt delete_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt get_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt get_by_request_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt load_active_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stmt purge_ ABSL_GUARDED_BY(mu_) = nullptr;
  // List statements by filter shape (their SQL text); few distinct shapes.
  std::map<std::string, Stmt> list_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::store
