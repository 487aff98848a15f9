#include "server/store/sqlite_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/store/store_internal.h"

namespace videogen::store {
namespace {

// "vgn1": marks the file as ours, so a foreign SQLite file is refused.
constexpr int32_t kApplicationId = 0x76676e31;

// Fills the columns migration 2 added from each row's body (revision,
// duration_seconds, tenant), which SQL cannot read. Runs inside the
// migration's transaction.
int BackfillV2(sqlite3* db);

// One schema migration: SQL, then an optional C++ step.
struct Migration {
  const char* sql;
  int (*after)(sqlite3* db);
};

// Schema migrations, applied in order; user_version = how many ran. Never
// edit a released step: append a new one.
const Migration kMigrations[] = {
    // 1: generations, keyed by id. body is the serialized v1::Generation; the
    // other columns are copies of its fields, for the indexes. Times are Unix
    // nanoseconds so the order matches the Timestamps exactly.
    {
        R"sql(
CREATE TABLE generations (
  id TEXT PRIMARY KEY NOT NULL,
  request_id TEXT UNIQUE,           -- NULL when the request had none
  state INTEGER NOT NULL,
  done INTEGER NOT NULL,
  create_time_ns INTEGER NOT NULL,
  update_time_ns INTEGER NOT NULL,
  deadline_ns INTEGER,              -- NULL: no deadline
  body BLOB NOT NULL
);
CREATE INDEX generations_by_create
  ON generations (create_time_ns DESC, id DESC);
-- Partial indexes: the active rows in LoadActive's order (startup reads
-- them without a sort, and the index stays small as terminal rows pile up),
-- and the terminal rows by age, for the retention purge.
CREATE INDEX generations_active ON generations (create_time_ns, id)
  WHERE done = 0;
CREATE INDEX generations_terminal ON generations (update_time_ns)
  WHERE done = 1;
CREATE TABLE generation_labels (
  id TEXT NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (id, key)
) WITHOUT ROWID;
CREATE INDEX generation_labels_by_pair ON generation_labels (key, value);
)sql",
        nullptr},
    // 2: tenants, compare-and-set versions, poll leases, submit phases,
    // webhook status beside the record, the webhook outbox, API keys and
    // estimator samples. request_id becomes unique per tenant, which SQLite
    // can only do by rebuilding the table; rows keep everything they had and
    // become version 1 of tenant ''. Times in new columns are Unix
    // nanoseconds with INT64_MIN/INT64_MAX for InfinitePast/InfiniteFuture,
    // so comparisons need no NULL cases.
    {R"sql(
ALTER TABLE generation_labels RENAME TO generation_labels_v1;
ALTER TABLE generations RENAME TO generations_v1;
CREATE TABLE generations (
  id TEXT PRIMARY KEY NOT NULL,
  tenant TEXT NOT NULL DEFAULT '',
  request_id TEXT,                  -- NULL when the request had none
  state INTEGER NOT NULL,
  done INTEGER NOT NULL,
  revision INTEGER NOT NULL DEFAULT 0,
  version INTEGER NOT NULL DEFAULT 1,
  create_time_ns INTEGER NOT NULL,
  update_time_ns INTEGER NOT NULL,
  deadline_ns INTEGER,              -- NULL: no deadline
  submit INTEGER NOT NULL DEFAULT 0,  -- store::SubmitPhase
  submit_time_ns INTEGER NOT NULL DEFAULT -9223372036854775808,
  owner TEXT NOT NULL DEFAULT '',   -- poll lease holder, '' = free
  lease_until_ns INTEGER NOT NULL DEFAULT -9223372036854775808,
  duration_seconds INTEGER NOT NULL DEFAULT 0,  -- for the seconds budget
  webhook_status BLOB,              -- v1::WebhookStatus; not in body
  body BLOB NOT NULL,
  UNIQUE (tenant, request_id)
);
INSERT INTO generations (id, request_id, state, done, create_time_ns,
                         update_time_ns, deadline_ns, body)
  SELECT id, request_id, state, done, create_time_ns, update_time_ns,
         deadline_ns, body FROM generations_v1;
CREATE TABLE generation_labels (
  id TEXT NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (id, key)
) WITHOUT ROWID;
INSERT INTO generation_labels (id, key, value)
  SELECT id, key, value FROM generation_labels_v1;
DROP TABLE generation_labels_v1;
DROP TABLE generations_v1;
CREATE INDEX generations_by_create
  ON generations (create_time_ns DESC, id DESC);
-- Tenant-scoped lists.
CREATE INDEX generations_by_tenant
  ON generations (tenant, create_time_ns DESC, id DESC);
-- The quota windows (creates per minute, seconds budget), answered from
-- the index alone: the budget sums every generation in its period on each
-- insert.
CREATE INDEX generations_quota
  ON generations (tenant, create_time_ns, state, duration_seconds);
-- Partial indexes stay small as terminal rows pile up: the active rows in
-- claim order, per tenant (max_concurrent) and per lease holder (renewal);
-- the terminal rows by age, for the retention purge.
CREATE INDEX generations_active ON generations (create_time_ns, id)
  WHERE done = 0;
CREATE INDEX generations_active_by_tenant ON generations (tenant)
  WHERE done = 0;
CREATE INDEX generations_active_by_owner ON generations (owner)
  WHERE done = 0;
CREATE INDEX generations_terminal ON generations (update_time_ns)
  WHERE done = 1;
CREATE INDEX generation_labels_by_pair ON generation_labels (key, value);
-- AUTOINCREMENT: a seq is never reused, so a late FinishDelivery of a
-- removed delivery cannot hit a newer one.
CREATE TABLE outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  generation_id TEXT NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
  revision INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  url TEXT NOT NULL,
  body TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ns INTEGER NOT NULL,
  created_ns INTEGER NOT NULL,
  owner TEXT NOT NULL DEFAULT '',
  lease_until_ns INTEGER NOT NULL DEFAULT -9223372036854775808
);
CREATE INDEX outbox_due ON outbox (next_attempt_ns);
CREATE INDEX outbox_by_generation ON outbox (generation_id);
CREATE TABLE api_keys (
  key_id TEXT PRIMARY KEY NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,    -- hex SHA-256; never the key itself
  tenant TEXT NOT NULL,
  admin INTEGER NOT NULL,
  max_concurrent INTEGER NOT NULL,
  creates_per_minute INTEGER NOT NULL,
  video_seconds_budget INTEGER NOT NULL,
  budget_period_ns INTEGER NOT NULL,
  webhook_secret TEXT NOT NULL,
  created_ns INTEGER NOT NULL,
  revoked_ns INTEGER                -- NULL: not revoked
);
CREATE TABLE duration_samples (
  seq INTEGER PRIMARY KEY,
  model TEXT NOT NULL,
  duration_seconds INTEGER NOT NULL,
  took_ns INTEGER NOT NULL,
  completed_ns INTEGER NOT NULL
);
CREATE INDEX duration_samples_newest
  ON duration_samples (model, duration_seconds, completed_ns DESC, seq DESC);
)sql",
     BackfillV2},
    // 3: set when a generation's webhook receiver answered 410 Gone
    // (DropDeliveries); its later changes queue no deliveries.
    {R"sql(
ALTER TABLE generations ADD COLUMN webhooks_gone INTEGER NOT NULL DEFAULT 0;
)sql",
     nullptr},
};
constexpr int kNumMigrations = sizeof(kMigrations) / sizeof(kMigrations[0]);

