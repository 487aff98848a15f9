// Webhook Dispatcher benchmark: N terminal changes (each a Store::Update
// carrying its DeliveriesFor outbox entry) delivered by one Dispatcher to one
// healthy receiver on loopback (cpp-httplib). Two shapes:
//   - burst (default): all N written first, then the dispatcher starts;
//     delays run from its start;
//   - --over=60s: the N changes are written at an even rate over that time
//     while the dispatcher runs (Kick after each, as the server does);
//     delays run from each change.
// Prints, per store, deliveries per second and the delay to the 2xx (p50,
// p99, max) as a markdown table. One receiver host is the hardest case for
// the per-host bound (--max_per_host, default 4 like the server).
//
//   webhooks_bench [--n=1000] [--over=60s] [--max_per_host=4] [--dir=...]
#include <httplib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/store/memory_store.h"
#include "server/store/sqlite_store.h"
#include "server/util/proto_time.h"
#include "server/webhooks/deliveries.h"
#include "server/webhooks/dispatcher.h"

ABSL_FLAG(int, n, 1000, "deliveries");
ABSL_FLAG(int, max_per_host, 4, "attempts at once to the one receiver");
ABSL_FLAG(absl::Duration, over, absl::ZeroDuration(),
          "write the changes over this long while delivering (0: burst)");
ABSL_FLAG(std::string, dir, "",
          "parent directory of the SQLite database (default: $TMPDIR or /tmp)");

