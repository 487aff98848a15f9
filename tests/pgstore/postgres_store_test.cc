// PostgresStore against a real PostgreSQL server (label `postgres`): what a
// shared store adds over the conformance suite. Migrations run by several
// processes at once, leases and fencing across two stores with their own
// pools, racing duplicate creates and quotas across stores, the change feed
// across stores (NOTIFY payload, reconnect catch-up, backstop, transactions
// that commit out of change_seq order) and a pool that heals after its
// server-side sessions are killed.
#include "server/store/postgres_store.h"

#include <libpq-fe.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/pg/schema.h"
#include "tests/pgstore/postgres_test_db.h"

// Status-printing assertions (absl::Status has operator<<).
#define VG_ASSERT_OK(expr)                    \
  do {                                        \
    const absl::Status vg_status = (expr);    \
    ASSERT_TRUE(vg_status.ok()) << vg_status; \
  } while (0)
#define VG_EXPECT_OK(expr)                    \
  do {                                        \
    const absl::Status vg_status = (expr);    \
    EXPECT_TRUE(vg_status.ok()) << vg_status; \
  } while (0)

namespace videogen::store {
namespace {

using pgtest::TestDatabase;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAreArray;

const absl::Time kBase = absl::FromUnixSeconds(1'800'000'000);

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t ns = absl::ToUnixNanos(t);
  ts.set_seconds(ns / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return ts;
}

Record MakeRecord(const std::string& id, const std::string& tenant = "t",
                  const std::string& request_id = "",
                  absl::Time created = kBase) {
  Record r;
  v1::Generation& g = r.generation;
  g.set_id(id);
  g.set_tenant(tenant);
  g.set_state(v1::Generation::STATE_QUEUED);
  g.set_revision(1);
  g.mutable_request()->set_request_id(request_id);
  g.mutable_request()->set_model("kling-video/v1.6/standard/text-to-video");
  g.mutable_request()->set_prompt("a red fox in the snow");
  g.mutable_request()->set_duration_seconds(5);
  *g.mutable_create_time() = Ts(created);
  *g.mutable_update_time() = Ts(created);
  r.version = 1;
  return r;
}

// Waits (up to 10 s) for `pred`; asynchronous feeds deliver "soon".
bool Eventually(const std::function<bool()>& pred) {
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (absl::Now() < until) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return pred();
}

PostgresOptions Options(const std::string& name) {
  PostgresOptions o;
  o.application_name = name;
  o.pool_size = 3;
  return o;
}

std::unique_ptr<PostgresStore> OpenOrDie(const std::string& url,
                                         const PostgresOptions& options) {
  absl::StatusOr<std::unique_ptr<PostgresStore>> s =
      PostgresStore::Open(url, options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// Collects feed deliveries; thread-safe.
class Recorder {
 public:
  explicit Recorder(PostgresStore* store) : store_(store) {
    store_->feed()->SetListener([this](const Change& c) {
      absl::MutexLock lock(&mu_);
      changes_.push_back(c);
    });
  }
  ~Recorder() { store_->feed()->SetListener(nullptr); }

  std::vector<Change> changes() const {
    absl::MutexLock lock(&mu_);
    return changes_;
  }
  // The highest revision seen per id.
  std::map<std::string, int64_t> Latest() const {
    std::map<std::string, int64_t> out;
    for (const Change& c : changes()) {
      out[c.id] = std::max(out[c.id], c.revision);
    }
    return out;
  }
  // Every revision delivered for `id`, in delivery order.
  std::vector<int64_t> Revisions(const std::string& id) const {
    std::vector<int64_t> out;
    for (const Change& c : changes()) {
      if (c.id == id) out.push_back(c.revision);
    }
    return out;
  }
  bool Has(const std::string& id, int64_t revision) const {
    auto latest = Latest();
    auto it = latest.find(id);
    return it != latest.end() && it->second >= revision;
  }

 private:
  PostgresStore* store_;
  mutable absl::Mutex mu_;
  std::vector<Change> changes_ ABSL_GUARDED_BY(mu_);
};

// Every id's revisions arrive strictly increasing, each at most once.
void ExpectIncreasingPerId(const std::vector<Change>& changes) {
  std::map<std::string, int64_t> last;
  for (const Change& c : changes) {
    EXPECT_GT(c.revision, last[c.id]) << c.id;
    last[c.id] = c.revision;
    ASSERT_NE(c.generation, nullptr);
    EXPECT_EQ(c.generation->id(), c.id);
    EXPECT_EQ(c.generation->revision(), c.revision);
    EXPECT_EQ(c.generation->tenant(), c.tenant);
  }
}

// Re-reads `id` from `store`, bumps its revision and writes it back.
void Bump(Store* store, const std::string& id) {
  absl::StatusOr<std::optional<Record>> got = store->Get(id);
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  Record r = **got;
  r.generation.set_revision(r.generation.revision() + 1);
  r.generation.set_upstream_status(absl::StrCat("r", r.generation.revision()));
  ++r.version;
  VG_ASSERT_OK(store->Update(r, {}));
}

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    ASSERT_NE(db_, nullptr);
  }
  std::unique_ptr<TestDatabase> db_;
};

// ---- Migrations ----

// Several processes open the same fresh database at the same moment: every
// one succeeds and each migration ran exactly once.
TEST_F(PostgresStoreTest, MigrationsRunConcurrentlyFromSeveralProcesses) {
  constexpr int kProcesses = 4;
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(go[1]);
      char c;
      (void)!::read(go[0], &c, 1);  // returns at EOF: everyone starts now
      absl::StatusOr<std::unique_ptr<PostgresStore>> s =
          PostgresStore::Open(db_->url(), Options("migrator"));
      if (!s.ok()) {
        fprintf(stderr, "child %d: %s\n", i, s.status().ToString().c_str());
      }
      ::_exit(s.ok() ? 0 : 1);
    }
    children.push_back(pid);
  }
  ::close(go[0]);
  ::close(go[1]);
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  std::vector<std::string> expected;
  for (int v = 1; v <= pg::SchemaVersion(); ++v) {
    expected.push_back(absl::StrCat(v, ":1"));
  }
  EXPECT_EQ(db_->Query("SELECT version || ':' || count(*) FROM "
                       "videogen_schema_migrations GROUP BY version ORDER BY "
                       "version"),
            expected);
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM pg_tables WHERE tablename IN "
                        "('generations', 'api_keys', 'deliveries', "
                        "'duration_samples')"),
            "4");
  // And the schema works.
  auto store = OpenOrDie(db_->url(), Options("after"));
  ASSERT_NE(store, nullptr);
  VG_EXPECT_OK(store->Insert(MakeRecord("g1"), {}, nullptr));
  VG_EXPECT_OK(store->CheckIntegrity());
}

