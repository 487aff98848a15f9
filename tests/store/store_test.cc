// Store tests for the in-process stores: the conformance suite
// (store_conformance.h) against MemoryStore and SqliteStore (real files),
// then SQLite-only tests: reopen, the v1 -> v2 migration, kill -9, integrity
// checks on a damaged file, and the startup errors for bad data dirs.
#include "server/store/store.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/store/memory_store.h"
#include "server/store/sqlite_store.h"
#include "tests/store/store_conformance.h"

namespace videogen::store {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using State = v1::Generation::State;

// A fresh directory under the test temp dir, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/store_test.XXXXXX";
    char* made = ::mkdtemp(tmpl.data());
    path_ = made ? made : "";
  }
  ~TempDir() {
    // Tests chmod directories read-only; make them removable again.
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    for (const auto& e : fs::recursive_directory_iterator(path_, ec)) {
      if (e.is_directory(ec)) {
        fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add,
                        ec);
      }
    }
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The conformance factories. Each SqliteStore gets its own directory; the
// directories are removed when the test program ends.
class ConformanceDirs : public ::testing::Environment {
 public:
  static std::string Make() {
    auto dir = std::make_unique<TempDir>();
    std::string path = dir->path();
    absl::MutexLock lock(&mu_);
    dirs_.push_back(std::move(dir));
    return path;
  }
  void TearDown() override {
    absl::MutexLock lock(&mu_);
    dirs_.clear();
  }

 private:
  static absl::Mutex mu_;
  static std::vector<std::unique_ptr<TempDir>> dirs_;
};
absl::Mutex ConformanceDirs::mu_;
std::vector<std::unique_ptr<TempDir>> ConformanceDirs::dirs_;
const ::testing::Environment* const kDirs =
    ::testing::AddGlobalTestEnvironment(new ConformanceDirs);

std::unique_ptr<Store> MakeMemoryStore() {
  return std::make_unique<MemoryStore>();
}

std::unique_ptr<Store> MakeSqliteStore() {
  absl::StatusOr<std::unique_ptr<SqliteStore>> s =
      SqliteStore::Open(ConformanceDirs::Make());
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return nullptr;
  return std::move(*s);
}

}  // namespace

VIDEOGEN_INSTANTIATE_STORE_CONFORMANCE(Memory, MakeMemoryStore);
VIDEOGEN_INSTANTIATE_STORE_CONFORMANCE(Sqlite, MakeSqliteStore);