// synchronous level. In WAL mode, NORMAL syncs the WAL only at checkpoints:
// a commit survives a process crash (kill -9), since it already sits in the
// OS page cache, but a power cut or kernel panic can roll back the last
// commits. FULL fsyncs the WAL on every commit. We use FULL: the Store
// contract is "OK means durable", the tracker announces an event only after
// Put returns, and a lost commit may be the submit intent or the upstream id
// of a job that is billed (~120k tokens): after a power cut we would forget a
// paid job, or show a client a revision the store no longer has. The price is
// one fsync per state change; a generation changes state a few times over
// several minutes, so even a slow disk's few hundred fsyncs per second are far
// above the load (tests/bench/store measures both levels).
const char* SyncPragma(SqliteOptions::Sync sync) {
  return sync == SqliteOptions::Sync::kFull ? "PRAGMA synchronous = FULL"
                                            : "PRAGMA synchronous = NORMAL";
}

std::string WhatToDoUnwritable() {
  return "fix permissions or pass --data_dir / --store=memory";
}

int64_t Nanos(absl::Time t) { return absl::ToUnixNanos(t); }

int64_t Nanos(const google::protobuf::Timestamp& t) {
  return Nanos(absl::FromUnixSeconds(t.seconds()) +
               absl::Nanoseconds(t.nanos()));
}

// Resets a shared statement when a call is done with it, so the next call
// starts clean and no read transaction stays open.
class ResetOnExit {
 public:
  explicit ResetOnExit(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~ResetOnExit() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

void BindText(sqlite3_stmt* stmt, int i, std::string_view s) {
  sqlite3_bind_text(stmt, i, s.data(), static_cast<int>(s.size()),
                    SQLITE_TRANSIENT);
}

std::string_view ColumnText(sqlite3_stmt* stmt, int i) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, i));
  return p ? std::string_view(p, sqlite3_column_bytes(stmt, i))
           : std::string_view();
}

// Takes the data dir's lock, trying for up to `wait`: 0 or the errno of the
// last attempt (EWOULDBLOCK while another process holds it).
int LockDataDir(int fd, absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  while (true) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
    const int err = errno;
    if (err != EWOULDBLOCK || absl::Now() >= deadline) return err;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace

int SqliteStore::SchemaVersion() { return kNumMigrations; }

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(
    const std::string& data_dir, const SqliteOptions& options) {
  namespace fs = std::filesystem;
  if (data_dir.empty()) {
    return absl::InvalidArgumentError(
        "data dir is empty; pass --data_dir or --store=memory");
  }
  std::error_code ec;
  if (fs::exists(data_dir, ec) && !fs::is_directory(data_dir, ec)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "data dir %s is not a directory; pass another --data_dir or "
        "--store=memory",
        data_dir));
  }
  fs::create_directories(data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrFormat("data dir %s is not writable: %s; %s", data_dir,
                        ec.message(), WhatToDoUnwritable()));
  }
  // Creating the lock file doubles as the writability check.
  const std::string lock_path = data_dir + "/videogen.lock";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("data dir %s is not writable: %s; %s", data_dir,
                        std::strerror(errno), WhatToDoUnwritable()));
  }
  const bool key_admin = options.role == SqliteOptions::Role::kKeyAdmin;
  bool locked = true;
  if (int err =
          LockDataDir(fd, key_admin ? absl::ZeroDuration() : options.lock_wait);
      err != 0) {
    ::close(fd);
    fd = -1;
    locked = false;
    if (err != EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrFormat("cannot lock %s: %s; %s", lock_path,
                          std::strerror(err), WhatToDoUnwritable()));
    }
    if (!key_admin) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "data dir %s is in use by another videogen server (%s stayed "
          "locked for %s); stop that server or pass another --data_dir",
          data_dir, lock_path, absl::FormatDuration(options.lock_wait)));
    }
    // The keys command beside a running server: no lock, no migration.
  }
  // The keys command keeps the lock only while it creates or migrates the
  // database: a server may start while it runs.
  std::unique_ptr<SqliteStore> store(
      new SqliteStore(data_dir + "/videogen.db", key_admin ? -1 : fd));
  absl::Status s = store->Init(options, /*migrate=*/locked);
  if (key_admin && fd >= 0) ::close(fd);  // releases the flock
  if (!s.ok()) return s;
  return store;
}

SqliteStore::SqliteStore(std::string path, int lock_fd)
    : path_(std::move(path)), lock_fd_(lock_fd) {}

SqliteStore::~SqliteStore() {
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [slot, sql] : StatementTable()) {
      sqlite3_finalize(*slot);  // no-op on nullptr
    }
    for (auto& [sql, s] : list_) sqlite3_finalize(s);
    sqlite3_close(db_);  // checkpoints and removes the WAL
    db_ = nullptr;
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

absl::Status SqliteStore::Init(const SqliteOptions& options, bool migrate) {
  absl::MutexLock lock(&mu_);
  int rc = sqlite3_open_v2(
      path_.c_str(), &db_,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
      nullptr);
  if (rc != SQLITE_OK) return Error(rc, "opening it");
  sqlite3_extended_result_codes(db_, 1);
  if (sqlite3_db_readonly(db_, "main") == 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "database %s is read-only; %s", path_, WhatToDoUnwritable()));
  }
  sqlite3_busy_timeout(db_, options.busy_timeout_ms);

  // journal_mode is the first statement that reads the file, so a garbage
  // file fails here with SQLITE_NOTADB.
  sqlite3_stmt* stmt = nullptr;
  rc = sqlite3_prepare_v2(db_, "PRAGMA journal_mode = WAL", -1, &stmt, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
  std::string mode = rc == SQLITE_ROW ? std::string(ColumnText(stmt, 0)) : "";
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW) return Error(rc, "switching it to WAL mode");
  if (mode != "wal") {
    return absl::FailedPreconditionError(absl::StrFormat(
        "database %s could not switch to WAL mode (journal_mode is '%s'); "
        "the filesystem may lack shared-memory support: put --data_dir on a "
        "local disk",
        path_, mode));
  }
  if (absl::Status s = Exec(SyncPragma(options.sync)); !s.ok()) return s;
  if (absl::Status s = Exec("PRAGMA foreign_keys = ON"); !s.ok()) return s;
  if (absl::Status s = Migrate(migrate); !s.ok()) return s;
  return PrepareAll();
}

absl::Status SqliteStore::Migrate(bool migrate) {
  // IMMEDIATE takes the write lock now (waiting up to busy_timeout for a
  // running server's transaction), and the user_version write below runs on
  // every start: a data dir that cannot be written fails here, at startup,
  // not at the first state change.
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status status = MigrateSteps(migrate);
  if (!status.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  return Exec("COMMIT");
}

absl::Status SqliteStore::MigrateSteps(bool migrate) {
  absl::StatusOr<int64_t> app_id = PragmaInt("PRAGMA application_id");
  if (!app_id.ok()) return app_id.status();
  absl::StatusOr<int64_t> version = PragmaInt("PRAGMA user_version");
  if (!version.ok()) return version.status();
  absl::StatusOr<int64_t> objects =
      PragmaInt("SELECT count(*) FROM sqlite_schema");
  if (!objects.ok()) return objects.status();
  const bool ours = *app_id == kApplicationId ||
                    (*app_id == 0 && *version == 0 && *objects == 0);
  if (!ours) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is not a videogen SQLite database (application_id %d, "
        "user_version %d); move it away or point --data_dir elsewhere",
        path_, *app_id, *version));
  }
  if (*version > kNumMigrations) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "database %s has schema version %d, newer than this videogen "
        "knows (%d); run a newer videogen or point --data_dir elsewhere",
        path_, *version, kNumMigrations));
  }
  if (!migrate) {
    // Beside a running server: its schema must be ours exactly. Migrating
    // under it could break a server that runs an older binary.
    if (*version == kNumMigrations) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrFormat(
        "database %s has schema version %d, older than this videogen's (%d), "
        "and a running videogen server holds its data dir; run `keys` with "
        "that server's own videogen-server binary, or stop the server and "
        "run this one again (it migrates the schema)",
        path_, *version, kNumMigrations));
  }
  for (int64_t v = *version; v < kNumMigrations; ++v) {
    absl::Status s = Exec(kMigrations[v].sql);
    if (s.ok() && kMigrations[v].after != nullptr) {
      const int rc = kMigrations[v].after(db_);
      if (rc != SQLITE_OK) s = Error(rc, "filling in new columns");
    }
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("schema migration ", v + 1,
                                                 ": ", s.message()));
    }
  }
  const std::string stamp =
      absl::StrFormat("PRAGMA application_id = %d; PRAGMA user_version = %d",
                      kApplicationId, kNumMigrations);
  return Exec(stamp.c_str());
}