TEST_F(PostgresStoreTest, RefusesANewerSchemaAndAMissingMigration) {
  ASSERT_NE(OpenOrDie(db_->url(), Options("a")), nullptr);
  ASSERT_NE(OpenOrDie(db_->url(), Options("a")), nullptr);  // idempotent
  db_->Query(
      absl::StrCat("INSERT INTO videogen_schema_migrations (version) "
                   "VALUES (",
                   pg::SchemaVersion() + 1, ")"));
  absl::StatusOr<std::unique_ptr<PostgresStore>> newer =
      PostgresStore::Open(db_->url(), Options("a"));
  EXPECT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(newer.status().message()),
              ::testing::HasSubstr("newer than this videogen"));
}

TEST_F(PostgresStoreTest, CheckIntegrityNoticesASchemaChangedUnderIt) {
  auto store = OpenOrDie(db_->url(), Options("a"));
  ASSERT_NE(store, nullptr);
  VG_EXPECT_OK(store->CheckIntegrity());
  db_->Query("DELETE FROM videogen_schema_migrations");
  EXPECT_EQ(store->CheckIntegrity().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(PostgresStoreTest, UnreachableServerIsUnavailableWithoutTheUrl) {
  // A closed port on loopback, and a password that must not leak.
  const std::string url =
      "postgresql://videogen:s3cret-pw@127.0.0.1:1/postgres?connect_timeout=2";
  absl::StatusOr<std::unique_ptr<PostgresStore>> s =
      PostgresStore::Open(url, Options("a"));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.status().message()),
              ::testing::Not(::testing::HasSubstr("s3cret")));
}

// ---- Leases and fencing across replicas ----