namespace {

static_assert(MemoryStore::kSamplesKept == conformance::kSamplesKept);
static_assert(SqliteStore::kSamplesKept == conformance::kSamplesKept);

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t ns = absl::ToUnixNanos(t);
  ts.set_seconds(ns / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return ts;
}

const absl::Time kBase = absl::FromUnixSeconds(1'700'000'000);

bool Terminal(State s) {
  return s == v1::Generation::STATE_COMPLETED ||
         s == v1::Generation::STATE_FAILED ||
         s == v1::Generation::STATE_CANCELLED;
}

Record MakeRecord(const std::string& id, absl::Time created = kBase,
                  State state = v1::Generation::STATE_QUEUED,
                  const std::string& request_id = "") {
  Record r;
  v1::Generation& g = r.generation;
  g.set_id(id);
  g.set_state(state);
  g.set_revision(1);
  g.set_done(Terminal(state));
  g.mutable_request()->set_request_id(request_id);
  g.mutable_request()->set_prompt(std::string(200, 'p'));
  g.mutable_request()->set_duration_seconds(5);
  (*g.mutable_labels())["team"] = "video";
  *g.mutable_request()->mutable_labels() = g.labels();
  *g.mutable_create_time() = Ts(created + absl::Nanoseconds(123));
  *g.mutable_update_time() = Ts(created + absl::Seconds(1));
  r.deadline = created + absl::Minutes(30);
  return r;
}

::testing::AssertionResult SameGeneration(const v1::Generation& a,
                                          const v1::Generation& b) {
  std::string diff;
  google::protobuf::util::MessageDifferencer d;
  d.ReportDifferencesToString(&diff);
  if (d.Compare(a, b)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << diff;
}

absl::Status Ins(Store& s, const Record& r) {
  return s.Insert(r, Admission{}, nullptr);
}

std::unique_ptr<SqliteStore> MustOpen(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> s = SqliteStore::Open(dir);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// Runs SQL on the database file through a separate raw connection.
void RawExec(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

int64_t RawInt(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_open(db_path.c_str(), &db);
  sqlite3_stmt* stmt = nullptr;
  int64_t v = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    v = sqlite3_column_int64(stmt, 0);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return v;
}

// ---- Both in-process stores
// --------------------------------------------------

class LocalStores : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      store_ = MustOpen(dir_.path());
    } else {
      store_ = std::make_unique<MemoryStore>();
    }
    ASSERT_NE(store_, nullptr);
  }
  TempDir dir_;
  std::unique_ptr<Store> store_;
};

INSTANTIATE_TEST_SUITE_P(MemoryAndSqlite, LocalStores, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sqlite" : "Memory";
                         });

// RenewLeases does not bump the version, so the tracker's copy of a record
// has an older lease_until than the store; its next Update must not shorten
// the lease (another replica would think it expired). Not in the
// conformance suite: store.h does not promise it.
TEST_P(LocalStores, UpdateKeepsALeaseRenewedSinceTheRead) {
  ASSERT_TRUE(Ins(*store_, MakeRecord("g1")).ok());
  const absl::Time now = kBase + absl::Hours(1);
  std::vector<Record> claimed =
      store_->ClaimActive("A", now, now + absl::Seconds(30), 10).value();
  ASSERT_EQ(claimed.size(), 1u);
  ASSERT_THAT(
      store_->RenewLeases("A", now + absl::Seconds(20), now + absl::Seconds(50))
          .value(),
      ElementsAre("g1"));
  Record r = claimed[0];  // lease_until = now + 30s
  ++r.version;
  r.generation.set_revision(2);
  ASSERT_TRUE(store_->Update(r, {}).ok());
  EXPECT_EQ(store_->Get("g1").value()->lease_until, now + absl::Seconds(50));
  // Handing the lease to someone else (or releasing it) writes it as given.
  r = *store_->Get("g1").value();
  ++r.version;
  r.owner = "";
  r.lease_until = absl::InfinitePast();
  ASSERT_TRUE(store_->Update(r, {}).ok());
  EXPECT_EQ(store_->Get("g1").value()->lease_until, absl::InfinitePast());
}

// SetListener(nullptr) returns only once no listener call is running, so the
// listener's owner can be destroyed right after it.
TEST_P(LocalStores, SetListenerNullWaitsForARunningCall) {
  absl::Notification entered, release;
  std::atomic<bool> finished{false};
  store_->feed()->SetListener([&](const Change&) {
    entered.Notify();
    release.WaitForNotificationWithTimeout(absl::Seconds(10));
    finished = true;
  });
  std::thread writer([&] { EXPECT_TRUE(Ins(*store_, MakeRecord("g1")).ok()); });
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(50));
    release.Notify();
  });
  store_->feed()->SetListener(nullptr);
  EXPECT_TRUE(finished.load()) << "returned while the listener still ran";
  writer.join();
  releaser.join();
}

// ---- SQLite only ----------------------------------------------------------

