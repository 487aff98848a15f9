#include "tests/bench/videogen/scenarios.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "tests/bench/videogen/bare_server.h"
#include "tests/bench/videogen/proc.h"
#include "tests/bench/videogen/sse_watchers.h"

namespace videogen::bench {
namespace {

// The simulator's key. Not a secret; still never printed.
constexpr char kSimKey[] = "bench-sim-key";

std::string Dur(absl::Duration d) { return absl::FormatDuration(d); }

std::string LogPath(const Paths& p, const std::string& name) {
  return absl::StrCat(p.log_dir, "/", name, ".log");
}

// Starts videogen-sim; returns its base URL.
absl::StatusOr<std::string> StartSim(const Paths& p, Child& sim,
                                     const std::string& name,
                                     absl::Duration queued,
                                     absl::Duration generating,
                                     std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {
      p.sim_bin, "--listen=127.0.0.1:0", absl::StrCat("--key=", kSimKey),
      absl::StrCat("--queued_for=", Dur(queued)),
      absl::StrCat("--generating_for=", Dur(generating))};
  args.insert(args.end(), extra.begin(), extra.end());
  absl::Status s = sim.Start(args, {}, LogPath(p, name + "-sim"));
  if (!s.ok()) return s;
  absl::StatusOr<std::string> line =
      sim.WaitForLine("listening on", absl::Seconds(15));
  if (!line.ok()) return line.status();
  return line->substr(line->find("http://"));
}

// Starts videogen-server against `sim_url`; returns its host:port.
absl::StatusOr<std::string> StartServer(const Paths& p, Child& server,
                                        const std::string& name,
                                        const std::string& sim_url,
                                        absl::Duration initial_delay,
                                        absl::Duration interval,
                                        std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {
      p.server_bin, "--listen=127.0.0.1:0",
      absl::StrCat("--upstream_url=", sim_url), "--store=memory",
      "--auth=none",  // loopback only; the bench measures fan-out, not auth
      // All watchers are one tenant here; the default per-tenant cap (10k
      // streams) would refuse the 50k run.
      "--max_streams_per_tenant=100000", "--mirror=none",
      absl::StrCat("--poll_initial_delay=", Dur(initial_delay)),
      absl::StrCat("--poll_interval=", Dur(interval)),
      // Longer than any run: the bare server sends no heartbeats, so with
      // them on videogen alone would write one more message per idle
      // stream (10k writes, as much as a fan-out round) while the sim keeps
      // the jobs queued.
      absl::StrCat("--heartbeat_interval=", Dur(kBenchHeartbeat)),
      "--log_format=json"};
  args.insert(args.end(), extra.begin(), extra.end());
  absl::Status s =
      server.Start(args, {{"AIMLAPI_KEY", kSimKey}}, LogPath(p, name));
  if (!s.ok()) return s;
  absl::StatusOr<std::string> line =
      server.WaitForLine("\"server_listening\"", absl::Seconds(20));
  if (!line.ok()) return line.status();
  size_t key = line->find("\"address\"");
  size_t open = key == std::string::npos ? key : line->find('"', key + 9);
  size_t close = open == std::string::npos ? open : line->find('"', open + 1);
  if (close == std::string::npos) {
    return absl::InternalError(absl::StrCat("no address in: ", *line));
  }
  return line->substr(open + 1, close - open - 1);
}

absl::StatusOr<std::vector<std::string>> CreateGenerations(
    const std::string& address, int k) {
  auto stub = v1::VideoGeneration::NewStub(NewChannel(address, -1));
  std::vector<std::string> ids;
  for (int i = 0; i < k; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    v1::GenerateRequest req;
    req.set_request_id(absl::StrCat("bench-watch-", getpid(), "-", i));
    req.set_prompt(kPrompt);
    req.set_duration_seconds(5);
    v1::Generation g;
    grpc::Status s = stub->CreateGeneration(&ctx, req, &g);
    if (!s.ok()) {
      return absl::InternalError(
          absl::StrCat("CreateGeneration: ", s.error_message()));
    }
    ids.push_back(g.id());
  }
  return ids;
}

size_t Append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// GETs `url`, or POSTs an empty body to it, and parses the JSON answer.
absl::StatusOr<nlohmann::json> FetchJson(const std::string& url,
                                         bool post = false) {
  std::string body;
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  if (post) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  CURLcode rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat(post ? "POST " : "GET ", url,
                                               ": ", curl_easy_strerror(rc)));
  }
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) return absl::InternalError(url + ": not JSON");
  return j;
}