TEST_F(PostgresStoreTest, LeaseClaimRenewExpiryAndFencingAcrossStores) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ids.push_back(absl::StrCat("g", i));
    VG_ASSERT_OK(
        a->Insert(MakeRecord(ids.back(), "t", "", kBase + absl::Seconds(i)), {},
                  nullptr));
  }
  const absl::Time t0 = kBase + absl::Minutes(1);
  absl::StatusOr<std::vector<Record>> claimed_a =
      a->ClaimActive("replica-a", t0, t0 + absl::Seconds(30), -1);
  ASSERT_TRUE(claimed_a.ok()) << claimed_a.status();
  ASSERT_THAT(*claimed_a, SizeIs(6));
  for (size_t i = 0; i < claimed_a->size(); ++i) {
    EXPECT_EQ((*claimed_a)[i].generation.id(), ids[i]);  // oldest first
    EXPECT_EQ((*claimed_a)[i].owner, "replica-a");
    EXPECT_EQ((*claimed_a)[i].version, 2);
  }
  // B finds nothing while A's leases run.
  EXPECT_THAT(*b->ClaimActive("replica-b", t0 + absl::Seconds(1),
                              t0 + absl::Seconds(31), -1),
              IsEmpty());
  // A renews (no version change); B still finds nothing past the first
  // expiry.
  EXPECT_EQ(*a->RenewLeases("replica-a", t0 + absl::Seconds(20),
                            t0 + absl::Seconds(50)),
            ids);
  EXPECT_EQ((*a->Get("g0"))->version, 2);
  EXPECT_THAT(*b->ClaimActive("replica-b", t0 + absl::Seconds(40),
                              t0 + absl::Seconds(70), -1),
              IsEmpty());
  // A stops renewing (it died, or stalled); B takes over after expiry.
  absl::StatusOr<std::vector<Record>> claimed_b = b->ClaimActive(
      "replica-b", t0 + absl::Seconds(50), t0 + absl::Seconds(80), 4);
  ASSERT_TRUE(claimed_b.ok());
  ASSERT_THAT(*claimed_b, SizeIs(4));  // the limit holds
  EXPECT_EQ((*claimed_b)[0].version, 3);
  // A wakes up and writes from its stale copy: fenced.
  Record stale = (*claimed_a)[0];
  stale.generation.set_revision(2);
  ++stale.version;
  EXPECT_EQ(a->Update(stale, {}).code(), absl::StatusCode::kAborted);
  // A's renewal now returns only what it still holds (2 left, expired but
  // unclaimed: not renewable either).
  EXPECT_THAT(*a->RenewLeases("replica-a", t0 + absl::Seconds(51),
                              t0 + absl::Seconds(90)),
              IsEmpty());
  // B's writes go through; revision and owner stick.
  Record fresh = (*claimed_b)[0];
  fresh.generation.set_revision(2);
  ++fresh.version;
  VG_EXPECT_OK(b->Update(fresh, {}));
  absl::StatusOr<std::optional<Record>> got = a->Get(fresh.generation.id());
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->owner, "replica-b");
  EXPECT_EQ((*got)->generation.revision(), 2);
  // The expired rest goes to whoever claims next.
  EXPECT_THAT(*a->ClaimActive("replica-a", t0 + absl::Seconds(51),
                              t0 + absl::Seconds(90), -1),
              SizeIs(2));
}

TEST_F(PostgresStoreTest, ConcurrentClaimsFromTwoStoresAreDisjoint) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  constexpr int kRecords = 120;
  std::vector<std::string> all;
  for (int i = 0; i < kRecords; ++i) {
    all.push_back(absl::StrCat("g", 1000 + i));
    VG_ASSERT_OK(a->Insert(MakeRecord(all.back()), {}, nullptr));
  }
  // Twelve claims of ten at once, from two pools: SKIP LOCKED hands each
  // a different ten, and a lease taken meanwhile is re-checked, not stolen.
  constexpr int kClaims = 12;
  std::vector<std::string> got[kClaims];
  std::vector<std::thread> threads;
  for (int t = 0; t < kClaims; ++t) {
    threads.emplace_back([&, t] {
      PostgresStore* store = t % 2 ? b.get() : a.get();
      absl::StatusOr<std::vector<Record>> c = store->ClaimActive(
          absl::StrCat("owner-", t), kBase, kBase + absl::Minutes(1), 10);
      ASSERT_TRUE(c.ok()) << c.status();
      for (const Record& r : *c) got[t].push_back(r.generation.id());
    });
  }
  for (auto& t : threads) t.join();
  std::vector<std::string> merged;
  for (auto& g : got) {
    EXPECT_THAT(g, SizeIs(10));
    merged.insert(merged.end(), g.begin(), g.end());
  }
  EXPECT_THAT(merged, UnorderedElementsAreArray(all));  // each exactly once
}