TEST(SqliteStore, ReopenSeesEverything) {
  TempDir dir;
  const absl::Time t0 = kBase + absl::Hours(1);
  Record full = MakeRecord("full", kBase + absl::Hours(1),
                           v1::Generation::STATE_QUEUED, "rq");
  full.generation.set_tenant("acme");
  full.submit = SubmitPhase::kSent;
  full.submit_time = kBase + absl::Nanoseconds(77);
  std::vector<Record> rs;
  for (int i = 0; i < 20; ++i) {
    rs.push_back(MakeRecord(absl::StrCat("g", i), kBase + absl::Seconds(i)));
  }
  {
    std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
    ASSERT_NE(s, nullptr);
    for (const Record& r : rs) ASSERT_TRUE(Ins(*s, r).ok());
    ASSERT_TRUE(Ins(*s, full).ok());
    ASSERT_TRUE(Ins(*s, MakeRecord("gone")).ok());
    ASSERT_TRUE(s->Delete("gone", 1).ok());
    ASSERT_EQ(s->ClaimActive("A", t0, t0 + absl::Seconds(30), 5)->size(), 5u);
    Record next = *s->Get("full").value();
    ++next.version;
    next.generation.set_revision(2);
    Delivery d;
    d.generation_id = "full";
    d.revision = 2;
    d.url = "https://hooks.example.com/";
    d.body = "{}";
    d.created = t0;
    ASSERT_TRUE(s->Update(next, {d}).ok());
    v1::WebhookStatus ws;
    ws.set_attempts(2);
    ASSERT_TRUE(s->SetWebhookStatus("full", ws).ok());
    ApiKey key;
    key.key_id = "k1";
    key.key_hash = std::string(64, 'f');
    key.tenant = "acme";
    key.created = kBase;
    ASSERT_TRUE(s->InsertKey(key).ok());
    ASSERT_TRUE(s->AddSample({"m", 5, absl::Minutes(6), t0}).ok());
  }
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  for (const Record& r : rs) {
    absl::StatusOr<std::optional<Record>> got = s->Get(r.generation.id());
    ASSERT_TRUE(got.ok() && got->has_value()) << r.generation.id();
    EXPECT_TRUE(SameGeneration((*got)->generation, r.generation));
    EXPECT_EQ((*got)->deadline, r.deadline);
  }
  EXPECT_EQ(s->Get("g0").value()->owner, "A");
  EXPECT_EQ(s->Get("g0").value()->lease_until, t0 + absl::Seconds(30));
  EXPECT_EQ(s->Get("g0").value()->version, 2);
  EXPECT_FALSE(s->Get("gone").value().has_value());
  Record got = *s->GetByRequestId("acme", "rq").value();
  EXPECT_EQ(got.version, 2);
  EXPECT_EQ(got.submit, SubmitPhase::kSent);
  EXPECT_EQ(got.submit_time, full.submit_time);
  EXPECT_EQ(got.generation.webhook_status().attempts(), 2);
  EXPECT_EQ(s->OutboxStats().value(), std::make_pair(int64_t{1}, t0));
  EXPECT_TRUE(s->FindKeyByHash(std::string(64, 'f')).value().has_value());
  EXPECT_EQ(s->RecentSamples("m", 5, 10).value().size(), 1u);
  ListQuery q;
  q.page_size = 100;
  EXPECT_EQ(s->List(q).value().generations.size(), rs.size() + 1);
}

// An Insert that returned OK survives kill -9 of the process that made it.
TEST(SqliteStore, AcknowledgedInsertsSurviveKillDashNine) {
  TempDir dir;
  int acks[2];
  ASSERT_EQ(::pipe(acks), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(acks[0]);
    absl::StatusOr<std::unique_ptr<SqliteStore>> s =
        SqliteStore::Open(dir.path());
    if (!s.ok()) ::_exit(3);
    for (int i = 0;; ++i) {  // until killed
      Record r = MakeRecord(absl::StrCat("k", i), kBase + absl::Seconds(i));
      if (!Ins(**s, r).ok()) ::_exit(4);
      char c = 1;
      if (::write(acks[1], &c, 1) != 1) ::_exit(5);
    }
  }
  ::close(acks[1]);
  int acked = 0;
  char c;
  while (acked < 200 && ::read(acks[0], &c, 1) == 1) ++acked;
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early: " << status;
  while (::read(acks[0], &c, 1) == 1) ++acked;  // acks sent before the kill
  ::close(acks[0]);
  ASSERT_GE(acked, 200);

  // The lock died with the child; the WAL is replayed on open.
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->CheckIntegrity().ok());
  for (int i = 0; i < acked; ++i) {
    absl::StatusOr<std::optional<Record>> got = s->Get(absl::StrCat("k", i));
    ASSERT_TRUE(got.ok() && got->has_value())
        << "acked insert k" << i << " lost";
  }
}