// Ends the sim's hold (--hold_queued): its jobs start their queued time.
absl::Status ReleaseSim(const std::string& sim_url) {
  absl::StatusOr<nlohmann::json> j = FetchJson(sim_url + "/sim/release", true);
  if (!j.ok()) return j.status();
  if (j->value("released", false) != true) {
    return absl::InternalError("the sim was not holding its jobs");
  }
  return absl::OkStatus();
}

template <typename T>
T Failed(T run, const absl::Status& s) {
  run.failure = std::string(s.message());
  std::fprintf(stderr, "[bench]   failed: %s\n", run.failure.c_str());
  return run;
}

// One stderr line per change: when (from the first), to how many watchers,
// and the fastest and slowest delivery. Shows where a latency tail comes
// from.
void LogChanges(const char* server, const WatchResult& r) {
  for (const Change& c : r.changes) {
    std::fprintf(stderr,
                 "[bench]   %s change %s at +%.3fs%s: %lld watchers, "
                 "%.1f..%.1f ms\n",
                 server, c.id.c_str(),
                 (c.observe_ns - r.changes.front().observe_ns) / 1e9,
                 c.final ? " (final)" : "", static_cast<long long>(c.receivers),
                 c.min_us / 1e3, c.max_us / 1e3);
  }
}

}  // namespace

WatchRun RunVideogenWatchers(const Paths& p, const WatchOptions& o, int n) {
  WatchRun run;
  Child sim, server;
  const std::string name = absl::StrCat("watchers-", n, "-videogen");
  // The sim holds every job queued until all watchers are attached, so each
  // one sees every change however long attaching takes (at 50k it took from
  // 5 to 18 s, and a fixed queued time let thousands attach late).
  auto sim_url =
      StartSim(p, sim, name, o.queued_for, o.generating_for, {"--hold_queued"});
  if (!sim_url.ok()) return Failed(run, sim_url.status());
  auto address =
      StartServer(p, server, name, *sim_url, o.poll_interval, o.poll_interval);
  if (!address.ok()) return Failed(run, address.status());
  auto ids = CreateGenerations(*address, o.generations);
  if (!ids.ok()) return Failed(run, ids.status());
  absl::SleepFor(absl::Milliseconds(300));
  run.rss_before = RssBytes(server.pid());
  const double cpu0 = CpuSeconds(server.pid());
  {
    WatcherPool pool(*address, o.streams_per_channel);
    pool.Start(*ids, n);
    pool.WaitAttached(absl::Seconds(120));
    run.rss_attached = RssBytes(server.pid());
    run.cpu_attach_seconds = CpuSeconds(server.pid()) - cpu0;
    if (absl::Status s = ReleaseSim(*sim_url); !s.ok()) return Failed(run, s);
    pool.WaitDone(o.queued_for + o.generating_for + absl::Seconds(60));
    run.result = pool.Collect();
  }
  run.cpu_seconds = CpuSeconds(server.pid()) - cpu0;
  LogChanges("videogen", run.result);
  run.rss_peak = PeakRssBytes(server.pid());
  run.ran = true;
  run.runs = 1;
  return run;
}

void Merge(WatchRun& into, const WatchRun& from) {
  if (!from.ran) {
    if (into.failure.empty()) into.failure = from.failure;
    return;
  }
  if (!into.ran) {
    into = from;
    return;
  }
  const int64_t n = into.runs;
  auto mean = [n](int64_t a, int64_t b) { return (a * n + b) / (n + 1); };
  into.rss_before = mean(into.rss_before, from.rss_before);
  into.rss_attached = mean(into.rss_attached, from.rss_attached);
  into.rss_peak = std::max(into.rss_peak, from.rss_peak);
  into.cpu_seconds = (into.cpu_seconds * n + from.cpu_seconds) / (n + 1);
  into.cpu_attach_seconds =
      (into.cpu_attach_seconds * n + from.cpu_attach_seconds) / (n + 1);
  WatchResult& r = into.result;
  const WatchResult& f = from.result;
  r.streams += f.streams;
  r.attached += f.attached;
  r.late += f.late;
  r.finished_ok += f.finished_ok;
  r.errors += f.errors;
  if (r.first_error.empty()) r.first_error = f.first_error;
  r.updates += f.updates;
  r.update_bytes += f.update_bytes;
  r.min_updates = std::min(r.min_updates, f.min_updates);
  r.attach_time = std::max(r.attach_time, f.attach_time);
  r.latency_us.insert(r.latency_us.end(), f.latency_us.begin(),
                      f.latency_us.end());
  r.changes.insert(r.changes.end(), f.changes.begin(), f.changes.end());
  ++into.runs;
}