absl::StatusOr<SqliteStore::Stmt> SqliteStore::Prepare(const std::string& sql) {
  Stmt stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return Error(rc, absl::StrCat("preparing `", sql, "`"));
  }
  return stmt;
}

namespace {

// The columns ReadRecord reads, in its order.
#define VG_RECORD_COLUMNS                                           \
  "id, body, deadline_ns, version, submit, submit_time_ns, owner, " \
  "lease_until_ns, webhook_status, create_time_ns, webhooks_gone"
#define VG_DELIVERY_COLUMNS                                     \
  "seq, generation_id, revision, tenant, url, body, attempts, " \
  "next_attempt_ns, created_ns, owner, lease_until_ns"
#define VG_KEY_COLUMNS                                                    \
  "key_id, key_hash, tenant, admin, max_concurrent, creates_per_minute, " \
  "video_seconds_budget, budget_period_ns, webhook_secret, created_ns, "  \
  "revoked_ns"

}  // namespace

std::vector<std::pair<SqliteStore::Stmt*, const char*>>
SqliteStore::StatementTable() {
  return {
      {&begin_, "BEGIN IMMEDIATE"},
      {&commit_, "COMMIT"},
      {&rollback_, "ROLLBACK"},
      {&get_, "SELECT " VG_RECORD_COLUMNS " FROM generations WHERE id = ?1"},
      {&get_by_request_,
       "SELECT " VG_RECORD_COLUMNS " FROM generations WHERE tenant = ?1 AND"
       " request_id = ?2"},
      {&count_active_,
       "SELECT count(*) FROM generations WHERE tenant = ?1 AND done = 0"},
      {&count_recent_,
       "SELECT count(*), min(create_time_ns) FROM generations"
       " WHERE tenant = ?1 AND create_time_ns > ?2"},
      {&sum_budget_,
       "SELECT coalesce(sum(duration_seconds), 0), min(create_time_ns)"
       " FROM generations"
       " WHERE tenant = ?1 AND create_time_ns > ?2 AND state != ?3"},
      {&insert_,
       "INSERT INTO generations (id, tenant, request_id, state, done,"
       " revision, version, create_time_ns, update_time_ns, deadline_ns,"
       " submit, submit_time_ns, owner, lease_until_ns, duration_seconds,"
       " body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,"
       " ?13, ?14, ?15, ?16)"},
      {&head_,
       "SELECT version, revision, owner, lease_until_ns, webhook_status"
       " FROM generations WHERE id = ?1"},
      {&update_,
       "UPDATE generations SET tenant = ?2, request_id = ?3, state = ?4,"
       " done = ?5, revision = ?6, version = ?7, create_time_ns = ?8,"
       " update_time_ns = ?9, deadline_ns = ?10, submit = ?11,"
       " submit_time_ns = ?12, owner = ?13, lease_until_ns = ?14,"
       " duration_seconds = ?15, body = ?16 WHERE id = ?1"},
      {&delete_labels_, "DELETE FROM generation_labels WHERE id = ?1"},
      {&insert_label_,
       "INSERT INTO generation_labels (id, key, value) VALUES (?1, ?2, ?3)"},
      // Nothing for a generation whose receiver said 410 (DropDeliveries).
      {&insert_delivery_,
       "INSERT INTO outbox (generation_id, revision, tenant, url, body,"
       " attempts, next_attempt_ns, created_ns) SELECT ?1, ?2, ?3, ?4, ?5,"
       " ?6, ?7, ?8 WHERE NOT EXISTS (SELECT 1 FROM generations WHERE"
       " id = ?1 AND webhooks_gone != 0)"},
      // Labels and deliveries go by ON DELETE CASCADE.
      {&delete_, "DELETE FROM generations WHERE id = ?1"},
      {&claim_active_,
       "UPDATE generations SET owner = ?1, lease_until_ns = ?3,"
       " version = version + 1 WHERE id IN (SELECT id FROM generations"
       " WHERE done = 0 AND (owner = '' OR owner = ?1 OR lease_until_ns <= ?2)"
       " ORDER BY create_time_ns, id LIMIT ?4) RETURNING " VG_RECORD_COLUMNS},
      {&renew_,
       "UPDATE generations SET lease_until_ns = ?3 WHERE done = 0 AND"
       " owner = ?1 AND lease_until_ns > ?2 RETURNING id"},
      {&purge_,
       "DELETE FROM generations WHERE done = 1 AND update_time_ns < ?1"
       " RETURNING id"},
      {&set_webhook_,
       "UPDATE generations SET webhook_status = ?2 WHERE id = ?1"},
      {&insert_key_, "INSERT INTO api_keys (" VG_KEY_COLUMNS
                     ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,"
                     " ?11)"},
      {&key_by_id_, "SELECT 1 FROM api_keys WHERE key_id = ?1"},
      {&key_by_hash_,
       "SELECT " VG_KEY_COLUMNS " FROM api_keys WHERE key_hash = ?1"},
      {&list_keys_,
       "SELECT " VG_KEY_COLUMNS " FROM api_keys ORDER BY created_ns, key_id"},
      {&revoke_key_,
       "UPDATE api_keys SET revoked_ns = coalesce(revoked_ns, ?2)"
       " WHERE key_id = ?1"},
      {&claim_deliveries_,
       "UPDATE outbox SET owner = ?1, lease_until_ns = ?3 WHERE seq IN"
       " (SELECT seq FROM outbox WHERE next_attempt_ns <= ?2 AND"
       " (owner = '' OR lease_until_ns <= ?2) ORDER BY seq LIMIT ?4)"
       " RETURNING " VG_DELIVERY_COLUMNS},
      {&finish_delivery_, "DELETE FROM outbox WHERE seq = ?1"},
      {&retry_delivery_,
       "UPDATE outbox SET attempts = ?2, next_attempt_ns = ?3, owner = '',"
       " lease_until_ns = -9223372036854775808 WHERE seq = ?1"},
      {&mark_webhooks_gone_,
       "UPDATE generations SET webhooks_gone = 1 WHERE id = ?1"},
      {&drop_deliveries_, "DELETE FROM outbox WHERE generation_id = ?1"},
      {&outbox_stats_, "SELECT count(*), min(created_ns) FROM outbox"},
      {&insert_sample_,
       "INSERT INTO duration_samples (model, duration_seconds, took_ns,"
       " completed_ns) VALUES (?1, ?2, ?3, ?4)"},
      {&trim_samples_,
       "DELETE FROM duration_samples WHERE seq IN (SELECT seq FROM"
       " duration_samples WHERE model = ?1 AND duration_seconds = ?2"
       " ORDER BY completed_ns DESC, seq DESC LIMIT -1 OFFSET ?3)"},
      {&recent_samples_,
       "SELECT model, duration_seconds, took_ns, completed_ns FROM"
       " duration_samples WHERE model = ?1 AND duration_seconds = ?2"
       " ORDER BY completed_ns DESC, seq DESC LIMIT ?3"},
  };
}