// Migration 1's schema, verbatim, as a v1 server left it.
constexpr char kSchemaV1[] = R"sql(
CREATE TABLE generations (
  id TEXT PRIMARY KEY NOT NULL,
  request_id TEXT UNIQUE,
  state INTEGER NOT NULL,
  done INTEGER NOT NULL,
  create_time_ns INTEGER NOT NULL,
  update_time_ns INTEGER NOT NULL,
  deadline_ns INTEGER,
  body BLOB NOT NULL
);
CREATE INDEX generations_by_create
  ON generations (create_time_ns DESC, id DESC);
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
PRAGMA user_version = 1;
)sql";

// Writes `r` the way the v1 store did.
void RawInsertV1(const std::string& db, const Record& r) {
  const v1::Generation& g = r.generation;
  std::string hex;
  for (unsigned char ch : g.SerializeAsString()) {
    absl::StrAppend(&hex, absl::Hex(ch, absl::kZeroPad2));
  }
  const std::string rid =
      g.request().request_id().empty()
          ? "NULL"
          : absl::StrCat("'", g.request().request_id(), "'");
  std::string sql = absl::StrCat(
      "INSERT INTO generations VALUES ('", g.id(), "', ", rid, ", ", g.state(),
      ", ", g.done() ? 1 : 0, ", ",
      absl::ToUnixNanos(absl::FromUnixSeconds(g.create_time().seconds()) +
                        absl::Nanoseconds(g.create_time().nanos())),
      ", ", absl::ToUnixNanos(absl::FromUnixSeconds(g.update_time().seconds())),
      ", ", absl::ToUnixNanos(r.deadline), ", x'", hex, "');");
  for (const auto& [k, v] : g.labels()) {
    absl::StrAppend(&sql, "INSERT INTO generation_labels VALUES ('", g.id(),
                    "', '", k, "', '", v, "');");
  }
  RawExec(db, sql);
}

TEST(SqliteStore, UpgradesAVersion1DatabaseKeepingItsRows) {
  TempDir dir;
  const std::string db = dir.path() + "/videogen.db";
  RawExec(db, kSchemaV1);
  RawExec(db, absl::StrCat("PRAGMA application_id = ", 0x76676e31));  // "vgn1"
  Record active =
      MakeRecord("active", kBase, v1::Generation::STATE_GENERATING, "req-1");
  active.generation.set_revision(4);
  active.generation.mutable_request()->set_duration_seconds(10);
  Record done = MakeRecord("done", kBase + absl::Seconds(1),
                           v1::Generation::STATE_COMPLETED);
  done.generation.set_revision(6);
  RawInsertV1(db, active);
  RawInsertV1(db, done);
  ASSERT_EQ(RawInt(db, "PRAGMA user_version"), 1);

  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(RawInt(db, "PRAGMA user_version"), SqliteStore::SchemaVersion());
  EXPECT_TRUE(s->CheckIntegrity().ok());
  Record got = *s->Get("active").value();
  EXPECT_TRUE(SameGeneration(got.generation, active.generation));
  EXPECT_EQ(got.version, 1);
  EXPECT_EQ(got.generation.tenant(), "");
  EXPECT_EQ(got.deadline, active.deadline);
  EXPECT_EQ(got.owner, "");
  EXPECT_EQ(got.submit, SubmitPhase::kDone);
  EXPECT_EQ(s->GetByRequestId("", "req-1").value()->generation.id(), "active");
  ListQuery by_label;
  by_label.labels = {{"team", "video"}};
  EXPECT_EQ(s->List(by_label).value().generations.size(), 2u);
  // The backfilled columns work: the revision (no feed change for an
  // update that keeps it), the seconds budget, the active claim.
  Admission budget;
  budget.video_seconds_budget = 14;
  Record next = MakeRecord("next", kBase + absl::Seconds(2));
  EXPECT_EQ(s->Insert(next, budget, nullptr).code(),
            absl::StatusCode::kResourceExhausted)
      << "10 s (v1 row) + 5 s > 14 s";
  std::vector<Change> changes;
  absl::Mutex mu;
  s->feed()->SetListener([&](const Change& c) {
    absl::MutexLock lock(&mu);
    changes.push_back(c);
  });
  ++got.version;
  got.submit = SubmitPhase::kDone;
  ASSERT_TRUE(s->Update(got, {}).ok());
  s->feed()->SetListener(nullptr);
  EXPECT_THAT(changes, IsEmpty()) << "revision 4 stayed 4";
  std::vector<Record> claimed =
      s->ClaimActive("A", kBase, kBase + absl::Minutes(1), 10).value();
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].generation.id(), "active");
  // request_id is per tenant now.
  Record other =
      MakeRecord("other", kBase, v1::Generation::STATE_QUEUED, "req-1");
  other.generation.set_tenant("acme");
  EXPECT_TRUE(Ins(*s, other).ok());
}

