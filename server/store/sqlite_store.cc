#include "server/store/sqlite_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"

namespace videogen::store {
namespace {

// "vgn1": marks the file as ours, so a foreign SQLite file is refused.
constexpr int32_t kApplicationId = 0x76676e31;

// Schema migrations, applied in order; user_version = how many ran. Never
// edit a released step: append a new one.
const char* const kMigrations[] = {
    // 1: generations, keyed by id. body is the serialized v1::Generation; the
    // other columns are copies of its fields, for the indexes. Times are Unix
    // nanoseconds so the order matches the Timestamps exactly.
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
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "data dir %s is in use by another videogen server (%s is locked); "
          "stop that server or pass another --data_dir",
          data_dir, lock_path));
    }
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot lock %s: %s; %s", lock_path, std::strerror(err),
                        WhatToDoUnwritable()));
  }
  std::unique_ptr<SqliteStore> store(
      new SqliteStore(data_dir + "/videogen.db", fd));
  if (absl::Status s = store->Init(options); !s.ok()) return s;
  return store;
}

SqliteStore::SqliteStore(std::string path, int lock_fd)
    : path_(std::move(path)), lock_fd_(lock_fd) {}

SqliteStore::~SqliteStore() {
  {
    absl::MutexLock lock(&mu_);
    for (Stmt s : {begin_, commit_, rollback_, request_owner_, upsert_,
                   delete_labels_, insert_label_, delete_, get_,
                   get_by_request_, load_active_, purge_}) {
      sqlite3_finalize(s);  // no-op on nullptr
    }
    for (auto& [sql, s] : list_) sqlite3_finalize(s);
    sqlite3_close(db_);  // checkpoints and removes the WAL
    db_ = nullptr;
  }
  ::close(lock_fd_);  // releases the flock
}

absl::Status SqliteStore::Init(const SqliteOptions& options) {
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
  if (absl::Status s = Migrate(); !s.ok()) return s;
  return PrepareAll();
}