// ---- Idempotency and quotas across replicas ----

void RaceDuplicates(PostgresStore* a, PostgresStore* b,
                    const Admission& admission) {
  constexpr int kCreates = 20;
  std::vector<absl::Status> results(kCreates);
  std::vector<std::optional<Record>> existing(kCreates);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCreates; ++i) {
    threads.emplace_back([&, i] {
      PostgresStore* store = i % 2 ? b : a;
      results[i] =
          store->Insert(MakeRecord(absl::StrCat("dup", i), "acme", "req-1"),
                        admission, &existing[i]);
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0;
  std::string winner;
  for (int i = 0; i < kCreates; ++i) {
    if (results[i].ok()) {
      ++ok;
      winner = absl::StrCat("dup", i);
    }
  }
  ASSERT_EQ(ok, 1);
  for (int i = 0; i < kCreates; ++i) {
    if (results[i].ok()) continue;
    EXPECT_EQ(results[i].code(), absl::StatusCode::kAlreadyExists)
        << results[i];
    ASSERT_TRUE(existing[i].has_value());
    EXPECT_EQ(existing[i]->generation.id(), winner);
    EXPECT_EQ(existing[i]->generation.request().request_id(), "req-1");
  }
  absl::StatusOr<std::optional<Record>> by_request =
      a->GetByRequestId("acme", "req-1");
  ASSERT_TRUE(by_request.ok() && by_request->has_value());
  EXPECT_EQ((*by_request)->generation.id(), winner);
}

TEST_F(PostgresStoreTest, RacingDuplicateCreatesFromTwoStoresMakeOneRow) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  RaceDuplicates(a.get(), b.get(), Admission{});
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM generations"), "1");
}

TEST_F(PostgresStoreTest, RacingDuplicateCreatesUnderQuotaMakeOneRow) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  Admission limits;
  limits.max_concurrent = 100;
  limits.creates_per_minute = 100;
  limits.video_seconds_budget = 1000;
  RaceDuplicates(a.get(), b.get(), limits);
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM generations"), "1");
}

TEST_F(PostgresStoreTest, QuotaHoldsAcrossStoresUnderConcurrency) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  Admission limits;
  limits.max_concurrent = 5;
  constexpr int kCreates = 20;
  std::vector<absl::Status> results(kCreates);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCreates; ++i) {
    threads.emplace_back([&, i] {
      results[i] = (i % 2 ? b : a)
                       ->Insert(MakeRecord(absl::StrCat("q", i), "acme",
                                           absl::StrCat("r", i)),
                                limits, nullptr);
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (const absl::Status& s : results) {
    if (s.ok()) ++ok;
    if (s.code() == absl::StatusCode::kResourceExhausted) {
      ++exhausted;
      EXPECT_THAT(std::string(s.message()),
                  ::testing::HasSubstr("max_concurrent"));
    }
  }
  EXPECT_EQ(ok, 5);
  EXPECT_EQ(exhausted, kCreates - 5);
  // Another tenant is not affected.
  VG_EXPECT_OK(a->Insert(MakeRecord("other", "globex", "r"), limits, nullptr));
}

// ---- Change feed ----

TEST_F(PostgresStoreTest, FeedDeliversAnotherStoresWrites) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  Recorder rec(a.get());
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().connected; }));
  VG_ASSERT_OK(b->Insert(MakeRecord("f1", "acme"), {}, nullptr));
  ASSERT_TRUE(Eventually([&] { return rec.Has("f1", 1); }));
  for (int i = 0; i < 5; ++i) Bump(b.get(), "f1");
  ASSERT_TRUE(Eventually([&] { return rec.Has("f1", 6); }));
  // A version-only write (a claim) is no change to announce.
  ASSERT_THAT(*b->ClaimActive("b", kBase, kBase + absl::Minutes(1), -1),
              SizeIs(1));
  Bump(b.get(), "f1");
  ASSERT_TRUE(Eventually([&] { return rec.Has("f1", 7); }));
  const std::vector<Change> changes = rec.changes();
  ExpectIncreasingPerId(changes);
  EXPECT_THAT(rec.Revisions("f1"), ElementsAre(1, 2, 3, 4, 5, 6, 7));
  EXPECT_EQ(changes.front().tenant, "acme");
  for (const Change& c : changes) {
    EXPECT_EQ(c.generation->upstream_status(),
              c.revision == 1 ? "" : absl::StrCat("r", c.revision));
  }
  EXPECT_EQ(changes.back().revision, 7);
}