TEST(SqliteStore, MigrationsStampTheSchemaVersion) {
  TempDir dir;
  ASSERT_NE(MustOpen(dir.path()), nullptr);
  const std::string db = dir.path() + "/videogen.db";
  EXPECT_GE(SqliteStore::SchemaVersion(), 1);
  EXPECT_EQ(RawInt(db, "PRAGMA user_version"), SqliteStore::SchemaVersion());
  EXPECT_EQ(RawInt(db,
                   "SELECT count(*) FROM sqlite_schema WHERE name IN"
                   " ('generations', 'generation_labels')"),
            2);
  // Opening again is a no-op migration.
  ASSERT_NE(MustOpen(dir.path()), nullptr);
  EXPECT_EQ(RawInt(db, "PRAGMA user_version"), SqliteStore::SchemaVersion());
}

TEST(SqliteStore, RefusesANewerSchema) {
  TempDir dir;
  ASSERT_NE(MustOpen(dir.path()), nullptr);
  const std::string db = dir.path() + "/videogen.db";
  const int newer = SqliteStore::SchemaVersion() + 1;
  RawExec(db, absl::StrCat("PRAGMA user_version = ", newer));
  absl::StatusOr<std::unique_ptr<SqliteStore>> s =
      SqliteStore::Open(dir.path());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(),
              HasSubstr(absl::StrCat("schema version ", newer)));
  EXPECT_THAT(s.status().message(), HasSubstr("run a newer videogen"));
  EXPECT_EQ(RawInt(db, "PRAGMA user_version"), newer) << "left untouched";
}

TEST(SqliteStore, RefusesAForeignSqliteDatabase) {
  TempDir dir;
  const std::string db = dir.path() + "/videogen.db";
  RawExec(db, "CREATE TABLE accounts (id INTEGER PRIMARY KEY)");
  absl::StatusOr<std::unique_ptr<SqliteStore>> s =
      SqliteStore::Open(dir.path());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(),
              HasSubstr(db + " is not a videogen SQLite database"));
  EXPECT_THAT(s.status().message(), HasSubstr("move it away"));
}

TEST(SqliteStore, GarbageFileGivesAClearError) {
  TempDir dir;
  const std::string db = dir.path() + "/videogen.db";
  {
    std::ofstream out(db);
    for (int i = 0; i < 200; ++i) out << "this is not a database at all\n";
  }
  absl::StatusOr<std::unique_ptr<SqliteStore>> s =
      SqliteStore::Open(dir.path());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(),
              HasSubstr(db + " is not a videogen SQLite database (file is "
                             "not a database); move it away or point "
                             "--data_dir elsewhere"));
  EXPECT_EQ(fs::file_size(db), 200u * 30u) << "the file is left alone";
}

TEST(SqliteStore, DataDirUnderARegularFileIsNotWritable) {
  TempDir dir;
  const std::string file = dir.path() + "/plain_file";
  std::ofstream(file) << "x";
  const std::string data_dir = file + "/sub";
  absl::StatusOr<std::unique_ptr<SqliteStore>> s = SqliteStore::Open(data_dir);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(),
              HasSubstr("data dir " + data_dir + " is not writable: "));
  EXPECT_THAT(s.status().message(),
              HasSubstr("fix permissions or pass --data_dir / --store=memory"));

  s = SqliteStore::Open(file);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(),
              HasSubstr("data dir " + file + " is not a directory"));
}

