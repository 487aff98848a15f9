// Conformance tests for store::Store (the same cases run against SqliteStore
// on a real file and against MemoryStore), then SQLite-only tests: reopen,
// migrations, kill -9, and the startup errors for bad data dirs.
#include "server/store/store.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/store/sqlite_store.h"
#ifdef VIDEOGEN_HAVE_MEMORY_STORE
#include "server/store/memory_store.h"
#endif

namespace videogen::store {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;
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
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

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

Record MakeRecord(const std::string& id, absl::Time created,
                  State state = v1::Generation::STATE_QUEUED,
                  std::map<std::string, std::string> labels = {},
                  const std::string& request_id = "") {
  Record r;
  v1::Generation& g = r.generation;
  g.set_id(id);
  g.set_state(state);
  g.set_revision(1);
  g.set_done(Terminal(state));
  g.mutable_request()->set_request_id(request_id);
  g.mutable_request()->set_prompt("a red fox running through snow");
  *g.mutable_create_time() = Ts(created);
  *g.mutable_update_time() = Ts(created + absl::Seconds(1));
  for (const auto& [k, v] : labels) {
    (*g.mutable_labels())[k] = v;
    (*g.mutable_request()->mutable_labels())[k] = v;
  }
  r.deadline = created + absl::Minutes(30);
  return r;
}

// Every field set, with nanosecond times, to catch lossy storage.
Record FullRecord() {
  Record r =
      MakeRecord("gen_full_0123456789abc", kBase + absl::Nanoseconds(123456789),
                 v1::Generation::STATE_FAILED,
                 {{"team", "video"}, {"env", "prod"}}, "req-full:1");
  v1::Generation& g = r.generation;
  g.set_revision(7);
  g.set_upstream_id("10c09c56-aaaa:kling-video/v2/master/text-to-video");
  g.set_upstream_status("weird-new-status");
  v1::GenerateRequest* req = g.mutable_request();
  req->set_model("klingai/v2-master-text-to-video");
  req->set_negative_prompt("blur");
  req->set_aspect_ratio("9:16");
  req->set_duration_seconds(10);
  req->set_cfg_scale(0.25f);
  req->set_image_url("https://example.com/a.png");
  v1::Video* video = g.mutable_video();
  video->set_url("https://cdn.example.com/v.mp4");
  video->set_content_type("video/mp4");
  video->set_file_name("v.mp4");
  video->set_file_size_bytes(1234567);
  video->set_duration_seconds(10.04);
  g.mutable_error()->set_code(4);
  g.mutable_error()->set_reason("DEADLINE_EXCEEDED");
  g.mutable_error()->set_message("no result after 30m");
  g.mutable_usage()->set_tokens_used(120000);
  g.mutable_usage()->set_credits_used(42);
  *g.mutable_update_time() = Ts(kBase + absl::Nanoseconds(987654321));
  r.deadline = kBase + absl::Minutes(30) + absl::Nanoseconds(5);
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

std::vector<std::string> Ids(const std::vector<v1::Generation>& gs) {
  std::vector<std::string> ids;
  for (const auto& g : gs) ids.push_back(g.id());
  return ids;
}

std::vector<std::string> Ids(const std::vector<Record>& rs) {
  std::vector<std::string> ids;
  for (const auto& r : rs) ids.push_back(r.generation.id());
  return ids;
}

struct SqliteFactory {
  static absl::StatusOr<std::unique_ptr<Store>> Make(const std::string& dir) {
    absl::StatusOr<std::unique_ptr<SqliteStore>> s = SqliteStore::Open(dir);
    if (!s.ok()) return s.status();
    return std::unique_ptr<Store>(std::move(*s));
  }
};

#ifdef VIDEOGEN_HAVE_MEMORY_STORE
struct MemoryFactory {
  static absl::StatusOr<std::unique_ptr<Store>> Make(const std::string&) {
    return std::unique_ptr<Store>(std::make_unique<MemoryStore>());
  }
};
using Implementations = ::testing::Types<SqliteFactory, MemoryFactory>;
#else
using Implementations = ::testing::Types<SqliteFactory>;
#endif

template <typename Factory>
class StoreConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    absl::StatusOr<std::unique_ptr<Store>> s = Factory::Make(dir_.path());
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  void PutOk(const Record& r) {
    absl::Status s = store_->Put(r);
    ASSERT_TRUE(s.ok()) << s;
  }

  std::vector<std::string> AllPages(ListQuery q) {
    std::vector<std::string> ids;
    for (int pages = 0; pages < 100; ++pages) {
      absl::StatusOr<ListPage> page = store_->List(q);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      for (const auto& g : page->generations) ids.push_back(g.id());
      if (!page->next) break;
      q.after = page->next;
    }
    return ids;
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TYPED_TEST_SUITE(StoreConformance, Implementations);

TYPED_TEST(StoreConformance, PutGetRoundTripsEveryField) {
  const Record full = FullRecord();
  this->PutOk(full);
  absl::StatusOr<std::optional<Record>> got =
      this->store_->Get(full.generation.id());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  EXPECT_TRUE(SameGeneration((*got)->generation, full.generation));
  EXPECT_EQ((*got)->deadline, full.deadline);

  absl::StatusOr<std::optional<Record>> missing = this->store_->Get("nope");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
}

TYPED_TEST(StoreConformance, InfiniteDeadlineRoundTrips) {
  Record r = MakeRecord("g1", kBase);
  r.deadline = absl::InfiniteFuture();
  this->PutOk(r);
  absl::StatusOr<std::optional<Record>> got = this->store_->Get("g1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->deadline, absl::InfiniteFuture());
}

TYPED_TEST(StoreConformance, PutReplacesTheRecord) {
  this->PutOk(
      MakeRecord("g1", kBase, v1::Generation::STATE_QUEUED, {{"team", "a"}}));
  Record next =
      MakeRecord("g1", kBase, v1::Generation::STATE_COMPLETED, {{"team", "b"}});
  next.generation.set_revision(2);
  next.generation.mutable_video()->set_url("https://x/v.mp4");
  this->PutOk(next);

  absl::StatusOr<std::optional<Record>> got = this->store_->Get("g1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_TRUE(SameGeneration((*got)->generation, next.generation));

  ListQuery old_label;
  old_label.labels = {{"team", "a"}};
  EXPECT_THAT(this->AllPages(old_label), ::testing::IsEmpty());
  ListQuery new_label;
  new_label.labels = {{"team", "b"}};
  EXPECT_THAT(this->AllPages(new_label), ElementsAreArray({"g1"}));

  absl::StatusOr<std::vector<Record>> active = this->store_->LoadActive();
  ASSERT_TRUE(active.ok());
  EXPECT_TRUE(active->empty()) << "g1 is COMPLETED now";
  EXPECT_THAT(this->AllPages(ListQuery{}), ElementsAreArray({"g1"}));
}

TYPED_TEST(StoreConformance, RequestIdIsUniqueAndFindsItsGeneration) {
  this->PutOk(
      MakeRecord("a", kBase, v1::Generation::STATE_QUEUED, {}, "req-1"));
  absl::StatusOr<std::optional<Record>> got =
      this->store_->GetByRequestId("req-1");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->generation.id(), "a");

  absl::Status clash = this->store_->Put(
      MakeRecord("b", kBase, v1::Generation::STATE_QUEUED, {}, "req-1"));
  EXPECT_EQ(clash.code(), absl::StatusCode::kAlreadyExists) << clash;
  absl::StatusOr<std::optional<Record>> b = this->store_->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->has_value()) << "a refused Put must not store anything";

  // The owner may rewrite its own record.
  Record a2 =
      MakeRecord("a", kBase, v1::Generation::STATE_GENERATING, {}, "req-1");
  this->PutOk(a2);

  // Empty request_ids never clash and are never found.
  this->PutOk(MakeRecord("c", kBase));
  this->PutOk(MakeRecord("d", kBase));
  absl::StatusOr<std::optional<Record>> empty =
      this->store_->GetByRequestId("");
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->has_value());
  absl::StatusOr<std::optional<Record>> unknown =
      this->store_->GetByRequestId("req-2");
  ASSERT_TRUE(unknown.ok());
  EXPECT_FALSE(unknown->has_value());

  // Deleting the owner frees the key.
  ASSERT_TRUE(this->store_->Delete("a").ok());
  this->PutOk(
      MakeRecord("b", kBase, v1::Generation::STATE_QUEUED, {}, "req-1"));
  got = this->store_->GetByRequestId("req-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->generation.id(), "b");
}

TYPED_TEST(StoreConformance, DeleteRemovesEverywhere) {
  this->PutOk(MakeRecord("g1", kBase, v1::Generation::STATE_QUEUED,
                         {{"team", "a"}}, "req-1"));
  this->PutOk(MakeRecord("g2", kBase + absl::Seconds(1)));
  ASSERT_TRUE(this->store_->Delete("g1").ok());
  ASSERT_TRUE(this->store_->Delete("g1").ok()) << "missing ids are OK";

  absl::StatusOr<std::optional<Record>> got = this->store_->Get("g1");
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value());
  got = this->store_->GetByRequestId("req-1");
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value());
  EXPECT_THAT(this->AllPages(ListQuery{}), ElementsAreArray({"g2"}));
  ListQuery by_label;
  by_label.labels = {{"team", "a"}};
  EXPECT_THAT(this->AllPages(by_label), ::testing::IsEmpty());
  absl::StatusOr<std::vector<Record>> active = this->store_->LoadActive();
  ASSERT_TRUE(active.ok());
  EXPECT_THAT(Ids(*active), ElementsAreArray({"g2"}));
}

TYPED_TEST(StoreConformance, LoadActiveReturnsOnlyNonTerminal) {
  const State states[] = {
      v1::Generation::STATE_QUEUED,    v1::Generation::STATE_GENERATING,
      v1::Generation::STATE_COMPLETED, v1::Generation::STATE_FAILED,
      v1::Generation::STATE_CANCELLED, v1::Generation::STATE_QUEUED};
  int i = 0;
  for (State s : states) {
    this->PutOk(MakeRecord(absl::StrCat("g", i), kBase + absl::Seconds(i), s));
    ++i;
  }
  // A submit intent: non-terminal with no upstream id yet.
  Record intent = MakeRecord("intent", kBase);
  intent.generation.clear_upstream_id();
  this->PutOk(intent);

  absl::StatusOr<std::vector<Record>> active = this->store_->LoadActive();
  ASSERT_TRUE(active.ok()) << active.status();
  EXPECT_THAT(Ids(*active),
              UnorderedElementsAreArray({"g0", "g1", "g5", "intent"}));
  for (const Record& r : *active) {
    EXPECT_FALSE(r.generation.done());
    absl::StatusOr<std::optional<Record>> got =
        this->store_->Get(r.generation.id());
    ASSERT_TRUE(got.ok() && got->has_value());
    EXPECT_EQ(r.deadline, (*got)->deadline);
    EXPECT_NE(r.deadline, absl::InfiniteFuture());
  }
}

// 25 records, newest first; create times repeat so the id breaks ties.
std::vector<Record> TwentyFive() {
  std::vector<Record> rs;
  for (int i = 0; i < 25; ++i) {
    rs.push_back(MakeRecord(
        absl::StrCat("id", std::string(1, char('a' + i))),
        kBase + absl::Seconds(i / 3),
        i % 4 == 0 ? v1::Generation::STATE_COMPLETED
                   : v1::Generation::STATE_QUEUED,
        i % 2 == 0
            ? std::map<std::string, std::string>{{"team", "a"}, {"env", "prod"}}
            : std::map<std::string, std::string>{{"team", "a"}}));
  }
  return rs;
}

std::vector<std::string> NewestFirst(std::vector<Record> rs) {
  std::sort(rs.begin(), rs.end(), [](const Record& x, const Record& y) {
    auto key = [](const Record& r) {
      return std::make_pair(std::make_pair(r.generation.create_time().seconds(),
                                           r.generation.create_time().nanos()),
                            r.generation.id());
    };
    return key(x) > key(y);
  });
  return Ids(rs);
}

TYPED_TEST(StoreConformance, ListPagesNewestFirstWithoutDupsOrGaps) {
  std::vector<Record> rs = TwentyFive();
  // Insert in a scrambled order so storage order is not list order.
  for (int i = 0; i < 25; ++i) this->PutOk(rs[(i * 7) % 25]);

  ListQuery q;
  q.page_size = 10;
  std::vector<size_t> sizes;
  std::vector<std::string> ids;
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<ListPage> page = this->store_->List(q);
    ASSERT_TRUE(page.ok()) << page.status();
    sizes.push_back(page->generations.size());
    for (const auto& g : page->generations) ids.push_back(g.id());
    if (!page->next) break;
    EXPECT_EQ(page->next->id, page->generations.back().id());
    q.after = page->next;
  }
  EXPECT_THAT(sizes, ElementsAreArray({10u, 10u, 5u}));
  EXPECT_THAT(ids, ElementsAreArray(NewestFirst(rs)));
}