namespace {

// Group ids as long as videogen's generation ids (22 characters), so the
// bare server's events have the same size.
std::string BareId(int g) { return absl::StrFormat("bare%018d", g); }

// The bare server's schedule: videogen's changes mapped to groups
// "bare-<i>", or two changes per group when videogen did not run.
std::vector<Change> BareSchedule(const std::vector<Change>& changes, int groups,
                                 absl::Duration spacing) {
  std::vector<Change> out;
  if (changes.empty()) {
    for (int round = 0; round < 2; ++round) {
      for (int g = 0; g < groups; ++g) {
        out.push_back(Change{
            BareId(g), round * absl::ToInt64Nanoseconds(spacing), round == 1});
      }
    }
    return out;
  }
  std::map<std::string, int> group_of;
  for (const Change& c : changes) {
    auto [it, inserted] =
        group_of.try_emplace(c.id, static_cast<int>(group_of.size()));
    out.push_back(Change{BareId(it->second % groups),
                         c.observe_ns - changes.front().observe_ns, c.final});
  }
  return out;
}

// One control call of the replay; freed when the last one is answered.
struct ControlCall {
  grpc::ClientContext context;
  v1::GetGenerationRequest request;
  v1::Generation response;
};

// Queues every change of `schedule` at the bare server ahead of time, each
// with its due time (a second from now plus its offset), and waits until
// they are queued. The server broadcasts each when it is due: no client call
// sits between the schedule and the fan-out. Returns the first change's due
// time.
absl::Time SendSchedule(v1::VideoGeneration::Stub* control,
                        const std::vector<Change>& schedule) {
  std::vector<std::unique_ptr<ControlCall>> calls;
  // std::mutex, as in gRPC's callback examples: a callback touches neither
  // after it unlocks, so the waiter may return and destroy them (and the
  // calls) as soon as it holds the lock with every call answered.
  std::mutex mu;
  std::condition_variable cv;
  size_t answered = 0;
  const absl::Time t0 = absl::Now() + absl::Seconds(1);
  for (const Change& c : schedule) {
    auto call = std::make_unique<ControlCall>();
    call->request.set_id(absl::StrCat(
        c.final ? "broadcast-final:" : "broadcast:",
        absl::ToUnixNanos(t0 + absl::Nanoseconds(c.observe_ns)), ":", c.id));
    control->async()->GetGeneration(
        &call->context, &call->request, &call->response,
        [&mu, &cv, &answered](grpc::Status st) {
          if (!st.ok()) {
            std::fprintf(stderr, "[bench]   broadcast not queued: %s\n",
                         st.error_message().c_str());
          }
          std::lock_guard<std::mutex> lock(mu);
          ++answered;
          cv.notify_all();
        });
    calls.push_back(std::move(call));
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return answered == calls.size(); });
  return t0;
}

}  // namespace

WatchRun RunBareWatchers(const Paths& p, const WatchOptions& o, int n,
                         const std::vector<Change>& changes) {
  WatchRun run;
  Child bare;
  absl::Status s = bare.Start(
      {p.self_bin, "--bare_server", "--port=0",
       absl::StrCat("--bare_deadlock_detection=", p.bare_deadlock_detection)},
      {}, LogPath(p, absl::StrCat("watchers-", n, "-bare")));
  if (!s.ok()) return Failed(run, s);
  auto line = bare.WaitForLine("bare_server listening on", absl::Seconds(15));
  if (!line.ok()) return Failed(run, line.status());
  const std::string address = line->substr(line->rfind(' ') + 1);
  auto control = v1::VideoGeneration::NewStub(NewChannel(address, -1));
  std::vector<std::string> ids;
  for (int g = 0; g < o.generations; ++g) ids.push_back(BareId(g));
  const std::vector<Change> schedule =
      BareSchedule(changes, o.generations, o.generating_for);
  absl::SleepFor(absl::Milliseconds(300));
  run.rss_before = RssBytes(bare.pid());
  const double cpu0 = CpuSeconds(bare.pid());
  {
    WatcherPool pool(address, o.streams_per_channel);
    pool.Start(ids, n);
    pool.WaitAttached(absl::Seconds(120));
    run.rss_attached = RssBytes(bare.pid());
    run.cpu_attach_seconds = CpuSeconds(bare.pid()) - cpu0;
    const absl::Time t0 = SendSchedule(control.get(), schedule);
    if (absl::Now() > t0) {
      std::fprintf(stderr, "[bench]   the schedule was queued late\n");
    }
    pool.WaitDone(absl::Seconds(60));
    run.result = pool.Collect();
  }
  run.cpu_seconds = CpuSeconds(bare.pid()) - cpu0;
  LogChanges("bare", run.result);
  run.rss_peak = PeakRssBytes(bare.pid());
  run.ran = true;
  run.runs = 1;
  return run;
}