// chmod only binds non-root users; as root the same setup must work, which is
// also worth checking (root ignores the mode bits).
TEST(SqliteStore, ReadOnlyDataDir) {
  TempDir dir;
  const std::string fresh = dir.path() + "/fresh";
  const std::string existing = dir.path() + "/existing";
  ASSERT_TRUE(fs::create_directory(fresh));
  {
    std::unique_ptr<SqliteStore> s = MustOpen(existing);
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(Ins(*s, MakeRecord("g1")).ok());
  }
  ASSERT_EQ(::chmod(fresh.c_str(), 0555), 0);
  ASSERT_EQ(::chmod(existing.c_str(), 0555), 0);

  absl::StatusOr<std::unique_ptr<SqliteStore>> s = SqliteStore::Open(fresh);
  if (::geteuid() != 0) {
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.status().message(),
                HasSubstr("data dir " + fresh +
                          " is not writable: Permission denied; fix "
                          "permissions or pass --data_dir / --store=memory"));
    // With the database already there, the WAL cannot be created.
    s = SqliteStore::Open(existing);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition)
        << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr("not writable"));
  } else {
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(Ins(**s, MakeRecord("g2")).ok());
    s = SqliteStore::Open(existing);
    ASSERT_TRUE(s.ok()) << s.status();
    absl::StatusOr<std::optional<Record>> got = (*s)->Get("g1");
    ASSERT_TRUE(got.ok() && got->has_value());
  }
}

TEST(SqliteStore, SecondServerOnTheSameDataDirIsRefused) {
  TempDir dir;
  std::unique_ptr<SqliteStore> first = MustOpen(dir.path());
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<SqliteStore>> second =
      SqliteStore::Open(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(),
              HasSubstr("is in use by another videogen server"));
  first.reset();
  EXPECT_NE(MustOpen(dir.path()), nullptr) << "the lock goes with the store";
}

// `videogen-server keys` holds the data dir's lock for the milliseconds it
// takes to create or migrate the database. A server started in that moment
// used to be refused as if another server ran there; it now waits for the
// lock (SqliteOptions::lock_wait) and starts.
TEST(SqliteStore, ServerWaitsForALockTheKeysCommandHoldsBriefly) {
  TempDir dir;
  ASSERT_NE(MustOpen(dir.path()), nullptr);  // the database and lock file
  const std::string lock_path = dir.path() + "/videogen.lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);  // as `keys` does
  std::thread keys_command([fd] {
    absl::SleepFor(absl::Milliseconds(300));
    ::close(fd);  // releases the lock
  });
  absl::StatusOr<std::unique_ptr<SqliteStore>> server =
      SqliteStore::Open(dir.path());
  keys_command.join();
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(Ins(**server, MakeRecord("g1")).ok());
}

// `videogen-server keys` (issue 17): opens the data dir a running server
// holds, and what each writes the other reads.
absl::StatusOr<std::unique_ptr<SqliteStore>> OpenKeyAdmin(
    const std::string& dir) {
  SqliteOptions o;
  o.role = SqliteOptions::Role::kKeyAdmin;
  return SqliteStore::Open(dir, o);
}

ApiKey MakeKey(const std::string& id) {
  ApiKey k;
  k.key_id = id;
  k.key_hash = std::string(64, 'a' + static_cast<char>(id.size() % 26));
  k.tenant = "acme";
  k.webhook_secret = "whsec_x";
  k.created = kBase;
  return k;
}