TEST_F(PostgresStoreTest, NotifyPayloadIsIdAndRevisionEvenForHugeRecords) {
  auto store = OpenOrDie(db_->url(), Options("a"));
  ASSERT_NE(store, nullptr);
  PGconn* listener = PQconnectdb(db_->url().c_str());
  ASSERT_EQ(PQstatus(listener), CONNECTION_OK);
  PQclear(PQexec(listener, "LISTEN videogen_changes"));
  Record big = MakeRecord("big-one");
  big.generation.mutable_request()->set_prompt(std::string(200'000, 'x'));
  for (int i = 0; i < 200; ++i) {
    (*big.generation.mutable_labels())[absl::StrCat("k", i)] =
        std::string(100, 'v');
  }
  VG_ASSERT_OK(store->Insert(big, {}, nullptr));
  big.generation.set_revision(2);
  big.version = 2;
  VG_ASSERT_OK(store->Update(big, {}));
  big.version = 3;  // version only: no notification
  VG_ASSERT_OK(store->Update(big, {}));
  big.generation.set_revision(3);
  big.version = 4;
  VG_ASSERT_OK(store->Update(big, {}));
  std::vector<std::string> payloads;
  ASSERT_TRUE(Eventually([&] {
    PQconsumeInput(listener);
    while (PGnotify* n = PQnotifies(listener)) {
      payloads.push_back(n->extra);
      PQfreemem(n);
    }
    return payloads.size() >= 3;
  }));
  EXPECT_THAT(payloads, ElementsAre("big-one:1", "big-one:2", "big-one:3"));
  for (const std::string& p : payloads) EXPECT_LT(p.size(), 100u);
  PQfinish(listener);
}

// The feed's connection dies (pg_terminate_backend) and cannot come back
// for a while (its role may not log in); writes made meanwhile are never
// notified to it. Once it reconnects, the catch-up by change_seq delivers
// every revision it missed, in order.
TEST_F(PostgresStoreTest, FeedCatchesUpAfterLosingItsConnection) {
  const std::string role = db_->MakeRole();
  PostgresOptions oa = Options("feed-a");
  oa.feed_backstop_interval = absl::Hours(1);  // only the reconnect scans
  oa.feed_reconnect_min = absl::Milliseconds(20);
  oa.feed_reconnect_max = absl::Milliseconds(100);
  std::atomic<int> feed_errors{0};
  oa.on_feed_error = [&](const absl::Status&) { ++feed_errors; };
  auto a = OpenOrDie(db_->url(role), oa);
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  Recorder rec(a.get());
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().connected; }));
  VG_ASSERT_OK(b->Insert(MakeRecord("c1"), {}, nullptr));
  VG_ASSERT_OK(b->Insert(MakeRecord("c2"), {}, nullptr));
  ASSERT_TRUE(Eventually([&] { return rec.Has("c1", 1) && rec.Has("c2", 1); }));
  const int64_t notified_before = a->feed_stats().notifications;

  db_->Query(absl::StrCat("ALTER ROLE ", role, " NOLOGIN"));
  EXPECT_EQ(db_->Scalar("SELECT count(pg_terminate_backend(pid)) FROM "
                        "pg_stat_activity WHERE application_name = "
                        "'feed-a-feed' AND datname = current_database()"),
            "1");
  ASSERT_TRUE(Eventually([&] { return !a->feed_stats().connected; }));
  for (int i = 0; i < 3; ++i) Bump(b.get(), "c1");  // c1 -> 4
  Bump(b.get(), "c2");                              // c2 -> 2
  VG_ASSERT_OK(b->Insert(MakeRecord("c3"), {}, nullptr));
  // Nothing can have reached A: its feed cannot log in.
  EXPECT_FALSE(a->feed_stats().connected);
  EXPECT_EQ(a->feed_stats().connects, 1);

  db_->Query(absl::StrCat("ALTER ROLE ", role, " LOGIN"));
  ASSERT_TRUE(Eventually([&] {
    return rec.Has("c1", 4) && rec.Has("c2", 2) && rec.Has("c3", 1);
  }));
  const pg::FeedStats stats = a->feed_stats();
  EXPECT_EQ(stats.connects, 2);
  EXPECT_GE(stats.delivered_by_scan, 3);
  EXPECT_EQ(stats.notifications, notified_before);  // none were received
  EXPECT_GE(feed_errors.load(), 1);
  ExpectIncreasingPerId(rec.changes());
  EXPECT_THAT(rec.Revisions("c1"), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(rec.Revisions("c2"), ElementsAre(1, 2));
  EXPECT_THAT(rec.Revisions("c3"), ElementsAre(1));
  // And live notifications work again.
  Bump(b.get(), "c3");
  ASSERT_TRUE(Eventually([&] { return rec.Has("c3", 2); }));
}