absl::Status SqliteStore::Migrate() {
  // IMMEDIATE takes the write lock now, and the user_version write below
  // runs on every start: a data dir that cannot be written fails here, at
  // startup, not at the first state change.
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status status = MigrateSteps();
  if (!status.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  return Exec("COMMIT");
}

absl::Status SqliteStore::MigrateSteps() {
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
  for (int64_t v = *version; v < kNumMigrations; ++v) {
    if (absl::Status s = Exec(kMigrations[v]); !s.ok()) {
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

absl::Status SqliteStore::PrepareAll() {
  const std::pair<Stmt*, const char*> all[] = {
      {&begin_, "BEGIN IMMEDIATE"},
      {&commit_, "COMMIT"},
      {&rollback_, "ROLLBACK"},
      {&request_owner_, "SELECT id FROM generations WHERE request_id = ?1"},
      {&upsert_,
       "INSERT INTO generations (id, request_id, state, done, create_time_ns,"
       " update_time_ns, deadline_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
       " ?7, ?8) ON CONFLICT (id) DO UPDATE SET request_id = "
       "excluded.request_id, state = excluded.state, done = excluded.done,"
       " create_time_ns = excluded.create_time_ns, update_time_ns = "
       "excluded.update_time_ns, deadline_ns = excluded.deadline_ns, body = "
       "excluded.body"},
      {&delete_labels_, "DELETE FROM generation_labels WHERE id = ?1"},
      {&insert_label_,
       "INSERT INTO generation_labels (id, key, value) VALUES (?1, ?2, ?3)"},
      {&delete_, "DELETE FROM generations WHERE id = ?1"},
      {&get_, "SELECT id, body, deadline_ns FROM generations WHERE id = ?1"},
      {&get_by_request_,
       "SELECT id, body, deadline_ns FROM generations WHERE request_id = ?1"},
      {&load_active_,
       "SELECT id, body, deadline_ns FROM generations WHERE done = 0"
       " ORDER BY create_time_ns, id"},
      {&purge_,
       "DELETE FROM generations WHERE done = 1 AND update_time_ns < ?1"},
  };
  for (const auto& [slot, sql] : all) {
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

absl::Status SqliteStore::Put(const Record& record) {
  const v1::Generation& g = record.generation;
  if (g.id().empty()) {
    return absl::InvalidArgumentError("Put: generation id is empty");
  }
  absl::MutexLock lock(&mu_);
  {
    ResetOnExit reset(begin_);
    int rc = sqlite3_step(begin_);
    if (rc != SQLITE_DONE) return Error(rc, "starting a write");
  }
  absl::Status status = PutLocked(record);
  {
    Stmt end = status.ok() ? commit_ : rollback_;
    ResetOnExit reset(end);
    int rc = sqlite3_step(end);
    if (rc != SQLITE_DONE && status.ok()) {
      status = Error(rc, absl::StrCat("committing generation ", g.id()));
    }
  }
  // Never leave a transaction open for the next call to trip over.
  if (sqlite3_get_autocommit(db_) == 0) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  return status;
}

absl::Status SqliteStore::PutLocked(const Record& record) {
  const v1::Generation& g = record.generation;
  const std::string& request_id = g.request().request_id();
  if (!request_id.empty()) {
    ResetOnExit reset(request_owner_);
    BindText(request_owner_, 1, request_id);
    int rc = sqlite3_step(request_owner_);
    if (rc == SQLITE_ROW && ColumnText(request_owner_, 0) != g.id()) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "request_id %s already belongs to generation %s; use a new "
          "request_id for a new generation",
          request_id, std::string(ColumnText(request_owner_, 0))));
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      return Error(rc, "looking up a request_id");
    }
  }
  std::string body;
  if (!g.SerializeToString(&body)) {
    return absl::InternalError(
        absl::StrCat("generation ", g.id(), " does not serialize"));
  }
  {
    ResetOnExit reset(upsert_);
    BindText(upsert_, 1, g.id());
    if (request_id.empty()) {
      sqlite3_bind_null(upsert_, 2);
    } else {
      BindText(upsert_, 2, request_id);
    }
    sqlite3_bind_int(upsert_, 3, g.state());
    sqlite3_bind_int(upsert_, 4, g.done() ? 1 : 0);
    sqlite3_bind_int64(upsert_, 5, Nanos(g.create_time()));
    sqlite3_bind_int64(upsert_, 6, Nanos(g.update_time()));
    if (record.deadline == absl::InfiniteFuture()) {
      sqlite3_bind_null(upsert_, 7);
    } else {
      sqlite3_bind_int64(upsert_, 7, Nanos(record.deadline));
    }
    sqlite3_bind_blob(upsert_, 8, body.data(), static_cast<int>(body.size()),
                      SQLITE_STATIC);
    int rc = sqlite3_step(upsert_);
    if (rc != SQLITE_DONE) {
      return Error(rc, absl::StrCat("writing generation ", g.id()));
    }
  }
  {
    ResetOnExit reset(delete_labels_);
    BindText(delete_labels_, 1, g.id());
    int rc = sqlite3_step(delete_labels_);
    if (rc != SQLITE_DONE) return Error(rc, "replacing labels");
  }
  for (const auto& [key, value] : g.labels()) {
    ResetOnExit reset(insert_label_);
    BindText(insert_label_, 1, g.id());
    BindText(insert_label_, 2, key);
    BindText(insert_label_, 3, value);
    int rc = sqlite3_step(insert_label_);
    if (rc != SQLITE_DONE) return Error(rc, "writing labels");
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::Delete(std::string_view id) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(delete_);
  BindText(delete_, 1, id);
  int rc = sqlite3_step(delete_);  // labels go by ON DELETE CASCADE
  if (rc != SQLITE_DONE) {
    return Error(rc, absl::StrCat("deleting generation ", std::string(id)));
  }
  return absl::OkStatus();
}

namespace {

// Reads (id, body, deadline_ns) at columns 0..2. A row whose body does not
// parse is DATA_LOSS naming the id, never a crash.
absl::StatusOr<Record> ReadRecord(sqlite3_stmt* stmt, const std::string& path) {
  const std::string id(ColumnText(stmt, 0));
  Record record;
  const void* body = sqlite3_column_blob(stmt, 1);
  const int size = sqlite3_column_bytes(stmt, 1);
  if (!record.generation.ParseFromArray(body, size) ||
      record.generation.id() != id) {
    return absl::DataLossError(absl::StrFormat(
        "generation %s in %s is corrupt (its stored body does not parse); "
        "delete that row or restore the database from a backup",
        id, path));
  }
  if (sqlite3_column_type(stmt, 2) != SQLITE_NULL) {
    record.deadline = absl::FromUnixNanos(sqlite3_column_int64(stmt, 2));
  }
  return record;
}

}  // namespace

absl::StatusOr<std::optional<Record>> SqliteStore::GetOne(Stmt stmt) {
  int rc = sqlite3_step(stmt);
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
    std::string_view request_id) {
  if (request_id.empty()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(get_by_request_);
  BindText(get_by_request_, 1, request_id);
  return GetOne(get_by_request_);
}

absl::StatusOr<std::vector<Record>> SqliteStore::LoadActive() {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(load_active_);
  std::vector<Record> out;
  int rc;
  while ((rc = sqlite3_step(load_active_)) == SQLITE_ROW) {
    absl::StatusOr<Record> record = ReadRecord(load_active_, path_);
    if (!record.ok()) return record.status();
    out.push_back(std::move(*record));
  }
  if (rc != SQLITE_DONE) return Error(rc, "loading active generations");
  return out;
}

absl::StatusOr<SqliteStore::Stmt> SqliteStore::ListStmt(
    const ListQuery& query) {
  std::string sql =
      "SELECT id, body, deadline_ns, create_time_ns FROM generations AS g"
      " WHERE 1";
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
  if (query.page_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("List: page_size must be > 0, got ", query.page_size));
  }
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Stmt> prepared = ListStmt(query);
  if (!prepared.ok()) return prepared.status();
  Stmt stmt = *prepared;
  ResetOnExit reset(stmt);
  int i = 1;
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
    last_time = sqlite3_column_int64(stmt, 3);
    page.generations.push_back(std::move(record->generation));
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return Error(rc, "listing generations");
  }
  return page;
}

absl::StatusOr<int64_t> SqliteStore::PurgeTerminalBefore(absl::Time cutoff) {
  absl::MutexLock lock(&mu_);
  ResetOnExit reset(purge_);
  sqlite3_bind_int64(purge_, 1, Nanos(cutoff));
  int rc = sqlite3_step(purge_);  // labels go by ON DELETE CASCADE
  if (rc != SQLITE_DONE) return Error(rc, "purging old generations");
  return static_cast<int64_t>(sqlite3_changes(db_));
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