ThroughputResult RunThroughput(const Paths& p, int concurrency,
                               absl::Duration duration) {
  ThroughputResult r;
  r.concurrency = concurrency;
  Child sim, server;
  auto sim_url = StartSim(p, sim, "throughput", absl::ZeroDuration(),
                          absl::ZeroDuration());
  if (!sim_url.ok()) return Failed(r, sim_url.status());
  // The upstream rate limiter (default 20/s) is off: this run measures the
  // server's own cost per call, not the configured protection.
  auto address =
      StartServer(p, server, "throughput", *sim_url, absl::Milliseconds(10),
                  absl::Milliseconds(10), {"--upstream_rate_limit=0"});
  if (!address.ok()) return Failed(r, address.status());
  auto channel = NewChannel(*address, 1);
  // Warm-up: connections, allocator, sim threads.
  RunDirectHttpLoad(*sim_url, kSimKey, concurrency, absl::Milliseconds(300));
  RunCreateLoad(channel, concurrency, absl::Milliseconds(300));
  r.direct_serial = RunDirectHttpLoad(*sim_url, kSimKey, 1, duration / 2);
  r.create_serial = RunCreateLoad(channel, 1, duration / 2);
  r.direct = RunDirectHttpLoad(*sim_url, kSimKey, concurrency, duration);
  double cpu = CpuSeconds(server.pid());
  r.create = RunCreateLoad(channel, concurrency, duration);
  r.create_cpu = CpuSeconds(server.pid()) - cpu;
  cpu = CpuSeconds(server.pid());
  r.generate = RunGenerateLoad(channel, concurrency, duration);
  r.generate_cpu = CpuSeconds(server.pid()) - cpu;
  r.ran = true;
  return r;
}

namespace {

// Samples a process's thread count every 20 ms on its own thread until
// Stop(); returns the largest count seen.
class ThreadSampler {
 public:
  explicit ThreadSampler(pid_t pid)
      : thread_([this, pid] {
          while (!stop_.load()) {
            max_.store(std::max(max_.load(), ThreadCount(pid)));
            absl::SleepFor(absl::Milliseconds(20));
          }
        }) {}
  ~ThreadSampler() { Stop(); }

  int Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    return max_.load();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> max_{-1};
  std::thread thread_;  // last: starts once the atomics exist
};

// The port of an `"event":"http_listening"` log line.
absl::StatusOr<int> HttpPort(Child& server) {
  absl::StatusOr<std::string> line =
      server.WaitForLine("\"http_listening\"", absl::Seconds(5));
  if (!line.ok()) return line.status();
  size_t key = line->find("\"port\":");
  int port = 0;
  if (key == std::string::npos) {
    return absl::InternalError(absl::StrCat("no port in: ", *line));
  }
  size_t begin = key + 7, end = begin;
  while (end < line->size() && std::isdigit(line->at(end))) ++end;
  if (!absl::SimpleAtoi(line->substr(begin, end - begin), &port)) {
    return absl::InternalError(absl::StrCat("no port in: ", *line));
  }
  return port;
}

}  // namespace