namespace videogen::webhooks {
namespace {

namespace fs = std::filesystem;

struct Result {
  std::string store;
  int n = 0;
  absl::Duration total;
  std::vector<absl::Duration> delays;
  int received = 0;
};

absl::Duration Percentile(std::vector<absl::Duration> v, double p) {
  if (v.empty()) return absl::ZeroDuration();
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  return v[i];
}

// Writes n QUEUED generations.
bool InsertAll(store::Store* s, int n, const std::string& url) {
  for (int i = 0; i < n; ++i) {
    store::Record r;
    v1::Generation& g = r.generation;
    g.set_id(absl::StrCat("bench-", i));
    g.set_state(v1::Generation::STATE_QUEUED);
    g.set_revision(1);
    g.mutable_request()->set_prompt(std::string(250, 'p'));
    g.mutable_request()->set_webhook_url(url);
    *g.mutable_create_time() = util::ToTimestamp(absl::Now());
    *g.mutable_update_time() = g.create_time();
    if (!s->Insert(r, store::Admission{}, nullptr).ok()) return false;
  }
  return true;
}

// Moves generation i to COMPLETED with its outbox entry, as the tracker does.
bool Complete(store::Store* s, int i) {
  {
    absl::StatusOr<std::optional<store::Record>> got =
        s->Get(absl::StrCat("bench-", i));
    if (!got.ok() || !got->has_value()) return false;
    store::Record r = **got;
    r.generation.set_state(v1::Generation::STATE_COMPLETED);
    r.generation.set_revision(2);
    r.generation.set_done(true);
    r.generation.mutable_video()->set_url("https://cdn.example.com/v.mp4");
    ++r.version;
    v1::GenerationEvent event;
    event.set_type(v1::GenerationEvent::TYPE_UPDATE);
    *event.mutable_generation() = r.generation;
    *event.mutable_observe_time() = util::ToTimestamp(absl::Now());
    if (!s->Update(r, DeliveriesFor(r.generation, event)).ok()) return false;
  }
  return true;
}

Result Run(const std::string& name, store::Store* s, int n) {
  absl::Mutex mu;
  int received = 0;
  httplib::Server receiver;
  receiver.Post("/hook", [&](const httplib::Request&, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    ++received;
    res.status = 204;
  });
  const int port = receiver.bind_to_any_port("127.0.0.1");
  std::thread serve([&] { receiver.listen_after_bind(); });

  Result result;
  result.store = name;
  result.n = n;
  const absl::Duration over = absl::GetFlag(FLAGS_over);
  bool ok = InsertAll(s, n, absl::StrCat("http://127.0.0.1:", port, "/hook"));
  for (int i = 0; ok && over == absl::ZeroDuration() && i < n; ++i) {
    ok = Complete(s, i);
  }
  if (!ok) std::fprintf(stderr, "%s: writing the store failed\n", name.c_str());
  std::vector<absl::Duration> delays;
  absl::Mutex delays_mu;
  DispatcherOptions o;
  o.owner = "bench";
  o.allow_insecure = true;
  o.max_per_host = absl::GetFlag(FLAGS_max_per_host);
  o.secret_for = [](const std::string&) -> absl::StatusOr<std::string> {
    return absl::StrCat("whsec_", absl::Base64Escape("bench-key-0123456789"));
  };
  const absl::Time start = absl::Now();
  o.hooks.on_settled = [&](std::string_view, absl::Duration since_change) {
    absl::MutexLock lock(&delays_mu);
    delays.push_back(over == absl::ZeroDuration() ? absl::Now() - start
                                                  : since_change);
  };
  auto dispatcher = Dispatcher::Create(s, o);
  if (!dispatcher.ok()) {
    std::fprintf(stderr, "%s\n", dispatcher.status().ToString().c_str());
    std::exit(1);
  }
  for (int i = 0; over > absl::ZeroDuration() && i < n; ++i) {
    absl::SleepFor(start + over * i / n - absl::Now());
    if (!Complete(s, i))
      std::fprintf(stderr, "%s: update failed\n", name.c_str());
    (*dispatcher)->Kick();
  }
  const absl::Time deadline = absl::Now() + absl::Minutes(10);
  while (absl::Now() < deadline) {
    absl::StatusOr<std::pair<int64_t, absl::Time>> stats = s->OutboxStats();
    if (stats.ok() && stats->first == 0) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  result.total = absl::Now() - start;
  (*dispatcher)->Stop();
  receiver.stop();
  serve.join();
  result.delays = delays;
  result.received = received;
  return result;
}

void Print(const std::vector<Result>& results) {
  std::printf(
      "| store | deliveries | received | total | per second | p50 | p99 | "
      "max |\n|---|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    std::printf(
        "| %s | %d | %d | %s | %.0f | %s | %s | %s |\n", r.store.c_str(), r.n,
        r.received,
        absl::FormatDuration(absl::Trunc(r.total, absl::Milliseconds(1)))
            .c_str(),
        r.n / absl::ToDoubleSeconds(r.total),
        absl::FormatDuration(
            absl::Trunc(Percentile(r.delays, 0.5), absl::Milliseconds(1)))
            .c_str(),
        absl::FormatDuration(
            absl::Trunc(Percentile(r.delays, 0.99), absl::Milliseconds(1)))
            .c_str(),
        absl::FormatDuration(
            absl::Trunc(Percentile(r.delays, 1.0), absl::Milliseconds(1)))
            .c_str());
  }
}

int Main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int n = absl::GetFlag(FLAGS_n);
  std::string parent = absl::GetFlag(FLAGS_dir);
  if (parent.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp != nullptr ? tmp : "/tmp";
  }
  const fs::path dir =
      fs::path(parent) / absl::StrCat("webhooks_bench_", getpid());
  std::vector<Result> results;
  {
    store::MemoryStore memory;
    results.push_back(Run("memory", &memory, n));
  }
  {
    auto sqlite = store::SqliteStore::Open(dir.string());
    if (!sqlite.ok()) {
      std::fprintf(stderr, "%s\n", sqlite.status().ToString().c_str());
      return 1;
    }
    results.push_back(Run("sqlite (sync=full)", sqlite->get(), n));
  }
  fs::remove_all(dir);
  Print(results);
  for (const Result& r : results) {
    if (r.received != r.n) {
      std::fprintf(stderr, "%s: %d of %d delivered\n", r.store.c_str(),
                   r.received, r.n);
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace videogen::webhooks

int main(int argc, char** argv) { return videogen::webhooks::Main(argc, argv); }