absl::Status SqliteStore::PrepareAll() {
  for (const auto& [slot, sql] : StatementTable()) {
    absl::StatusOr<Stmt> stmt = Prepare(sql);
    if (!stmt.ok()) return stmt.status();
    *slot = *stmt;
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::Exec(const char* sql) {
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return Error(rc, absl::StrCat("running `", sql, "`"));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SqliteStore::PragmaInt(const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql, -1, &stmt, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
  const int64_t value = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW) return Error(rc, absl::StrCat("running `", sql, "`"));
  return value;
}

absl::Status SqliteStore::Error(int rc, const std::string& doing) const {
  const std::string detail = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s is not a videogen SQLite database (%s); move it away or point "
          "--data_dir elsewhere",
          path_, detail));
    case SQLITE_CORRUPT:
      return absl::DataLossError(absl::StrFormat(
          "database %s is corrupt (%s) while %s; restore it from a backup, or "
          "move it away to start empty",
          path_, detail, doing));
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return absl::FailedPreconditionError(
          absl::StrFormat("database %s is not writable (%s) while %s; %s",
                          path_, detail, doing, WhatToDoUnwritable()));
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "disk full writing %s (%s); free space on the data dir's disk", path_,
          detail));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(absl::StrFormat(
          "database %s is locked (%s) while %s; stop the other process that "
          "uses it",
          path_, detail, doing));
    case SQLITE_IOERR:
      return absl::UnavailableError(
          absl::StrFormat("I/O error on %s (%s) while %s; check the disk",
                          path_, detail, doing));
    default:
      return absl::InternalError(
          absl::StrFormat("SQLite error on %s while %s: %s (code %d)", path_,
                          doing, detail, rc));
  }
}

namespace {

// Times in the columns migration 2 added: InfinitePast and InfiniteFuture
// map to INT64_MIN and INT64_MAX, so SQL compares them without NULL cases.
int64_t TimeToDb(absl::Time t) {
  if (t == absl::InfinitePast()) return std::numeric_limits<int64_t>::min();
  if (t == absl::InfiniteFuture()) return std::numeric_limits<int64_t>::max();
  return absl::ToUnixNanos(t);
}

absl::Time TimeFromDb(int64_t ns) {
  if (ns == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  if (ns == std::numeric_limits<int64_t>::max()) return absl::InfiniteFuture();
  return absl::FromUnixNanos(ns);
}

void BindBlob(sqlite3_stmt* stmt, int i, const std::string& s) {
  sqlite3_bind_blob(stmt, i, s.data(), static_cast<int>(s.size()),
                    SQLITE_STATIC);
}

std::string ColumnBlob(sqlite3_stmt* stmt, int i) {
  const void* p = sqlite3_column_blob(stmt, i);
  return p ? std::string(static_cast<const char*>(p),
                         sqlite3_column_bytes(stmt, i))
           : std::string();
}

// Reads the VG_RECORD_COLUMNS. A row whose body (or webhook status) does not
// parse is DATA_LOSS naming the id, never a crash.
absl::StatusOr<Record> ReadRecord(sqlite3_stmt* stmt, const std::string& path) {
  const std::string id(ColumnText(stmt, 0));
  Record record;
  const void* body = sqlite3_column_blob(stmt, 1);
  const int size = sqlite3_column_bytes(stmt, 1);
  bool ok = record.generation.ParseFromArray(body, size) &&
            record.generation.id() == id;
  if (ok && sqlite3_column_type(stmt, 8) != SQLITE_NULL) {
    ok = record.generation.mutable_webhook_status()->ParseFromArray(
        sqlite3_column_blob(stmt, 8), sqlite3_column_bytes(stmt, 8));
  }
  if (!ok) {
    return absl::DataLossError(absl::StrFormat(
        "generation %s in %s is corrupt (its stored body does not parse); "
        "delete that row or restore the database from a backup",
        id, path));
  }
  if (sqlite3_column_type(stmt, 2) != SQLITE_NULL) {
    record.deadline = absl::FromUnixNanos(sqlite3_column_int64(stmt, 2));
  }
  record.version = sqlite3_column_int64(stmt, 3);
  record.submit = static_cast<SubmitPhase>(sqlite3_column_int(stmt, 4));
  record.submit_time = TimeFromDb(sqlite3_column_int64(stmt, 5));
  record.owner = std::string(ColumnText(stmt, 6));
  record.lease_until = TimeFromDb(sqlite3_column_int64(stmt, 7));
  record.webhooks_gone = sqlite3_column_int(stmt, 10) != 0;
  return record;
}

// Reads the VG_DELIVERY_COLUMNS.
Delivery ReadDelivery(sqlite3_stmt* stmt) {
  Delivery d;
  d.seq = sqlite3_column_int64(stmt, 0);
  d.generation_id = std::string(ColumnText(stmt, 1));
  d.revision = sqlite3_column_int64(stmt, 2);
  d.tenant = std::string(ColumnText(stmt, 3));
  d.url = std::string(ColumnText(stmt, 4));
  d.body = std::string(ColumnText(stmt, 5));
  d.attempts = sqlite3_column_int(stmt, 6);
  d.next_attempt = TimeFromDb(sqlite3_column_int64(stmt, 7));
  d.created = TimeFromDb(sqlite3_column_int64(stmt, 8));
  d.owner = std::string(ColumnText(stmt, 9));
  d.lease_until = TimeFromDb(sqlite3_column_int64(stmt, 10));
  return d;
}

// Reads the VG_KEY_COLUMNS.
ApiKey ReadKey(sqlite3_stmt* stmt) {
  ApiKey k;
  k.key_id = std::string(ColumnText(stmt, 0));
  k.key_hash = std::string(ColumnText(stmt, 1));
  k.tenant = std::string(ColumnText(stmt, 2));
  k.admin = sqlite3_column_int(stmt, 3) != 0;
  k.limits.max_concurrent = sqlite3_column_int64(stmt, 4);
  k.limits.creates_per_minute = sqlite3_column_int64(stmt, 5);
  k.limits.video_seconds_budget = sqlite3_column_int64(stmt, 6);
  k.limits.budget_period = absl::Nanoseconds(sqlite3_column_int64(stmt, 7));
  k.webhook_secret = std::string(ColumnText(stmt, 8));
  k.created = TimeFromDb(sqlite3_column_int64(stmt, 9));
  if (sqlite3_column_type(stmt, 10) != SQLITE_NULL) {
    k.revoked = TimeFromDb(sqlite3_column_int64(stmt, 10));
  }
  return k;
}

bool CreatedBefore(const Record& a, const Record& b) {
  return internal::NewerThan(
      internal::CreateTime(b.generation), b.generation.id(),
      internal::CreateTime(a.generation), a.generation.id());
}

int BackfillV2(sqlite3* db) {
  sqlite3_stmt* read = nullptr;
  sqlite3_stmt* write = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT id, body FROM generations", -1, &read,
                              nullptr);
  if (rc == SQLITE_OK) {
    rc = sqlite3_prepare_v2(db,
                            "UPDATE generations SET revision = ?2,"
                            " duration_seconds = ?3, tenant = ?4 WHERE id = ?1",
                            -1, &write, nullptr);
  }
  while (rc == SQLITE_OK && (rc = sqlite3_step(read)) == SQLITE_ROW) {
    v1::Generation g;
    // A body that does not parse stays as it is: reading it reports
    // DATA_LOSS naming the row, as before the migration.
    if (!g.ParseFromArray(sqlite3_column_blob(read, 1),
                          sqlite3_column_bytes(read, 1))) {
      rc = SQLITE_OK;
      continue;
    }
    BindText(write, 1, ColumnText(read, 0));
    sqlite3_bind_int64(write, 2, g.revision());
    sqlite3_bind_int64(write, 3, g.request().duration_seconds());
    BindText(write, 4, g.tenant());
    rc = sqlite3_step(write);
    sqlite3_reset(write);
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  sqlite3_finalize(read);
  sqlite3_finalize(write);
  return rc;
}

}  // namespace

absl::Status SqliteStore::StepDone(Stmt stmt, const std::string& doing) {
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_DONE) return Error(rc, doing);
  return absl::OkStatus();
}

