// SqliteStore benchmark: durable write throughput (Insert with admission
// checks, compare-and-set Update), claiming the active generations at
// startup, and List paging, for N generations (default 10,000). Prints a
// markdown table.
//
//   store_bench [--n=10000] [--dir=/path/on/the/disk/to/measure]
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/store/sqlite_store.h"

ABSL_FLAG(int, n, 10000, "generations to store");
ABSL_FLAG(std::string, dir, "",
          "parent directory for the databases (default: $TMPDIR or /tmp)");

namespace videogen::store {
namespace {

namespace fs = std::filesystem;

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t ns = absl::ToUnixNanos(t);
  ts.set_seconds(ns / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return ts;
}

// A record shaped like the server's: a ~250-character prompt, two labels,
// an upstream id, a request_id.
Record MakeRecord(int i, int revision) {
  const absl::Time created =
      absl::FromUnixSeconds(1'700'000'000) + absl::Milliseconds(i);
  Record r;
  v1::Generation& g = r.generation;
  g.set_id(absl::StrFormat("gen_%016d", i));
  g.set_state(revision == 1 ? v1::Generation::STATE_QUEUED
                            : v1::Generation::STATE_GENERATING);
  g.set_revision(revision);
  g.set_upstream_id(absl::StrFormat(
      "%08x-1111-2222-3333-444455556666:kling-video/v2/master/text-to-video",
      i));
  g.set_upstream_status(revision == 1 ? "queued" : "generating");
  v1::GenerateRequest* req = g.mutable_request();
  req->set_request_id(absl::StrCat("req-", i));
  req->set_model("klingai/v2-master-text-to-video");
  req->set_prompt(std::string(250, 'p'));
  req->set_aspect_ratio("16:9");
  req->set_duration_seconds(5);
  (*req->mutable_labels())["team"] = i % 2 ? "video" : "ads";
  (*req->mutable_labels())["env"] = "prod";
  *g.mutable_labels() = req->labels();
  *g.mutable_create_time() = Ts(created);
  *g.mutable_update_time() = Ts(created + absl::Seconds(revision));
  r.deadline = created + absl::Minutes(30);
  return r;
}

struct Row {
  std::string what;
  std::string figure;
  std::string note;
};

void Die(const absl::Status& s) {
  std::fprintf(stderr, "store_bench: %s\n", std::string(s.message()).c_str());
  std::exit(1);
}

std::unique_ptr<SqliteStore> OpenOrDie(const std::string& dir,
                                       SqliteOptions options = {}) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> s =
      SqliteStore::Open(dir, options);
  if (!s.ok()) Die(s.status());
  return std::move(*s);
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// Inserts records [0, n) one transaction each, with the quota checks a
// tenant key brings; returns the per-Insert latencies.
std::vector<absl::Duration> InsertAll(SqliteStore& store, int n) {
  Admission limits;
  limits.max_concurrent = 1'000'000;
  limits.creates_per_minute = 1'000'000;
  limits.video_seconds_budget = 1'000'000'000;
  std::vector<absl::Duration> lat;
  lat.reserve(n);
  for (int i = 0; i < n; ++i) {
    Record r = MakeRecord(i, 1);
    const absl::Time start = absl::Now();
    if (absl::Status s = store.Insert(r, limits, nullptr); !s.ok()) Die(s);
    lat.push_back(absl::Now() - start);
  }
  return lat;
}

// Moves records [0, n) to revision 2 by compare-and-set (version 1 -> 2),
// one transaction each; returns the per-Update latencies.
std::vector<absl::Duration> UpdateAll(SqliteStore& store, int n) {
  std::vector<absl::Duration> lat;
  lat.reserve(n);
  for (int i = 0; i < n; ++i) {
    Record r = MakeRecord(i, 2);
    r.version = 2;
    const absl::Time start = absl::Now();
    if (absl::Status s = store.Update(r, {}); !s.ok()) Die(s);
    lat.push_back(absl::Now() - start);
  }
  return lat;
}

std::string Throughput(const std::vector<absl::Duration>& lat) {
  absl::Duration total;
  for (absl::Duration d : lat) total += d;
  std::vector<absl::Duration> sorted = lat;
  std::sort(sorted.begin(), sorted.end());
  const auto pct = [&](double p) {
    return Ms(sorted[std::min(sorted.size() - 1,
                              static_cast<size_t>(p * sorted.size()))]);
  };
  return absl::StrFormat("%.0f writes/s (p50 %.2f ms, p99 %.2f ms)",
                         lat.size() / absl::ToDoubleSeconds(total), pct(0.50),
                         pct(0.99));
}

int Run(int n, const std::string& parent) {
  const std::string root = parent + "/store_bench.XXXXXX";
  std::string tmpl = root;
  if (!::mkdtemp(tmpl.data())) Die(absl::InternalError("mkdtemp failed"));
  const std::string full_dir = tmpl + "/full";
  const std::string normal_dir = tmpl + "/normal";
  std::vector<Row> rows;

  {
    std::unique_ptr<SqliteStore> store = OpenOrDie(full_dir);
    rows.push_back({absl::StrCat("insert ", n, ", synchronous=FULL"),
                    Throughput(InsertAll(*store, n)),
                    "one durable transaction per Insert, quota checks "
                    "included (the server's setting)"});
    rows.push_back({absl::StrCat("update ", n, ", synchronous=FULL"),
                    Throughput(UpdateAll(*store, n)),
                    "compare-and-set on the version, labels rewritten"});
  }
  {
    SqliteOptions normal;
    normal.sync = SqliteOptions::Sync::kNormal;
    std::unique_ptr<SqliteStore> store = OpenOrDie(normal_dir, normal);
    rows.push_back({absl::StrCat("insert ", n, ", synchronous=NORMAL"),
                    Throughput(InsertAll(*store, n)),
                    "for comparison only; not durable on power loss"});
  }
  {
    const absl::Time start = absl::Now();
    std::unique_ptr<SqliteStore> store = OpenOrDie(full_dir);
    const absl::Duration open = absl::Now() - start;
    const absl::Time now = absl::Now();
    absl::StatusOr<std::vector<Record>> active =
        store->ClaimActive("bench", now, now + absl::Seconds(30), n);
    if (!active.ok()) Die(active.status());
    const absl::Duration total = absl::Now() - start;
    if (static_cast<int>(active->size()) != n) {
      Die(absl::InternalError(
          absl::StrCat("ClaimActive returned ", active->size(), " of ", n)));
    }
    rows.push_back({absl::StrCat("Open + ClaimActive (", n, " active)"),
                    absl::StrFormat("%.1f ms", Ms(total)),
                    absl::StrFormat("Open %.1f ms, ClaimActive %.1f ms (one "
                                    "transaction, versions bumped)",
                                    Ms(open), Ms(total - open))});
    const absl::Time check_start = absl::Now();
    if (absl::Status s = store->CheckIntegrity(); !s.ok()) Die(s);
    rows.push_back({"CheckIntegrity (PRAGMA quick_check)",
                    absl::StrFormat("%.1f ms", Ms(absl::Now() - check_start)),
                    "run once at startup"});
  }
  {
    const absl::Time start = absl::Now();
    std::unique_ptr<SqliteStore> store = OpenOrDie(full_dir);
    ListQuery q;
    q.page_size = 50;
    absl::StatusOr<ListPage> page = store->List(q);
    if (!page.ok()) Die(page.status());
    const absl::Duration first = absl::Now() - start;
    ListQuery filtered = q;
    filtered.labels = {{"team", "video"}, {"env", "prod"}};
    filtered.states = {v1::Generation::STATE_GENERATING};
    const absl::Time t2 = absl::Now();
    absl::StatusOr<ListPage> fpage = store->List(filtered);
    if (!fpage.ok()) Die(fpage.status());
    const absl::Duration filtered_time = absl::Now() - t2;
    // Page to the end, to show deep pages cost the same as the first.
    const absl::Time t3 = absl::Now();
    int pages = 0;
    for (ListQuery next = q;; ++pages) {
      absl::StatusOr<ListPage> p = store->List(next);
      if (!p.ok()) Die(p.status());
      if (!p->next) break;
      next.after = p->next;
    }
    const absl::Duration walk = absl::Now() - t3;
    rows.push_back({"Open + List first page (50)",
                    absl::StrFormat("%.1f ms", Ms(first)), ""});
    rows.push_back({"List first page, 2 labels + state filter",
                    absl::StrFormat("%.2f ms", Ms(filtered_time)), ""});
    rows.push_back({absl::StrCat("List all ", pages + 1, " pages of 50"),
                    absl::StrFormat("%.2f ms/page", Ms(walk) / (pages + 1)),
                    "keyset cursor, no OFFSET"});
  }
  std::error_code ec;
  const uintmax_t bytes = fs::file_size(full_dir + "/videogen.db", ec);
  rows.push_back({"database size",
                  absl::StrFormat("%.1f MiB", bytes / 1048576.0),
                  absl::StrCat(n, " generations, after close")});
  fs::remove_all(tmpl, ec);

  std::printf("| %s | %s | %s |\n|---|---|---|\n", "measure", "result", "note");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %s |\n", r.what.c_str(), r.figure.c_str(),
                r.note.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace videogen::store

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::string dir = absl::GetFlag(FLAGS_dir);
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = tmp && *tmp ? tmp : "/tmp";
  }
  return videogen::store::Run(absl::GetFlag(FLAGS_n), dir);
}