TEST(SqliteStore, KeyAdminOpensBesideARunningServer) {
  TempDir dir;
  std::unique_ptr<SqliteStore> server = MustOpen(dir.path());
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Ins(*server, MakeRecord("g1")).ok());
  absl::StatusOr<std::unique_ptr<SqliteStore>> admin = OpenKeyAdmin(dir.path());
  ASSERT_TRUE(admin.ok()) << admin.status();
  // A second server is still refused, with the admin open too.
  absl::StatusOr<std::unique_ptr<SqliteStore>> second =
      SqliteStore::Open(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(),
              HasSubstr("is in use by another videogen server"));

  const ApiKey key = MakeKey("k_1");
  ASSERT_TRUE((*admin)->InsertKey(key).ok());
  absl::StatusOr<std::optional<ApiKey>> seen =
      server->FindKeyByHash(key.key_hash);
  ASSERT_TRUE(seen.ok() && seen->has_value()) << seen.status();
  EXPECT_FALSE((*seen)->revoked.has_value());
  ASSERT_TRUE((*admin)->RevokeKey("k_1", kBase + absl::Hours(1)).ok());
  seen = server->FindKeyByHash(key.key_hash);
  ASSERT_TRUE(seen.ok() && seen->has_value()) << seen.status();
  EXPECT_EQ((*seen)->revoked, kBase + absl::Hours(1));
  // And the other way round.
  ASSERT_TRUE(server->InsertKey(MakeKey("k_22")).ok());
  EXPECT_EQ((*admin)->ListKeys().value().size(), 2u);
  EXPECT_TRUE((*admin)->Get("g1").value().has_value());
  admin->reset();
  // The server's store still works after the admin closed its connection.
  ASSERT_TRUE(Ins(*server, MakeRecord("g2")).ok());
  EXPECT_EQ(server->ListKeys().value().size(), 2u);
}

TEST(SqliteStore, KeyAdminWaitsForTheServersWriteInsteadOfFailing) {
  TempDir dir;
  std::unique_ptr<SqliteStore> server = MustOpen(dir.path());
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<SqliteStore>> admin = OpenKeyAdmin(dir.path());
  ASSERT_TRUE(admin.ok()) << admin.status();
  // Another connection holds the write lock for a while (as a server's
  // transaction would); the admin's insert waits (busy_timeout) and lands.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir.path() + "/videogen.db").c_str(), &db),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr),
            SQLITE_OK);
  absl::Notification inserting;
  std::thread releaser([&] {
    inserting.WaitForNotification();
    absl::SleepFor(absl::Milliseconds(200));
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  });
  inserting.Notify();
  absl::Status s = (*admin)->InsertKey(MakeKey("k_1"));
  releaser.join();
  sqlite3_close(db);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(server->ListKeys().value().size(), 1u);
}

TEST(SqliteStore, KeyAdminAloneCreatesTheDatabaseAndLetsAServerStart) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteStore>> admin = OpenKeyAdmin(dir.path());
  ASSERT_TRUE(admin.ok()) << admin.status();
  const std::string db = dir.path() + "/videogen.db";
  EXPECT_EQ(RawInt(db, "PRAGMA user_version"), SqliteStore::SchemaVersion());
  ASSERT_TRUE((*admin)->InsertKey(MakeKey("k_1")).ok());
  // The lock went once the database was ready: a server starts beside it.
  std::unique_ptr<SqliteStore> server = MustOpen(dir.path());
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->ListKeys().value().size(), 1u);
  EXPECT_FALSE(SqliteStore::Open(dir.path()).ok()) << "one server only";
}