absl::Status SqliteStore::Write(const std::function<absl::Status()>& body) {
  {
    ResetOnExit reset(begin_);
    const int rc = sqlite3_step(begin_);
    if (rc != SQLITE_DONE) return Error(rc, "starting a write");
  }
  absl::Status status = body();
  {
    Stmt end = status.ok() ? commit_ : rollback_;
    ResetOnExit reset(end);
    const int rc = sqlite3_step(end);
    if (rc != SQLITE_DONE && status.ok()) status = Error(rc, "committing");
  }
  // Never leave a transaction open for the next call to trip over.
  if (sqlite3_get_autocommit(db_) == 0) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  return status;
}

void SqliteStore::Announce(const v1::Generation& g,
                           const std::string* webhook_status) {
  if (!publisher_.HasListener()) return;
  auto copy = std::make_shared<v1::Generation>(g);
  copy->clear_webhook_status();
  if (webhook_status != nullptr) {
    copy->mutable_webhook_status()->ParseFromString(*webhook_status);
  }
  Change change;
  change.id = g.id();
  change.revision = g.revision();
  change.tenant = g.tenant();
  change.generation = std::move(copy);
  publisher_.Enqueue(std::move(change));
}

absl::Status SqliteStore::BindRow(Stmt stmt, const Record& record,
                                  int64_t version, const std::string& body) {
  const v1::Generation& g = record.generation;
  BindText(stmt, 1, g.id());
  BindText(stmt, 2, g.tenant());
  if (g.request().request_id().empty()) {
    sqlite3_bind_null(stmt, 3);  // NULLs never clash in UNIQUE
  } else {
    BindText(stmt, 3, g.request().request_id());
  }
  sqlite3_bind_int(stmt, 4, g.state());
  sqlite3_bind_int(stmt, 5, g.done() ? 1 : 0);
  sqlite3_bind_int64(stmt, 6, g.revision());
  sqlite3_bind_int64(stmt, 7, version);
  sqlite3_bind_int64(stmt, 8, Nanos(g.create_time()));
  sqlite3_bind_int64(stmt, 9, Nanos(g.update_time()));
  if (record.deadline == absl::InfiniteFuture()) {
    sqlite3_bind_null(stmt, 10);
  } else {
    sqlite3_bind_int64(stmt, 10, Nanos(record.deadline));
  }
  sqlite3_bind_int(stmt, 11, static_cast<int>(record.submit));
  sqlite3_bind_int64(stmt, 12, TimeToDb(record.submit_time));
  BindText(stmt, 13, record.owner);
  sqlite3_bind_int64(stmt, 14, TimeToDb(record.lease_until));
  sqlite3_bind_int64(stmt, 15, g.request().duration_seconds());
  BindBlob(stmt, 16, body);
  return StepDone(stmt, absl::StrCat("writing generation ", g.id()));
}