StreamRun RunSseSide(const Paths& p, const SseOptions& o, int n,
                     absl::Duration attach_window, bool sse) {
  StreamRun out;
  WatchRun& run = out.watch;
  auto failed = [&](const absl::Status& s) {
    out.watch = Failed(out.watch, s);
    return out;
  };
  Child sim, server;
  const std::string name = absl::StrCat("sse-", n, sse ? "-sse" : "-grpc");
  // The job generates from its creation: polls at attach_window + k *
  // interval for k = 0 .. updates - 2 see it generating (one UPDATE each, as
  // the status word alternates), the next one sees it completed. Half an
  // interval of margin on each side of the phase change.
  const absl::Duration interval = o.poll_interval;
  const absl::Duration generating =
      attach_window + interval * (std::max(2, o.updates) - 2) + interval / 2;
  auto sim_url = StartSim(p, sim, name, absl::ZeroDuration(), generating,
                          {"--fault=poll:odd:every=2"});
  if (!sim_url.ok()) return failed(sim_url.status());
  // Both transports run on a server with the HTTP listener on, so that the
  // two baselines (threads, RSS) are the same process configuration.
  auto address = StartServer(p, server, name, *sim_url, attach_window, interval,
                             {"--http_listen=127.0.0.1:0"});
  if (!address.ok()) return failed(address.status());
  auto port = HttpPort(server);
  if (!port.ok()) return failed(port.status());
  auto ids = CreateGenerations(*address, 1);
  if (!ids.ok()) return failed(ids.status());
  absl::SleepFor(absl::Milliseconds(300));
  const pid_t pid = server.pid();
  run.rss_before = RssBytes(pid);
  out.threads_before = ThreadCount(pid);
  const double cpu0 = CpuSeconds(pid);
  ThreadSampler sampler(pid);
  auto measure = [&](auto& pool) {
    pool.WaitAttached(attach_window + absl::Seconds(120));
    run.rss_attached = RssBytes(pid);
    out.threads_attached = ThreadCount(pid);
    pool.WaitDone(generating + absl::Seconds(60));
    run.result = pool.Collect();
  };
  if (sse) {
    SseWatcherPool pool(*port);
    pool.Start(ids->front(), n);
    measure(pool);
  } else {
    WatcherPool pool(*address, o.streams_per_channel);
    pool.Start(*ids, n);
    measure(pool);
  }
  out.threads_max = sampler.Stop();
  run.cpu_seconds = CpuSeconds(pid) - cpu0;
  LogChanges(sse ? "sse" : "grpc", run.result);
  run.rss_peak = PeakRssBytes(pid);
  run.ran = true;
  run.runs = 1;
  return out;
}

void MergeStreams(StreamRun& into, const StreamRun& from) {
  Merge(into.watch, from.watch);
  if (!from.watch.ran) return;
  into.threads_before = std::max(into.threads_before, from.threads_before);
  into.threads_attached =
      std::max(into.threads_attached, from.threads_attached);
  into.threads_max = std::max(into.threads_max, from.threads_max);
}

EfficiencyResult RunEfficiency(const Paths& p, const WatchOptions& o,
                               const std::vector<int>& watcher_counts) {
  EfficiencyResult r;
  r.queued_for = absl::Seconds(2);
  r.generating_for = o.generating_for;
  r.poll_interval = o.poll_interval;
  Child sim, server;
  auto sim_url = StartSim(p, sim, "upstream", r.queued_for, r.generating_for);
  if (!sim_url.ok()) return Failed(r, sim_url.status());
  auto address = StartServer(p, server, "upstream", *sim_url, o.poll_interval,
                             o.poll_interval);
  if (!address.ok()) return Failed(r, address.status());
  // A generation nobody watches comes first: the floor to compare with.
  std::vector<int> counts = {0};
  counts.insert(counts.end(), watcher_counts.begin(), watcher_counts.end());
  auto ids = CreateGenerations(*address, static_cast<int>(counts.size()));
  if (!ids.ok()) return Failed(r, ids.status());
  std::vector<std::unique_ptr<WatcherPool>> pools;
  for (size_t i = 0; i < counts.size(); ++i) {
    pools.push_back(
        std::make_unique<WatcherPool>(*address, o.streams_per_channel));
    if (counts[i] > 0) pools.back()->Start({(*ids)[i]}, counts[i]);
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    pools[i]->WaitDone(r.queued_for + r.generating_for + absl::Seconds(60));
  }
  // The unwatched one ends too; give its poller the same time.
  absl::SleepFor(o.poll_interval * 2);
  auto stub = v1::VideoGeneration::NewStub(NewChannel(*address, -1));
  auto stats = FetchJson(*sim_url + "/sim/stats");
  if (!stats.ok()) return Failed(r, stats.status());
  for (size_t i = 0; i < counts.size(); ++i) {
    EfficiencyRow row;
    row.watchers = counts[i];
    row.errors = pools[i]->Collect().errors;
    grpc::ClientContext ctx;
    v1::GetGenerationRequest req;
    req.set_id((*ids)[i]);
    v1::Generation g;
    if (stub->GetGeneration(&ctx, req, &g).ok()) {
      row.polls = (*stats)["polls_by_id"].value(g.upstream_id(), int64_t{0});
    }
    r.rows.push_back(row);
  }
  r.ran = true;
  return r;
}

}  // namespace videogen::bench