TYPED_TEST(StoreConformance, ListFiltersByState) {
  std::vector<Record> rs = TwentyFive();
  for (const Record& r : rs) this->PutOk(r);
  std::vector<Record> done;
  for (const Record& r : rs) {
    if (r.generation.state() == v1::Generation::STATE_COMPLETED) {
      done.push_back(r);
    }
  }
  ListQuery q;
  q.page_size = 3;
  q.states = {v1::Generation::STATE_COMPLETED, v1::Generation::STATE_FAILED};
  EXPECT_THAT(this->AllPages(q), ElementsAreArray(NewestFirst(done)));
  q.states = {v1::Generation::STATE_CANCELLED};
  EXPECT_THAT(this->AllPages(q), ::testing::IsEmpty());
}

TYPED_TEST(StoreConformance, ListLabelFilterNeedsEveryLabel) {
  std::vector<Record> rs = TwentyFive();
  for (const Record& r : rs) this->PutOk(r);
  std::vector<Record> prod;
  for (const Record& r : rs) {
    if (r.generation.labels().count("env")) prod.push_back(r);
  }
  ListQuery q;
  q.page_size = 4;
  q.labels = {{"team", "a"}, {"env", "prod"}};
  EXPECT_THAT(this->AllPages(q), ElementsAreArray(NewestFirst(prod)));
  q.labels = {{"team", "a"}};
  EXPECT_THAT(this->AllPages(q), ElementsAreArray(NewestFirst(rs)));
  q.labels = {{"team", "a"}, {"env", "dev"}};
  EXPECT_THAT(this->AllPages(q), ::testing::IsEmpty());
  q.labels = {{"env", "prod"}};
  q.states = {v1::Generation::STATE_COMPLETED};
  std::vector<Record> both;
  for (const Record& r : prod) {
    if (r.generation.state() == v1::Generation::STATE_COMPLETED) {
      both.push_back(r);
    }
  }
  EXPECT_THAT(this->AllPages(q), ElementsAreArray(NewestFirst(both)));
}