// Watchers on one replica see every revision written by two others, once
// and in order, across a feed reconnect in the middle of the writes (some
// notifications are lost, the catch-up and the live path overlap).
TEST_F(PostgresStoreTest, EveryRevisionOnceInOrderAcrossWritersAndAReconnect) {
  PostgresOptions oa = Options("watch-a");
  oa.feed_reconnect_min = absl::Milliseconds(10);
  oa.feed_reconnect_max = absl::Milliseconds(50);
  oa.feed_backstop_interval = absl::Milliseconds(300);
  auto a = OpenOrDie(db_->url(), oa);
  auto b = OpenOrDie(db_->url(), Options("b"));
  auto c = OpenOrDie(db_->url(), Options("c"));
  ASSERT_TRUE(a && b && c);
  Recorder rec(a.get());
  constexpr int kGenerations = 6, kWrites = 25;
  std::vector<std::string> ids;
  for (int i = 0; i < kGenerations; ++i) {
    ids.push_back(absl::StrCat("w", i));
    VG_ASSERT_OK(b->Insert(MakeRecord(ids.back()), {}, nullptr));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      Store* store = t % 2 ? c.get() : b.get();
      for (int k = 0; k < kWrites * kGenerations / 2; ++k) {
        const std::string& id = ids[(k + t) % kGenerations];
        absl::StatusOr<std::optional<Record>> got = store->Get(id);
        if (!got.ok() || !got->has_value()) {
          ++failures;
          return;
        }
        Record r = **got;
        ++r.version;
        r.generation.set_revision(r.generation.revision() + 1);
        const absl::Status s = store->Update(r, {});
        if (!s.ok() && s.code() != absl::StatusCode::kAborted) {
          ++failures;
          return;
        }
      }
    });
  }
  // Cut the feed off twice while the writers run.
  for (int cut = 0; cut < 2; ++cut) {
    ASSERT_TRUE(Eventually([&] { return a->feed_stats().connected; }));
    absl::SleepFor(absl::Milliseconds(30));
    db_->Query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "application_name = 'watch-a-feed' AND datname = current_database()");
  }
  for (auto& w : writers) w.join();
  ASSERT_EQ(failures.load(), 0);
  for (const std::string& id : ids) {
    const int64_t last = (*a->Get(id))->generation.revision();
    ASSERT_TRUE(Eventually([&] { return rec.Has(id, last); })) << id;
    std::vector<int64_t> want;
    for (int64_t r = 1; r <= last; ++r) want.push_back(r);
    EXPECT_EQ(rec.Revisions(id), want) << id;
  }
  EXPECT_GE(a->feed_stats().connects, 2);
}