TEST(SqliteStore, KeyAdminDoesNotMigrateARunningServersDatabase) {
  TempDir dir;
  std::unique_ptr<SqliteStore> server = MustOpen(dir.path());
  ASSERT_NE(server, nullptr);
  const std::string db = dir.path() + "/videogen.db";
  // As if the running server were an older binary.
  const int older = SqliteStore::SchemaVersion() - 1;
  RawExec(db, absl::StrCat("PRAGMA user_version = ", older));
  absl::StatusOr<std::unique_ptr<SqliteStore>> admin = OpenKeyAdmin(dir.path());
  ASSERT_FALSE(admin.ok());
  EXPECT_EQ(admin.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(admin.status().message(),
              HasSubstr(absl::StrCat("schema version ", older)));
  EXPECT_THAT(admin.status().message(), HasSubstr("running videogen server"));
  EXPECT_EQ(RawInt(db, "PRAGMA user_version"), older) << "left untouched";
  // A newer schema is refused as for a server.
  RawExec(db, absl::StrCat("PRAGMA user_version = ",
                           SqliteStore::SchemaVersion() + 1));
  admin = OpenKeyAdmin(dir.path());
  ASSERT_FALSE(admin.ok());
  EXPECT_THAT(admin.status().message(), HasSubstr("run a newer videogen"));
}

TEST(SqliteStore, UsesWalMode) {
  TempDir dir;
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  absl::StatusOr<std::string> mode = s->JournalMode();
  ASSERT_TRUE(mode.ok()) << mode.status();
  EXPECT_EQ(*mode, "wal");
  ASSERT_TRUE(Ins(*s, MakeRecord("g1")).ok());
  EXPECT_TRUE(fs::exists(dir.path() + "/videogen.db-wal"));
}

TEST(SqliteStore, CorruptRowIsDataLossNamingTheId) {
  TempDir dir;
  {
    std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(Ins(*s, MakeRecord("bad_one")).ok());
    ASSERT_TRUE(Ins(*s, MakeRecord("good_one")).ok());
  }
  RawExec(dir.path() + "/videogen.db",
          "UPDATE generations SET body = x'ffffffff0a' WHERE id = 'bad_one'");
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  absl::StatusOr<std::optional<Record>> got = s->Get("bad_one");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(), HasSubstr("generation bad_one"));
  got = s->Get("good_one");
  ASSERT_TRUE(got.ok() && got->has_value());
  absl::StatusOr<std::vector<Record>> claimed =
      s->ClaimActive("A", kBase, kBase + absl::Minutes(1), 10);
  ASSERT_FALSE(claimed.ok());
  EXPECT_EQ(claimed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(claimed.status().message(), HasSubstr("bad_one"));
  absl::StatusOr<ListPage> page = s->List(ListQuery{});
  ASSERT_FALSE(page.ok());
  EXPECT_EQ(page.status().code(), absl::StatusCode::kDataLoss);
}

TEST(SqliteStore, CheckIntegrityPassesAHealthyDatabase) {
  TempDir dir;
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->CheckIntegrity().ok());
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(Ins(*s, MakeRecord(absl::StrCat("g", i))).ok());
  }
  EXPECT_TRUE(s->CheckIntegrity().ok());
}

// A bad page in the middle of the file: the database opens (its schema is
// intact) and would answer DATA_LOSS only when a request touches that page,
// after accepting billed creates. CheckIntegrity finds it at startup.
TEST(SqliteStore, CheckIntegrityRefusesACorruptPageInTheMiddle) {
  TempDir dir;
  const std::string db = dir.path() + "/videogen.db";
  {
    std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(
          Ins(*s, MakeRecord(absl::StrCat("g", i), kBase + absl::Seconds(i)))
              .ok());
    }
  }  // closing checkpoints the WAL into the file
  ASSERT_FALSE(fs::exists(db + "-wal"));
  const int64_t page_size = RawInt(db, "PRAGMA page_size");
  const int64_t pages = static_cast<int64_t>(fs::file_size(db)) / page_size;
  ASSERT_GE(pages, 20) << "the database should span many pages";
  {
    std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(page_size * (pages / 2));
    std::string garbage(page_size, '\0');
    for (int64_t i = 0; i < page_size; ++i) {
      garbage[i] = static_cast<char>((i * 131 + 17) & 0xff);
    }
    f.write(garbage.data(), garbage.size());
  }
  absl::StatusOr<std::unique_ptr<SqliteStore>> s =
      SqliteStore::Open(dir.path());
  ASSERT_TRUE(s.ok()) << "the damage is not in the schema: " << s.status();
  absl::Status check = (*s)->CheckIntegrity();
  EXPECT_EQ(check.code(), absl::StatusCode::kDataLoss) << check;
  EXPECT_THAT(check.message(), HasSubstr(db));
  EXPECT_THAT(check.message(), HasSubstr("restore it from a backup"));
  EXPECT_THAT(check.message(), HasSubstr("move it away to start empty"));
}

}  // namespace
}  // namespace videogen::store