TYPED_TEST(StoreConformance, ListStartsStrictlyAfterTheCursor) {
  std::vector<Record> rs = TwentyFive();
  for (const Record& r : rs) this->PutOk(r);
  const std::vector<std::string> order = NewestFirst(rs);
  // The API layer builds cursors from a listed generation.
  absl::StatusOr<std::optional<Record>> fifth = this->store_->Get(order[4]);
  ASSERT_TRUE(fifth.ok() && fifth->has_value());
  const auto& ct = (*fifth)->generation.create_time();
  ListQuery q;
  q.page_size = 3;
  q.after = Cursor{
      absl::FromUnixSeconds(ct.seconds()) + absl::Nanoseconds(ct.nanos()),
      order[4]};
  absl::StatusOr<ListPage> page = this->store_->List(q);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Ids(page->generations),
              ElementsAreArray({order[5], order[6], order[7]}));
  ASSERT_TRUE(page->next.has_value());

  // A cursor past the oldest record gives an empty last page.
  q.after = Cursor{kBase - absl::Hours(1), "zzz"};
  page = this->store_->List(q);
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->generations.empty());
  EXPECT_FALSE(page->next.has_value());
}

TYPED_TEST(StoreConformance, PurgeRemovesOnlyOldTerminalRecords) {
  const absl::Time cutoff = kBase + absl::Hours(1);
  Record old_done =
      MakeRecord("old_done", kBase, v1::Generation::STATE_COMPLETED,
                 {{"team", "a"}}, "req-old");
  Record old_failed =
      MakeRecord("old_failed", kBase, v1::Generation::STATE_FAILED);
  Record old_active = MakeRecord("old_active", kBase);
  Record new_done = MakeRecord("new_done", cutoff + absl::Seconds(5),
                               v1::Generation::STATE_CANCELLED);
  for (const Record* r : {&old_done, &old_failed, &old_active, &new_done}) {
    this->PutOk(*r);
  }
  absl::StatusOr<int64_t> purged = this->store_->PurgeTerminalBefore(cutoff);
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 2);
  EXPECT_THAT(this->AllPages(ListQuery{}),
              ElementsAreArray({"new_done", "old_active"}));
  absl::StatusOr<std::optional<Record>> got =
      this->store_->GetByRequestId("req-old");
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value());
  ListQuery by_label;
  by_label.labels = {{"team", "a"}};
  EXPECT_THAT(this->AllPages(by_label), ::testing::IsEmpty());
  purged = this->store_->PurgeTerminalBefore(cutoff);
  ASSERT_TRUE(purged.ok());
  EXPECT_EQ(*purged, 0);
}