// A write that raises the revision without any NOTIFY (as if the
// notification were lost) reaches the listener through the backstop poll.
TEST_F(PostgresStoreTest, BackstopPollDeliversAnUnnotifiedChange) {
  PostgresOptions oa = Options("a");
  oa.feed_backstop_interval = absl::Milliseconds(100);
  auto a = OpenOrDie(db_->url(), oa);
  ASSERT_NE(a, nullptr);
  Recorder rec(a.get());
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().connected; }));
  VG_ASSERT_OK(a->Insert(MakeRecord("s1"), {}, nullptr));
  ASSERT_TRUE(Eventually([&] { return rec.Has("s1", 1); }));
  const int64_t notified = a->feed_stats().notifications;
  // An unnotified change: body and columns, written in SQL.
  Record r = **a->Get("s1");
  r.generation.set_revision(3);
  r.generation.set_upstream_status("from sql");
  std::string body;
  ASSERT_TRUE(r.generation.SerializeToString(&body));
  const char* values[1] = {body.data()};
  const int lengths[1] = {static_cast<int>(body.size())};
  const int formats[1] = {1};
  PGresult* res = PQexecParams(
      db_->admin(),
      "WITH u AS (UPDATE generations SET revision = 3, body = $1 WHERE id = "
      "'s1') INSERT INTO generation_revisions (id, revision, created_ns, "
      "body) VALUES ('s1', 3, 0, $1)",
      1, nullptr, values, lengths, formats, 0);
  ASSERT_EQ(PQresultStatus(res), PGRES_COMMAND_OK) << PQresultErrorMessage(res);
  PQclear(res);
  ASSERT_TRUE(Eventually([&] { return rec.Has("s1", 3); }));
  EXPECT_EQ(a->feed_stats().notifications, notified);
  EXPECT_GE(a->feed_stats().delivered_by_scan, 1);
  EXPECT_EQ(rec.changes().back().generation->upstream_status(), "from sql");
}

// Sequence numbers are taken before commit, so they can commit out of
// order. A transaction that took a smaller change_seq and commits after a
// larger one was seen must still be delivered by the catch-up: the cursor
// waits for it.
TEST_F(PostgresStoreTest, CatchUpWaitsForChangesThatCommitOutOfOrder) {
  PostgresOptions oa = Options("a");
  oa.feed_backstop_interval = absl::Milliseconds(50);
  auto a = OpenOrDie(db_->url(), oa);
  auto b = OpenOrDie(db_->url(), Options("b"));
  ASSERT_TRUE(a && b);
  Recorder rec(a.get());
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().connected; }));
  VG_ASSERT_OK(b->Insert(MakeRecord("slow"), {}, nullptr));
  VG_ASSERT_OK(b->Insert(MakeRecord("fast"), {}, nullptr));
  ASSERT_TRUE(
      Eventually([&] { return rec.Has("slow", 1) && rec.Has("fast", 1); }));

  // A slow writer: takes its change_seq now, commits later, and (being raw
  // SQL) sends no NOTIFY, so only the catch-up can find it.
  Record slow = **b->Get("slow");
  slow.generation.set_revision(2);
  std::string body;
  ASSERT_TRUE(slow.generation.SerializeToString(&body));
  PGconn* writer = PQconnectdb(db_->url().c_str());
  ASSERT_EQ(PQstatus(writer), CONNECTION_OK);
  PQclear(PQexec(writer, "BEGIN"));
  const char* values[1] = {body.data()};
  const int lengths[1] = {static_cast<int>(body.size())};
  const int formats[1] = {1};
  PGresult* res = PQexecParams(
      writer,
      "WITH u AS (UPDATE generations SET revision = 2, body = $1 WHERE id = "
      "'slow') INSERT INTO generation_revisions (id, revision, created_ns, "
      "body) VALUES ('slow', 2, 0, $1) RETURNING change_seq",
      1, nullptr, values, lengths, formats, 0);
  ASSERT_EQ(PQresultStatus(res), PGRES_TUPLES_OK) << PQresultErrorMessage(res);
  const int64_t slow_seq = std::stoll(PQgetvalue(res, 0, 0));
  PQclear(res);

  // Meanwhile a later change_seq commits and is seen.
  Bump(b.get(), "fast");
  ASSERT_TRUE(Eventually([&] { return rec.Has("fast", 2); }));
  const int64_t scans = a->feed_stats().scans;
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().scans >= scans + 3; }));
  EXPECT_LT(a->feed_stats().cursor, slow_seq);  // held back
  EXPECT_FALSE(rec.Has("slow", 2));

  res = PQexec(writer, "COMMIT");
  ASSERT_EQ(PQresultStatus(res), PGRES_COMMAND_OK);
  PQclear(res);
  PQfinish(writer);
  ASSERT_TRUE(Eventually([&] { return rec.Has("slow", 2); }));
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().cursor >= slow_seq; }));
  ExpectIncreasingPerId(rec.changes());
}