absl::Status SqliteStore::WriteLabels(const v1::Generation& g) {
  {
    ResetOnExit reset(delete_labels_);
    BindText(delete_labels_, 1, g.id());
    if (absl::Status s = StepDone(delete_labels_, "replacing labels");
        !s.ok()) {
      return s;
    }
  }
  for (const auto& [key, value] : g.labels()) {
    ResetOnExit reset(insert_label_);
    BindText(insert_label_, 1, g.id());
    BindText(insert_label_, 2, key);
    BindText(insert_label_, 3, value);
    if (absl::Status s = StepDone(insert_label_, "writing labels"); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::AppendDeliveries(
    const std::vector<Delivery>& outbox) {
  const absl::Time now = absl::Now();
  for (const Delivery& d : outbox) {
    ResetOnExit reset(insert_delivery_);
    BindText(insert_delivery_, 1, d.generation_id);
    sqlite3_bind_int64(insert_delivery_, 2, d.revision);
    BindText(insert_delivery_, 3, d.tenant);
    BindText(insert_delivery_, 4, d.url);
    BindText(insert_delivery_, 5, d.body);
    sqlite3_bind_int(insert_delivery_, 6, d.attempts);
    sqlite3_bind_int64(insert_delivery_, 7, TimeToDb(d.next_attempt));
    sqlite3_bind_int64(
        insert_delivery_, 8,
        TimeToDb(d.created == absl::InfinitePast() ? now : d.created));
    if (absl::Status s = StepDone(insert_delivery_, "queueing a webhook");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::Admit(const Record& record,
                                const Admission& admission) {
  const std::string& tenant = record.generation.tenant();
  const absl::Time now = internal::CreateTime(record.generation);
  if (admission.max_concurrent > 0) {
    ResetOnExit reset(count_active_);
    BindText(count_active_, 1, tenant);
    const int rc = sqlite3_step(count_active_);
    if (rc != SQLITE_ROW) return Error(rc, "counting active generations");
    const int64_t active = sqlite3_column_int64(count_active_, 0);
    if (active >= admission.max_concurrent) {
      return internal::MaxConcurrentExceeded(tenant, admission.max_concurrent,
                                             active);
    }
  }
  if (admission.creates_per_minute > 0) {
    ResetOnExit reset(count_recent_);
    BindText(count_recent_, 1, tenant);
    sqlite3_bind_int64(count_recent_, 2, Nanos(now - absl::Seconds(60)));
    const int rc = sqlite3_step(count_recent_);
    if (rc != SQLITE_ROW) return Error(rc, "counting recent creates");
    const int64_t recent = sqlite3_column_int64(count_recent_, 0);
    if (recent >= admission.creates_per_minute) {
      return internal::CreatesPerMinuteExceeded(
          tenant, admission.creates_per_minute, recent,
          absl::FromUnixNanos(sqlite3_column_int64(count_recent_, 1)), now);
    }
  }
  if (admission.video_seconds_budget > 0) {
    ResetOnExit reset(sum_budget_);
    BindText(sum_budget_, 1, tenant);
    sqlite3_bind_int64(sum_budget_, 2, Nanos(now - admission.budget_period));
    sqlite3_bind_int(sum_budget_, 3, v1::Generation::STATE_FAILED);
    const int rc = sqlite3_step(sum_budget_);
    if (rc != SQLITE_ROW) return Error(rc, "summing video seconds");
    const int64_t used = sqlite3_column_int64(sum_budget_, 0);
    const int64_t wanted = record.generation.request().duration_seconds();
    if (used + wanted > admission.video_seconds_budget) {
      return internal::BudgetExceeded(
          tenant, admission.video_seconds_budget, admission.budget_period, used,
          wanted, absl::FromUnixNanos(sqlite3_column_int64(sum_budget_, 1)));
    }
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::Insert(const Record& record,
                                 const Admission& admission,
                                 std::optional<Record>* existing) {
  const v1::Generation& g = record.generation;
  if (g.id().empty()) {
    return absl::InvalidArgumentError("Insert: generation id is empty");
  }
  v1::Generation scratch;
  std::string body;
  if (!internal::WithoutWebhookStatus(g, &scratch).SerializeToString(&body)) {
    return absl::InternalError(
        absl::StrCat("generation ", g.id(), " does not serialize"));
  }
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    status = Write([&]() -> absl::Status {
      // The request_id first: a retried create joins its generation even
      // when the tenant is at a limit.
      const std::string& rid = g.request().request_id();
      if (!rid.empty()) {
        ResetOnExit reset(get_by_request_);
        BindText(get_by_request_, 1, g.tenant());
        BindText(get_by_request_, 2, rid);
        absl::StatusOr<std::optional<Record>> taken = GetOne(get_by_request_);
        if (!taken.ok()) return taken.status();
        if (taken->has_value()) {
          const std::string owner_id = (*taken)->generation.id();
          if (existing != nullptr) *existing = std::move(*taken);
          return absl::AlreadyExistsError(
              absl::StrCat("request_id \"", rid,
                           "\" already belongs to generation ", owner_id));
        }
      }
      {
        ResetOnExit reset(get_);
        BindText(get_, 1, g.id());
        absl::StatusOr<std::optional<Record>> taken = GetOne(get_);
        if (!taken.ok()) return taken.status();
        if (taken->has_value()) {
          if (existing != nullptr) *existing = std::move(*taken);
          return absl::AlreadyExistsError(
              absl::StrCat("generation ", g.id(), " already exists"));
        }
      }
      if (absl::Status s = Admit(record, admission); !s.ok()) return s;
      {
        ResetOnExit reset(insert_);
        if (absl::Status s = BindRow(insert_, record, 1, body); !s.ok()) {
          return s;
        }
      }
      return WriteLabels(g);
    });
    if (status.ok() && g.revision() > 0) Announce(g, nullptr);
  }
  publisher_.Flush();
  return status;
}

absl::Status SqliteStore::Update(const Record& record,
                                 const std::vector<Delivery>& outbox) {
  const v1::Generation& g = record.generation;
  v1::Generation scratch;
  std::string body;
  if (!internal::WithoutWebhookStatus(g, &scratch).SerializeToString(&body)) {
    return absl::InternalError(
        absl::StrCat("generation ", g.id(), " does not serialize"));
  }
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    int64_t old_revision = 0;
    std::optional<std::string> webhook;
    status = Write([&]() -> absl::Status {
      Record row = record;
      {
        ResetOnExit reset(head_);
        BindText(head_, 1, g.id());
        const int rc = sqlite3_step(head_);
        if (rc == SQLITE_DONE) {
          return absl::NotFoundError(
              absl::StrCat("generation ", g.id(), " is gone"));
        }
        if (rc != SQLITE_ROW) return Error(rc, "reading a version");
        const int64_t stored = sqlite3_column_int64(head_, 0);
        if (stored != record.version - 1) {
          return absl::AbortedError(absl::StrCat(
              "generation ", g.id(), " is at version ", stored, ", not ",
              record.version - 1, "; re-read it and retry"));
        }
        old_revision = sqlite3_column_int64(head_, 1);
        // A lease renewed since the caller read the record is not
        // shortened by the caller's older copy (RenewLeases does not bump
        // the version).
        if (ColumnText(head_, 2) == record.owner) {
          row.lease_until = std::max(
              row.lease_until, TimeFromDb(sqlite3_column_int64(head_, 3)));
        }
        if (sqlite3_column_type(head_, 4) != SQLITE_NULL) {
          webhook = ColumnBlob(head_, 4);
        }
      }
      {
        ResetOnExit reset(update_);
        if (absl::Status s = BindRow(update_, row, record.version, body);
            !s.ok()) {
          return s;
        }
      }
      if (absl::Status s = WriteLabels(g); !s.ok()) return s;
      return AppendDeliveries(outbox);
    });
    if (status.ok() && g.revision() > old_revision) {
      Announce(g, webhook ? &*webhook : nullptr);
    }
  }
  publisher_.Flush();
  return status;
}

absl::Status SqliteStore::Delete(std::string_view id, int64_t version) {
  absl::MutexLock lock(&mu_);
  return Write([&]() -> absl::Status {
    {
      ResetOnExit reset(head_);
      BindText(head_, 1, id);
      const int rc = sqlite3_step(head_);
      if (rc == SQLITE_DONE) return absl::OkStatus();
      if (rc != SQLITE_ROW) return Error(rc, "reading a version");
      const int64_t stored = sqlite3_column_int64(head_, 0);
      if (stored != version) {
        return absl::AbortedError(
            absl::StrCat("generation ", std::string(id), " is at version ",
                         stored, ", not ", version, "; not deleted"));
      }
    }
    ResetOnExit reset(delete_);
    BindText(delete_, 1, id);
    return StepDone(delete_,
                    absl::StrCat("deleting generation ", std::string(id)));
  });
}

absl::StatusOr<std::optional<Record>> SqliteStore::GetOne(Stmt stmt) {
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) return Error(rc, "reading a generation");
  absl::StatusOr<Record> record = ReadRecord(stmt, path_);
  if (!record.ok()) return record.status();
  return std::optional<Record>(std::move(*record));
}

absl::StatusOr<std::optional<Record>> SqliteStore::Get(std::string_view id) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(get_);
  BindText(get_, 1, id);
  return GetOne(get_);
}

absl::StatusOr<std::optional<Record>> SqliteStore::GetByRequestId(
    std::string_view tenant, std::string_view request_id) {
  if (request_id.empty()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(get_by_request_);
  BindText(get_by_request_, 1, tenant);
  BindText(get_by_request_, 2, request_id);
  return GetOne(get_by_request_);
}

absl::StatusOr<std::vector<Record>> SqliteStore::ClaimActive(
    std::string_view owner, absl::Time now, absl::Time until, int limit) {
  std::vector<Record> claimed;
  absl::MutexLock lock(&mu_);
  absl::Status status = Write([&]() -> absl::Status {
    claimed.clear();
    ResetOnExit reset(claim_active_);
    BindText(claim_active_, 1, owner);
    sqlite3_bind_int64(claim_active_, 2, TimeToDb(now));
    sqlite3_bind_int64(claim_active_, 3, TimeToDb(until));
    sqlite3_bind_int(claim_active_, 4, limit);
    int rc;
    while ((rc = sqlite3_step(claim_active_)) == SQLITE_ROW) {
      absl::StatusOr<Record> record = ReadRecord(claim_active_, path_);
      if (!record.ok()) return record.status();
      claimed.push_back(std::move(*record));
    }
    if (rc != SQLITE_DONE) return Error(rc, "claiming generations");
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  // RETURNING comes in no particular order.
  std::sort(claimed.begin(), claimed.end(), CreatedBefore);
  return claimed;
}

absl::StatusOr<std::vector<std::string>> SqliteStore::RenewLeases(
    std::string_view owner, absl::Time now, absl::Time until) {
  std::vector<std::string> held;
  absl::MutexLock lock(&mu_);
  absl::Status status = Write([&]() -> absl::Status {
    held.clear();
    ResetOnExit reset(renew_);
    BindText(renew_, 1, owner);
    sqlite3_bind_int64(renew_, 2, TimeToDb(now));
    sqlite3_bind_int64(renew_, 3, TimeToDb(until));
    int rc;
    while ((rc = sqlite3_step(renew_)) == SQLITE_ROW) {
      held.emplace_back(ColumnText(renew_, 0));
    }
    if (rc != SQLITE_DONE) return Error(rc, "renewing leases");
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return held;
}

absl::StatusOr<SqliteStore::Stmt> SqliteStore::ListStmt(
    const ListQuery& query) {
  std::string sql =
      "SELECT " VG_RECORD_COLUMNS " FROM generations AS g WHERE 1";
  if (!query.tenant.empty()) absl::StrAppend(&sql, " AND tenant = ?");
  if (!query.states.empty()) {
    std::string marks;
    for (size_t i = 0; i < query.states.size(); ++i) {
      absl::StrAppend(&marks, i == 0 ? "?" : ", ?");
    }
    absl::StrAppend(&sql, " AND state IN (", marks, ")");
  }
  if (query.after.has_value()) {
    // Row-value order (create_time_ns, id) < cursor, written so the index
    // range on create_time_ns is used.
    absl::StrAppend(&sql,
                    " AND create_time_ns <= ? AND (create_time_ns < ? OR id <"
                    " ?)");
  }
  for (size_t i = 0; i < query.labels.size(); ++i) {
    absl::StrAppend(&sql,
                    " AND EXISTS (SELECT 1 FROM generation_labels AS l WHERE"
                    " l.id = g.id AND l.key = ? AND l.value = ?)");
  }
  absl::StrAppend(&sql, " ORDER BY create_time_ns DESC, id DESC LIMIT ?");
  auto it = list_.find(sql);
  if (it != list_.end()) return it->second;
  // Few shapes occur in practice; the bound keeps odd callers from growing
  // the cache without limit.
  if (list_.size() >= 64) {
    for (auto& [text, s] : list_) sqlite3_finalize(s);
    list_.clear();
  }
  absl::StatusOr<Stmt> stmt = Prepare(sql);
  if (!stmt.ok()) return stmt.status();
  list_.emplace(std::move(sql), *stmt);
  return *stmt;
}

absl::StatusOr<ListPage> SqliteStore::List(const ListQuery& query) {
  if (query.page_size <= 0) return internal::BadPageSize(query.page_size);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Stmt> prepared = ListStmt(query);
  if (!prepared.ok()) return prepared.status();
  Stmt stmt = *prepared;
  ResetOnExit reset(stmt);
  int i = 1;
  if (!query.tenant.empty()) BindText(stmt, i++, query.tenant);
  for (v1::Generation::State state : query.states) {
    sqlite3_bind_int(stmt, i++, state);
  }
  if (query.after.has_value()) {
    const int64_t t = Nanos(query.after->create_time);
    sqlite3_bind_int64(stmt, i++, t);
    sqlite3_bind_int64(stmt, i++, t);
    BindText(stmt, i++, query.after->id);
  }
  for (const auto& [key, value] : query.labels) {
    BindText(stmt, i++, key);
    BindText(stmt, i++, value);
  }
  // One extra row tells whether another page may follow.
  sqlite3_bind_int64(stmt, i++, int64_t{query.page_size} + 1);

  ListPage page;
  int64_t last_time = 0;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    if (static_cast<int>(page.generations.size()) == query.page_size) {
      page.next =
          Cursor{absl::FromUnixNanos(last_time), page.generations.back().id()};
      break;
    }
    absl::StatusOr<Record> record = ReadRecord(stmt, path_);
    if (!record.ok()) return record.status();
    last_time = sqlite3_column_int64(stmt, 9);
    page.generations.push_back(std::move(record->generation));
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return Error(rc, "listing generations");
  }
  return page;
}

absl::StatusOr<std::vector<std::string>> SqliteStore::PurgeTerminalBefore(
    absl::Time cutoff) {
  std::vector<std::string> purged;
  absl::MutexLock lock(&mu_);
  absl::Status status = Write([&]() -> absl::Status {
    purged.clear();
    ResetOnExit reset(purge_);
    sqlite3_bind_int64(purge_, 1, Nanos(cutoff));
    int rc;
    while ((rc = sqlite3_step(purge_)) == SQLITE_ROW) {
      purged.emplace_back(ColumnText(purge_, 0));
    }
    if (rc != SQLITE_DONE) return Error(rc, "purging old generations");
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return purged;
}

absl::Status SqliteStore::SetWebhookStatus(std::string_view id,
                                           const v1::WebhookStatus& status) {
  const std::string blob = status.SerializeAsString();
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(set_webhook_);
  BindText(set_webhook_, 1, id);
  BindBlob(set_webhook_, 2, blob);
  if (absl::Status s = StepDone(set_webhook_, "recording a webhook status");
      !s.ok()) {
    return s;
  }
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(
        absl::StrCat("generation ", std::string(id), " is gone"));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::CheckIntegrity() {
  absl::MutexLock lock(&mu_);
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_, "PRAGMA quick_check(5)", -1, &stmt, nullptr);
  std::vector<std::string> problems;
  while (rc == SQLITE_OK || rc == SQLITE_ROW) {
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) break;
    std::string line(ColumnText(stmt, 0));
    if (line != "ok") problems.push_back(std::move(line));
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return Error(rc, "checking its integrity");
  if (problems.empty()) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "database %s is damaged (PRAGMA quick_check: %s); stop here so no paid "
      "job is lost: restore it from a backup, or move it away to start empty",
      path_, absl::StrJoin(problems, "; ")));
}

// ---- API keys ----

absl::Status SqliteStore::InsertKey(const ApiKey& key) {
  if (key.key_id.empty() || key.key_hash.empty()) {
    return absl::InvalidArgumentError("InsertKey: key_id and key_hash needed");
  }
  absl::MutexLock lock(&mu_);
  return Write([&]() -> absl::Status {
    {
      ResetOnExit reset(key_by_id_);
      BindText(key_by_id_, 1, key.key_id);
      const int rc = sqlite3_step(key_by_id_);
      if (rc == SQLITE_ROW) {
        return absl::AlreadyExistsError(
            absl::StrCat("key ", key.key_id, " already exists"));
      }
      if (rc != SQLITE_DONE) return Error(rc, "looking up a key");
    }
    {
      ResetOnExit reset(key_by_hash_);
      BindText(key_by_hash_, 1, key.key_hash);
      const int rc = sqlite3_step(key_by_hash_);
      if (rc == SQLITE_ROW) {
        return absl::AlreadyExistsError(
            absl::StrCat("a key with the same hash exists (",
                         std::string(ColumnText(key_by_hash_, 0)), ")"));
      }
      if (rc != SQLITE_DONE) return Error(rc, "looking up a key");
    }
    ResetOnExit reset(insert_key_);
    BindText(insert_key_, 1, key.key_id);
    BindText(insert_key_, 2, key.key_hash);
    BindText(insert_key_, 3, key.tenant);
    sqlite3_bind_int(insert_key_, 4, key.admin ? 1 : 0);
    sqlite3_bind_int64(insert_key_, 5, key.limits.max_concurrent);
    sqlite3_bind_int64(insert_key_, 6, key.limits.creates_per_minute);
    sqlite3_bind_int64(insert_key_, 7, key.limits.video_seconds_budget);
    sqlite3_bind_int64(insert_key_, 8,
                       absl::ToInt64Nanoseconds(key.limits.budget_period));
    BindText(insert_key_, 9, key.webhook_secret);
    sqlite3_bind_int64(insert_key_, 10, TimeToDb(key.created));
    if (key.revoked.has_value()) {
      sqlite3_bind_int64(insert_key_, 11, TimeToDb(*key.revoked));
    } else {
      sqlite3_bind_null(insert_key_, 11);
    }
    return StepDone(insert_key_, "writing a key");
  });
}

absl::StatusOr<std::optional<ApiKey>> SqliteStore::FindKeyByHash(
    std::string_view key_hash) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(key_by_hash_);
  BindText(key_by_hash_, 1, key_hash);
  const int rc = sqlite3_step(key_by_hash_);
  if (rc == SQLITE_DONE) return std::optional<ApiKey>();
  if (rc != SQLITE_ROW) return Error(rc, "looking up a key");
  return std::optional<ApiKey>(ReadKey(key_by_hash_));
}

absl::StatusOr<std::vector<ApiKey>> SqliteStore::ListKeys() {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(list_keys_);
  std::vector<ApiKey> keys;
  int rc;
  while ((rc = sqlite3_step(list_keys_)) == SQLITE_ROW) {
    keys.push_back(ReadKey(list_keys_));
  }
  if (rc != SQLITE_DONE) return Error(rc, "listing keys");
  return keys;
}

absl::Status SqliteStore::RevokeKey(std::string_view key_id, absl::Time when) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(revoke_key_);
  BindText(revoke_key_, 1, key_id);
  sqlite3_bind_int64(revoke_key_, 2, TimeToDb(when));
  if (absl::Status s = StepDone(revoke_key_, "revoking a key"); !s.ok()) {
    return s;
  }
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("no key ", std::string(key_id)));
  }
  return absl::OkStatus();
}

// ---- Webhook outbox ----

absl::StatusOr<std::vector<Delivery>> SqliteStore::ClaimDeliveries(
    std::string_view owner, absl::Time now, absl::Time until, int limit) {
  std::vector<Delivery> claimed;
  absl::MutexLock lock(&mu_);
  absl::Status status = Write([&]() -> absl::Status {
    claimed.clear();
    ResetOnExit reset(claim_deliveries_);
    BindText(claim_deliveries_, 1, owner);
    sqlite3_bind_int64(claim_deliveries_, 2, TimeToDb(now));
    sqlite3_bind_int64(claim_deliveries_, 3, TimeToDb(until));
    sqlite3_bind_int(claim_deliveries_, 4, limit);
    int rc;
    while ((rc = sqlite3_step(claim_deliveries_)) == SQLITE_ROW) {
      claimed.push_back(ReadDelivery(claim_deliveries_));
    }
    if (rc != SQLITE_DONE) return Error(rc, "claiming webhook deliveries");
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  std::sort(claimed.begin(), claimed.end(),
            [](const Delivery& a, const Delivery& b) { return a.seq < b.seq; });
  return claimed;
}

absl::Status SqliteStore::FinishDelivery(int64_t seq) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(finish_delivery_);
  sqlite3_bind_int64(finish_delivery_, 1, seq);
  return StepDone(finish_delivery_, "removing a webhook delivery");
}

absl::Status SqliteStore::RetryDelivery(int64_t seq, int attempts,
                                        absl::Time next_attempt) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(retry_delivery_);
  sqlite3_bind_int64(retry_delivery_, 1, seq);
  sqlite3_bind_int(retry_delivery_, 2, attempts);
  sqlite3_bind_int64(retry_delivery_, 3, TimeToDb(next_attempt));
  return StepDone(retry_delivery_, "rescheduling a webhook delivery");
}

absl::Status SqliteStore::DropDeliveries(std::string_view generation_id) {
  absl::MutexLock lock(&mu_);
  return Write([&]() -> absl::Status {
    {
      ResetOnExit reset(mark_webhooks_gone_);
      BindText(mark_webhooks_gone_, 1, generation_id);
      if (absl::Status s =
              StepDone(mark_webhooks_gone_, "stopping a generation's webhooks");
          !s.ok()) {
        return s;
      }
    }
    ResetOnExit reset(drop_deliveries_);
    BindText(drop_deliveries_, 1, generation_id);
    return StepDone(drop_deliveries_, "dropping webhook deliveries");
  });
}

absl::StatusOr<std::pair<int64_t, absl::Time>> SqliteStore::OutboxStats() {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(outbox_stats_);
  const int rc = sqlite3_step(outbox_stats_);
  if (rc != SQLITE_ROW) return Error(rc, "counting webhook deliveries");
  const int64_t count = sqlite3_column_int64(outbox_stats_, 0);
  const absl::Time oldest =
      count == 0 ? absl::InfinitePast()
                 : TimeFromDb(sqlite3_column_int64(outbox_stats_, 1));
  return std::make_pair(count, oldest);
}

// ---- Estimator samples ----

absl::Status SqliteStore::AddSample(const DurationSample& sample) {
  absl::MutexLock lock(&mu_);
  return Write([&]() -> absl::Status {
    {
      ResetOnExit reset(insert_sample_);
      BindText(insert_sample_, 1, sample.model);
      sqlite3_bind_int(insert_sample_, 2, sample.duration_seconds);
      sqlite3_bind_int64(insert_sample_, 3,
                         absl::ToInt64Nanoseconds(sample.took));
      sqlite3_bind_int64(insert_sample_, 4, TimeToDb(sample.completed));
      if (absl::Status s = StepDone(insert_sample_, "writing a sample");
          !s.ok()) {
        return s;
      }
    }
    // Keep the table bounded: only the newest kSamplesKept per key stay.
    ResetOnExit reset(trim_samples_);
    BindText(trim_samples_, 1, sample.model);
    sqlite3_bind_int(trim_samples_, 2, sample.duration_seconds);
    sqlite3_bind_int(trim_samples_, 3, kSamplesKept);
    return StepDone(trim_samples_, "trimming old samples");
  });
}

absl::StatusOr<std::vector<DurationSample>> SqliteStore::RecentSamples(
    std::string_view model, int duration_seconds, int limit) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(recent_samples_);
  BindText(recent_samples_, 1, model);
  sqlite3_bind_int(recent_samples_, 2, duration_seconds);
  sqlite3_bind_int(recent_samples_, 3, limit);
  std::vector<DurationSample> out;
  int rc;
  while ((rc = sqlite3_step(recent_samples_)) == SQLITE_ROW) {
    DurationSample s;
    s.model = std::string(ColumnText(recent_samples_, 0));
    s.duration_seconds = sqlite3_column_int(recent_samples_, 1);
    s.took = absl::Nanoseconds(sqlite3_column_int64(recent_samples_, 2));
    s.completed = TimeFromDb(sqlite3_column_int64(recent_samples_, 3));
    out.push_back(std::move(s));
  }
  if (rc != SQLITE_DONE) return Error(rc, "reading samples");
  return out;
}

absl::StatusOr<std::string> SqliteStore::JournalMode() {
  absl::MutexLock lock(&mu_);
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_, "PRAGMA journal_mode", -1, &stmt, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
  std::string mode = rc == SQLITE_ROW ? std::string(ColumnText(stmt, 0)) : "";
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW) return Error(rc, "reading journal_mode");
  return mode;
}

}  // namespace videogen::store