TYPED_TEST(StoreConformance, ConcurrentWritersAllLand) {
  constexpr int kThreads = 4;
  constexpr int kEach = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < kEach; ++i) {
        Record r = MakeRecord(
            absl::StrCat("t", t, "_", i), kBase + absl::Milliseconds(i),
            v1::Generation::STATE_QUEUED, {}, absl::StrCat("req-", t, "-", i));
        EXPECT_TRUE(this->store_->Put(r).ok());
        EXPECT_TRUE(this->store_->Get(r.generation.id()).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  absl::StatusOr<std::vector<Record>> active = this->store_->LoadActive();
  ASSERT_TRUE(active.ok());
  EXPECT_EQ(active->size(), size_t{kThreads * kEach});
}

// ---- SQLite only ----------------------------------------------------------

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

TEST(SqliteStore, ReopenSeesEverything) {
  TempDir dir;
  std::vector<Record> rs = TwentyFive();
  rs.push_back(FullRecord());
  {
    std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
    ASSERT_NE(s, nullptr);
    for (const Record& r : rs) ASSERT_TRUE(s->Put(r).ok());
    ASSERT_TRUE(s->Put(MakeRecord("gone", kBase)).ok());
    ASSERT_TRUE(s->Delete("gone").ok());
  }
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  for (const Record& r : rs) {
    absl::StatusOr<std::optional<Record>> got = s->Get(r.generation.id());
    ASSERT_TRUE(got.ok() && got->has_value()) << r.generation.id();
    EXPECT_TRUE(SameGeneration((*got)->generation, r.generation));
    EXPECT_EQ((*got)->deadline, r.deadline);
  }
  absl::StatusOr<std::optional<Record>> gone = s->Get("gone");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
  absl::StatusOr<std::optional<Record>> by_req =
      s->GetByRequestId("req-full:1");
  ASSERT_TRUE(by_req.ok() && by_req->has_value());
  EXPECT_EQ((*by_req)->generation.id(), FullRecord().generation.id());
  absl::StatusOr<std::vector<Record>> active = s->LoadActive();
  ASSERT_TRUE(active.ok());
  size_t want_active = 0;
  for (const Record& r : rs) want_active += r.generation.done() ? 0 : 1;
  EXPECT_EQ(active->size(), want_active);
  ListQuery q;
  q.page_size = 100;
  absl::StatusOr<ListPage> page = s->List(q);
  ASSERT_TRUE(page.ok());
  EXPECT_THAT(Ids(page->generations), ElementsAreArray(NewestFirst(rs)));
}

// A Put that returned OK survives kill -9 of the process that made it.
TEST(SqliteStore, AcknowledgedPutsSurviveKillDashNine) {
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
      if (!(*s)->Put(r).ok()) ::_exit(4);
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
  absl::StatusOr<std::vector<Record>> active = s->LoadActive();
  ASSERT_TRUE(active.ok()) << active.status();
  EXPECT_GE(active->size(), static_cast<size_t>(acked));
  for (int i = 0; i < acked; ++i) {
    absl::StatusOr<std::optional<Record>> got = s->Get(absl::StrCat("k", i));
    ASSERT_TRUE(got.ok() && got->has_value()) << "acked put k" << i << " lost";
  }
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
    ASSERT_TRUE(s->Put(MakeRecord("g1", kBase)).ok());
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
    EXPECT_TRUE((*s)->Put(MakeRecord("g2", kBase)).ok());
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

TEST(SqliteStore, UsesWalMode) {
  TempDir dir;
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  absl::StatusOr<std::string> mode = s->JournalMode();
  ASSERT_TRUE(mode.ok()) << mode.status();
  EXPECT_EQ(*mode, "wal");
  ASSERT_TRUE(s->Put(MakeRecord("g1", kBase)).ok());
  EXPECT_TRUE(fs::exists(dir.path() + "/videogen.db-wal"));
}

TEST(SqliteStore, CorruptRowIsDataLossNamingTheId) {
  TempDir dir;
  {
    std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(s->Put(MakeRecord("bad_one", kBase)).ok());
    ASSERT_TRUE(s->Put(MakeRecord("good_one", kBase)).ok());
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
  absl::StatusOr<std::vector<Record>> active = s->LoadActive();
  ASSERT_FALSE(active.ok());
  EXPECT_EQ(active.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(active.status().message(), HasSubstr("bad_one"));
  absl::StatusOr<ListPage> page = s->List(ListQuery{});
  ASSERT_FALSE(page.ok());
  EXPECT_EQ(page.status().code(), absl::StatusCode::kDataLoss);
}

TEST(SqliteStore, RejectsNonPositivePageSize) {
  TempDir dir;
  std::unique_ptr<SqliteStore> s = MustOpen(dir.path());
  ASSERT_NE(s, nullptr);
  ListQuery q;
  q.page_size = 0;
  EXPECT_EQ(s->List(q).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace videogen::store