// Superseded revisions leave the history once older than the retention;
// the latest always stays (a reconnecting feed needs it).
TEST_F(PostgresStoreTest, RevisionHistoryIsPrunedPastTheRetention) {
  PostgresOptions o = Options("a");
  o.revision_retention = absl::Minutes(10);
  auto a = OpenOrDie(db_->url(), o);
  ASSERT_NE(a, nullptr);
  VG_ASSERT_OK(a->Insert(MakeRecord("h1"), {}, nullptr));
  Record r = **a->Get("h1");
  auto write = [&](int64_t revision, absl::Duration after) {
    r.generation.set_revision(revision);
    *r.generation.mutable_update_time() = Ts(kBase + after);
    ++r.version;
    VG_ASSERT_OK(a->Update(r, {}));
  };
  write(2, absl::Minutes(1));
  write(3, absl::Minutes(2));
  EXPECT_EQ(db_->Query("SELECT revision FROM generation_revisions ORDER BY "
                       "revision"),
            (std::vector<std::string>{"1", "2", "3"}));
  write(3, absl::Minutes(20));  // no new revision: nothing pruned
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM generation_revisions"), "3");
  write(4, absl::Minutes(11) + absl::Seconds(30));  // 1 (t=0) and 2 (t=1m) go
  EXPECT_EQ(db_->Query("SELECT revision FROM generation_revisions ORDER BY "
                       "revision"),
            (std::vector<std::string>{"3", "4"}));
  // The history goes with its generation.
  VG_ASSERT_OK(a->Delete("h1", r.version));
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM generation_revisions"), "0");
}

TEST_F(PostgresStoreTest, SetListenerNullStopsDeliveryAndWaitsOutACall) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  ASSERT_NE(a, nullptr);
  std::atomic<int> calls{0};
  a->feed()->SetListener([&](const Change&) {
    absl::SleepFor(absl::Milliseconds(50));  // a slow (bad) listener
    ++calls;
  });
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().connected; }));
  VG_ASSERT_OK(a->Insert(MakeRecord("l1"), {}, nullptr));
  ASSERT_TRUE(Eventually([&] { return a->feed_stats().delivered >= 1; }));
  a->feed()->SetListener(nullptr);
  const int after = calls.load();
  EXPECT_EQ(after, 1);  // the running call finished before SetListener
  // Read before the insert: its notification may be counted at once.
  const int64_t notified = a->feed_stats().notifications;
  VG_ASSERT_OK(a->Insert(MakeRecord("l2"), {}, nullptr));
  ASSERT_TRUE(
      Eventually([&] { return a->feed_stats().notifications > notified; }));
  EXPECT_EQ(calls.load(), after);
}

// ---- Connection pool ----

TEST_F(PostgresStoreTest, PoolHealsAfterItsSessionsAreTerminated) {
  auto a = OpenOrDie(db_->url(), Options("pool-a"));
  ASSERT_NE(a, nullptr);
  VG_ASSERT_OK(a->Insert(MakeRecord("p1"), {}, nullptr));
  ASSERT_TRUE(a->Get("p1").ok());
  EXPECT_EQ(db_->Scalar("SELECT count(pg_terminate_backend(pid)) > 0 FROM "
                        "pg_stat_activity WHERE application_name = 'pool-a' "
                        "AND datname = current_database()"),
            "t");
  // Reads and writes both go through on fresh connections.
  absl::StatusOr<std::optional<Record>> got = a->Get("p1");
  ASSERT_TRUE(got.ok()) << got.status();
  Record r = **got;
  r.generation.set_revision(2);
  ++r.version;
  VG_EXPECT_OK(a->Update(r, {}));
  VG_EXPECT_OK(a->CheckIntegrity());
}

TEST_F(PostgresStoreTest, UpdateWithOutboxIsAtomicWithTheCompareAndSet) {
  auto a = OpenOrDie(db_->url(), Options("a"));
  ASSERT_NE(a, nullptr);
  VG_ASSERT_OK(a->Insert(MakeRecord("o1"), {}, nullptr));
  Record r = **a->Get("o1");
  r.generation.set_revision(2);
  r.version = 5;  // wrong version: neither the row nor the outbox changes
  Delivery d;
  d.generation_id = "o1";
  d.revision = 2;
  d.url = "https://example.invalid/hook";
  d.body = "{}";
  EXPECT_EQ(a->Update(r, {d}).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(a->OutboxStats()->first, 0);
  r.version = 2;
  VG_EXPECT_OK(a->Update(r, {d, d}));
  EXPECT_EQ(a->OutboxStats()->first, 2);
}

}  // namespace
}  // namespace videogen::store
