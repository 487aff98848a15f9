#include "tests/bench/videogen/report.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/videogen/stats.h"

namespace videogen::bench {
namespace {

// The product docs' loop: one GET every 10 s for a ~5.5 min generation.
constexpr int kDocsPollsPerWatcher = 33;

std::string Mb(int64_t bytes) {
  if (bytes < 0) return "n/a";
  return absl::StrFormat("%.1f", static_cast<double>(bytes) / (1 << 20));
}

std::string Fixed(double v, int digits = 2) {
  return absl::StrFormat("%.*f", digits, v);
}

std::string Ratio(double a, double b) {
  if (b <= 0 || a < 0) return "n/a";
  return absl::StrFormat("%.2f×", a / b);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The figures of one watchers run, derived once for the tables.
struct WatchFigures {
  bool ran = false;
  int64_t p50 = 0, p99 = 0, max = 0;  // microseconds
  double kb_per_stream = -1;
  double avg_update_bytes = 0;
};

WatchFigures Figures(const WatchRun& run) {
  WatchFigures f;
  f.ran = run.ran;
  if (!run.ran) return f;
  std::vector<int64_t> lat = run.result.latency_us;
  f.p50 = Percentile(lat, 50);
  f.p99 = Percentile(lat, 99);
  f.max = lat.empty() ? 0 : lat.back();
  // Streams add up over repeats; RSS figures are means over them.
  const int64_t streams = run.result.streams / std::max(1, run.runs);
  if (streams > 0 && run.rss_attached > 0 && run.rss_before > 0) {
    f.kb_per_stream = static_cast<double>(run.rss_attached - run.rss_before) /
                      1024.0 / static_cast<double>(streams);
  }
  if (run.result.updates > 0) {
    f.avg_update_bytes = static_cast<double>(run.result.update_bytes) /
                         static_cast<double>(run.result.updates);
  }
  return f;
}

// "20 rounds, last delivery per round: median 12.3 ms, worst 45.6 ms".
std::string Rounds(const WatchResult& r) {
  std::vector<int64_t> last;
  for (const Change& c : r.changes) last.push_back(c.max_us);
  if (last.empty()) return "none";
  int64_t median = Percentile(last, 50);
  return absl::StrFormat(
      "%d rounds, last delivery of a round: median %.1f ms, worst %.1f ms",
      static_cast<int>(last.size()), Ms(median), Ms(last.back()));
}

std::string WatchRow(int n, const char* name, const WatchRun& run,
                     const WatchFigures& f) {
  if (!run.ran) {
    return absl::StrCat("| ", n, " | ", name, " | did not run: ", run.failure,
                        " ||||||||||||||\n");
  }
  const WatchResult& r = run.result;
  std::string attach = r.attach_time == absl::InfiniteDuration()
                           ? absl::StrCat("incomplete (", r.attached, ")")
                           : Fixed(absl::ToDoubleSeconds(r.attach_time), 1);
  return absl::StrCat("| ", n, " | ", name, " | ", run.runs, " | ", r.channels,
                      " | ", attach, " | ", Mb(run.rss_before), " | ",
                      Mb(run.rss_attached), " | ", Fixed(f.kb_per_stream, 1),
                      " | ", Mb(run.rss_peak), " | ", Fixed(Ms(f.p50)), " | ",
                      Fixed(Ms(f.p99)), " | ", Fixed(Ms(f.max)), " | ",
                      r.updates, " (min ", r.min_updates, "/stream) | ",
                      Fixed(run.cpu_seconds), " | ", r.errors, " |\n");
}

void RenderWatchers(const Report& rep, std::string& md) {
  if (rep.watchers.empty()) return;
  md += "\n## 1–2. Watchers: videogen against a bare gRPC server\n\n";
  md +=
      "| watchers | server | runs | conns | attach s | RSS before MB | RSS "
      "attached "
      "MB | RSS KB/stream | peak RSS MB | fan-out p50 ms | p99 ms | max ms "
      "| UPDATEs received | server CPU s | errors |\n"
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
      "|---:|\n";
  std::string notes;
  if (rep.watch_options.generations > 0) {
    const WatchOptions& o = rep.watch_options;
    md = absl::StrCat(
        md.substr(0, md.rfind("| watchers |")),
        absl::StrFormat(
            "Settings: %d generations per run, watchers spread evenly over "
            "them, %d streams per client connection; the sim holds every "
            "job queued until all watchers are attached (`--hold_queued`), "
            "then keeps it queued %s more and generating %s; server "
            "`--store=memory "
            "--poll_interval=%s --heartbeat_interval=%s` (no heartbeat during "
            "a run: the bare server sends none). RSS per stream = "
            "(RSS right after the last attach − RSS before the first) / "
            "watchers. CPU = server user+system seconds from before the "
            "first attach to the last stream's end. When runs > 1 the runs are "
            "pooled: UPDATEs, errors and latency samples add up, RSS and CPU "
            "are means, peak RSS and attach time are maxima.\n\n",
            o.generations, o.streams_per_channel,
            absl::FormatDuration(o.queued_for),
            absl::FormatDuration(o.generating_for),
            absl::FormatDuration(o.poll_interval),
            absl::FormatDuration(kBenchHeartbeat)),
        md.substr(md.rfind("| watchers |")));
  }
  for (const WatchPair& p : rep.watchers) {
    WatchFigures v = Figures(p.videogen), b = Figures(p.bare);
    md += WatchRow(p.n, "videogen", p.videogen, v);
    md += WatchRow(p.n, "bare", p.bare, b);
    if (v.ran && b.ran) {
      md += absl::StrCat("| ", p.n, " | **ratio** | | | | | | **",
                         Ratio(v.kb_per_stream, b.kb_per_stream), "** | | **",
                         Ratio(v.p50, b.p50), "** | **", Ratio(v.p99, b.p99),
                         "** | ", Ratio(v.max, b.max), " | | ",
                         Ratio(p.videogen.cpu_seconds, p.bare.cpu_seconds),
                         " | |\n");
      notes += absl::StrFormat(
          "- %d watchers: mean UPDATE size %.0f B (videogen) vs %.0f B "
          "(bare); watchers attached after the first change (saw fewer "
          "UPDATEs; 0 unless attaching took more than 120 s): %d videogen, "
          "%d bare. Fan-out rounds (one per change of one generation): "
          "videogen %s; bare %s.\n",
          p.n, v.avg_update_bytes, b.avg_update_bytes, p.videogen.result.late,
          p.bare.result.late, Rounds(p.videogen.result), Rounds(p.bare.result));
      notes += absl::StrFormat(
          "  Server CPU until every stream is attached: videogen %.2f s, bare "
          "%.2f s; after it (fan-out, and for videogen also polling the sim "
          "every %s while the jobs run): videogen %.2f s, bare %.2f s.\n",
          p.videogen.cpu_attach_seconds, p.bare.cpu_attach_seconds,
          absl::FormatDuration(rep.watch_options.poll_interval),
          p.videogen.cpu_seconds - p.videogen.cpu_attach_seconds,
          p.bare.cpu_seconds - p.bare.cpu_attach_seconds);
      if (p.p99_us.size() > 1) {
        notes += absl::StrCat("  Runs pooled: ", p.p99_us.size(),
                              "; p99 per run, videogen / bare:");
        for (const auto& [vp, bp] : p.p99_us) {
          notes += absl::StrCat(" ", Fixed(Ms(vp), 1), " / ", Fixed(Ms(bp), 1),
                                " ms (", Ratio(vp, bp), ");");
        }
        notes += "\n";
      }
    }
    for (const WatchRun* r : {&p.videogen, &p.bare}) {
      if (r->ran && !r->result.first_error.empty()) {
        notes += absl::StrCat("- ", p.n, " watchers, ",
                              r == &p.videogen ? "videogen" : "bare",
                              ": first error: ", r->result.first_error, "\n");
      }
    }
  }
  md += "\n" + notes;
  md +=
      "- Fewer than 2 UPDATEs for some streams with fewer rounds than 2 per "
      "generation means a poll saw a job go from queued straight to "
      "completed (the server was busy longer than the sim's generating "
      "phase); the bare server replays the same rounds. Per-round tails "
      "are printed on stderr (`[bench] ... change ...`).\n";
}

std::string LoadRow(const std::string& name, const LoadResult& r,
                    int concurrency, const std::string& cpu) {
  std::vector<int64_t> lat = r.latency_us;
  double secs = absl::ToDoubleSeconds(r.elapsed);
  return absl::StrCat("| ", name, " | ", concurrency, " | ", r.ok, " | ",
                      Fixed(secs > 0 ? r.ok / secs : 0, 0), " | ",
                      Fixed(Ms(Percentile(lat, 50))), " | ",
                      Fixed(Ms(Percentile(lat, 99))), " | ", r.errors, " | ",
                      cpu, " |\n");
}

void RenderThroughput(const Report& rep, std::string& md) {
  const ThroughputResult& t = rep.throughput;
  if (!t.ran && t.failure.empty()) return;
  md += "\n## 3. Throughput against the simulator with zero delay\n\n";
  if (!t.ran) {
    md += absl::StrCat("Did not run: ", t.failure, "\n");
    return;
  }
  md +=
      "| call | concurrency | calls | calls/s | p50 ms | p99 ms | errors | "
      "server CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
  md = absl::StrCat(
      md.substr(0, md.rfind("| call |")),
      "Settings: sim `--queued_for=0 --generating_for=0`; server "
      "`--store=memory --poll_initial_delay=10ms --poll_interval=10ms "
      "--upstream_rate_limit=0` (the default 20 requests/s limiter would "
      "cap creates at 20/s; it protects the real upstream and is not what "
      "this measures). gRPC calls share one channel (one HTTP/2 "
      "connection); each direct-POST thread keeps its own connection. Each "
      "run lasts the same time, one after the other.\n\n",
      md.substr(md.rfind("| call |")));
  md += LoadRow("sim POST directly (libcurl, keep-alive)", t.direct_serial, 1,
                "–");
  md += LoadRow("CreateGeneration", t.create_serial, 1, "–");
  md += LoadRow("sim POST directly (libcurl, keep-alive)", t.direct,
                t.concurrency, "–");
  md +=
      LoadRow("CreateGeneration", t.create, t.concurrency, Fixed(t.create_cpu));
  md += LoadRow("Generate (stream to the terminal event)", t.generate,
                t.concurrency, Fixed(t.generate_cpu));
  md +=
      "\nAdded latency of CreateGeneration over the direct POST to the "
      "simulator: ";
  for (const auto& [direct, create] :
       {std::pair<const LoadResult*, const LoadResult*>{&t.direct_serial,
                                                        &t.create_serial},
        {&t.direct, &t.create}}) {
    std::vector<int64_t> d = direct->latency_us, c = create->latency_us;
    md += absl::StrCat(
        direct == &t.direct ? "; at " : "at ",
        direct == &t.direct ? t.concurrency : 1, " in flight p50 +",
        Fixed(Ms(Percentile(c, 50) - Percentile(d, 50))), " ms, p99 +",
        Fixed(Ms(Percentile(c, 99) - Percentile(d, 99))), " ms");
  }
  md += ". At 1 in flight this is the per-call cost; at " +
        std::to_string(t.concurrency) +
        " it includes queueing once the server's CPU is the limit (see calls/s "
        "and server CPU s).\n";
  for (const auto& [name, r] :
       {std::pair<const char*, const LoadResult*>{"direct", &t.direct},
        {"CreateGeneration", &t.create},
        {"Generate", &t.generate}}) {
    if (!r->first_error.empty()) {
      md += absl::StrCat("- ", name, " first error: ", r->first_error, "\n");
    }
  }
}

void RenderEfficiency(const Report& rep, std::string& md) {
  const EfficiencyResult& e = rep.efficiency;
  if (!e.ran && e.failure.empty()) return;
  md += "\n## 4. Upstream efficiency: polls per generation\n\n";
  if (!e.ran) {
    md += absl::StrCat("Did not run: ", e.failure, "\n");
    return;
  }
  md +=
      "| watchers | upstream GETs, videogen (measured) | watcher errors | "
      "docs polling loop per watcher, 5.5 min (N × 33) |\n"
      "|---:|---:|---:|---:|\n";
  for (const EfficiencyRow& r : e.rows) {
    md += absl::StrCat("| ", r.watchers, " | ", r.polls, " | ", r.errors, " | ",
                       r.watchers * kDocsPollsPerWatcher, " |\n");
  }
  md += absl::StrCat(
      "\nMeasured with compressed timing (sim queued ",
      absl::FormatDuration(e.queued_for), ", generating ",
      absl::FormatDuration(e.generating_for),
      ", --poll_interval=", absl::FormatDuration(e.poll_interval),
      "); each generation also costs one POST. At videogen's defaults "
      "(--poll_initial_delay=2s, --poll_interval=5s) a real ~5.5 min "
      "generation takes about 66 GETs however many clients watch it; the "
      "docs' loop takes 33 per watcher, so videogen sends fewer from 2 "
      "watchers on.\n");
}

std::string Threads(const StreamRun& r) {
  return absl::StrCat(r.threads_before, " | ", r.threads_attached, " / ",
                      r.threads_max);
}

std::string SseRow(int n, const char* name, const StreamRun& sr,
                   const WatchFigures& f) {
  const WatchRun& run = sr.watch;
  if (!run.ran) {
    return absl::StrCat("| ", n, " | ", name, " | did not run: ", run.failure,
                        " ||||||||||||||\n");
  }
  const WatchResult& r = run.result;
  std::string attach = r.attach_time == absl::InfiniteDuration()
                           ? absl::StrCat("incomplete (", r.attached, ")")
                           : Fixed(absl::ToDoubleSeconds(r.attach_time), 2);
  return absl::StrCat(
      "| ", n, " | ", name, " | ", run.runs, " | ", r.channels, " | ", attach,
      " | ", Threads(sr), " | ", Mb(run.rss_before), " | ",
      Mb(run.rss_attached), " | ", Fixed(f.kb_per_stream, 1), " | ",
      Mb(run.rss_peak), " | ", Fixed(Ms(f.p50)), " | ", Fixed(Ms(f.p99)), " | ",
      Fixed(Ms(f.max)), " | ", r.updates, " (min ", r.min_updates,
      "/stream) | ", Fixed(run.cpu_seconds), " | ", r.errors, " |\n");
}

void RenderSse(const Report& rep, std::string& md) {
  if (rep.sse.empty()) return;
  const SseOptions& o = rep.sse_options;
  md += "\n## 5. SSE streams against gRPC streams on one generation\n\n";
  md += absl::StrFormat(
      "Settings: one generation; N gRPC `WatchGeneration` streams (callback "
      "API, %d per client connection) or N SSE streams (`GET "
      "/v1/generations/{id}:watch`, HTTP/1.1, one connection each as a "
      "browser's EventSource, all read by one epoll thread in the bench). "
      "Each transport runs on a fresh sim and server (`--store=memory "
      "--auth=none --http_listen=127.0.0.1:0 --poll_interval=%s`, the HTTP "
      "listener on for both), one after the other with the order "
      "alternating per run: with both open on one server the fan-out hub, "
      "which hands a change to a generation's subscribers in subscription "
      "order, would serve whichever transport subscribed first first in "
      "every round, RSS and threads could not be attributed, and the two "
      "clients would compete for the same cores. The sim alternates the "
      "status word on every other poll (`--fault=poll:odd:every=2`: "
      "generating/active), so each poll is one UPDATE: about %d per stream "
      "with the terminal one (the server jitters its poll interval by "
      "±20%%, so a run may see one more or fewer); the first poll waits for "
      "the attach window below. Threads = entries of "
      "/proc/PID/task of the server: before the first stream | right after "
      "the last attach / most seen while streams were open (sampled every "
      "20 ms). RSS per stream and CPU as in §1–2; latency from the event's "
      "`observe_time` (SSE: `observeTime` in the data) to the bench reading "
      "it. Runs pooled as in §1–2; thread counts are maxima over runs.\n\n",
      o.streams_per_channel, absl::FormatDuration(o.poll_interval), o.updates);
  md +=
      "| streams | transport | runs | conns | attach s | server threads "
      "before | attached / max | RSS before MB | RSS attached MB | RSS "
      "KB/stream | peak RSS MB | fan-out p50 ms | p99 ms | max ms | UPDATEs "
      "received | server CPU s | errors |\n"
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
      "|---:|---:|---:|\n";
  std::string notes;
  for (const SsePair& p : rep.sse) {
    WatchFigures g = Figures(p.grpc.watch), s = Figures(p.sse.watch);
    md += SseRow(p.n, "gRPC", p.grpc, g);
    md += SseRow(p.n, "SSE", p.sse, s);
    if (g.ran && s.ran) {
      md += absl::StrCat(
          "| ", p.n, " | **SSE / gRPC** | | | | | | | | **",
          Ratio(s.kb_per_stream, g.kb_per_stream), "** | | ",
          Ratio(s.p50, g.p50), " | **", Ratio(s.p99, g.p99), "** | ",
          Ratio(s.max, g.max), " | | ",
          Ratio(p.sse.watch.cpu_seconds, p.grpc.watch.cpu_seconds), " | |\n");
      notes += absl::StrFormat(
          "- %d streams: attach window (first poll) %s; mean UPDATE size "
          "%.0f B (gRPC, protobuf) vs %.0f B (SSE frame: id, event and JSON "
          "data lines); streams attached after the first change: %d gRPC, "
          "%d SSE. Fan-out rounds: gRPC %s; SSE %s.\n",
          p.n, absl::FormatDuration(p.attach_window), g.avg_update_bytes,
          s.avg_update_bytes, p.grpc.watch.result.late, p.sse.watch.result.late,
          Rounds(p.grpc.watch.result), Rounds(p.sse.watch.result));
      if (p.p99_us.size() > 1) {
        notes += absl::StrCat("  Runs pooled: ", p.p99_us.size(),
                              "; p99 per run, gRPC / SSE:");
        for (const auto& [gp, sp] : p.p99_us) {
          notes += absl::StrCat(" ", Fixed(Ms(gp), 1), " / ", Fixed(Ms(sp), 1),
                                " ms;");
        }
        notes += "\n";
      }
    }
    for (const StreamRun* r : {&p.grpc, &p.sse}) {
      if (r->watch.ran && !r->watch.result.first_error.empty()) {
        notes +=
            absl::StrCat("- ", p.n, " streams, ", r == &p.grpc ? "gRPC" : "SSE",
                         ": first error: ", r->watch.result.first_error, "\n");
      }
    }
  }
  md += "\n" + notes;
}

std::string TargetsTable(const Report& rep) {
  std::string md =
      "\n## Targets\n\n| target | measured | result |\n|---|---|---|\n";
  auto verdict = [](bool ran, bool met) {
    return !ran ? "not measured" : met ? "met" : "**missed**";
  };
  const WatchPair* p10k = nullptr;
  const WatchPair* p50k = nullptr;
  for (const WatchPair& p : rep.watchers) {
    if (p.n == 10000) p10k = &p;
    if (p.n == 50000) p50k = &p;
  }
  if (p10k != nullptr && p10k->videogen.ran) {
    int64_t peak = p10k->videogen.rss_peak;
    md += absl::StrCat("| 10k watchers: server RSS < 300 MB | peak ", Mb(peak),
                       " MB (", Mb(p10k->videogen.rss_attached),
                       " MB right after attach) | ",
                       verdict(true, peak > 0 && peak < 300LL << 20), " |\n");
  } else {
    md += "| 10k watchers: server RSS < 300 MB | – | not measured |\n";
  }
  if (p10k != nullptr && p10k->videogen.ran && p10k->bare.ran) {
    WatchFigures v = Figures(p10k->videogen), b = Figures(p10k->bare);
    md += absl::StrCat("| 10k watchers: fan-out p99 ≤ 1.2× bare | ",
                       Fixed(Ms(v.p99)), " ms vs ", Fixed(Ms(b.p99)),
                       " ms = ", Ratio(v.p99, b.p99), " | ",
                       verdict(true, v.p99 <= 1.2 * b.p99), " |\n");
    const double vc = p10k->videogen.cpu_seconds, bc = p10k->bare.cpu_seconds;
    md += absl::StrCat("| 10k watchers: server CPU ≤ 1.3× bare | ", Fixed(vc),
                       " s vs ", Fixed(bc), " s = ", Ratio(vc, bc), " | ",
                       verdict(true, vc <= 1.3 * bc), " |\n");
    md += absl::StrCat(
        "| 10k watchers: RSS per stream ≤ 1.2× bare | ",
        Fixed(v.kb_per_stream, 1), " KB vs ", Fixed(b.kb_per_stream, 1),
        " KB = ", Ratio(v.kb_per_stream, b.kb_per_stream), " | ",
        verdict(true, v.kb_per_stream <= 1.2 * b.kb_per_stream), " |\n");
  } else {
    md += "| 10k watchers: fan-out p99 ≤ 1.2× bare | – | not measured |\n";
  }
  const EfficiencyResult& e = rep.efficiency;
  if (e.ran && !e.rows.empty()) {
    int64_t lo = INT64_MAX, hi = 0;
    for (const auto& r : e.rows) {
      lo = std::min(lo, r.polls);
      hi = std::max(hi, r.polls);
    }
    // Pollers start at slightly different times: allow one poll of jitter.
    md += absl::StrCat("| upstream polls independent of watchers | ", lo, "–",
                       hi, " GETs per generation for ", e.rows.front().watchers,
                       "–", e.rows.back().watchers, " watchers | ",
                       verdict(true, lo > 0 && hi - lo <= 1), " |\n");
  } else {
    md += "| upstream polls independent of watchers | – | not measured |\n";
  }
  const SsePair* sse1k = nullptr;
  for (const SsePair& p : rep.sse) {
    if (p.n == 1000) sse1k = &p;
  }
  if (sse1k != nullptr && sse1k->sse.watch.ran) {
    // A thread per stream or per connection would add 1,000; a fixed pool
    // adds none. Under 1% of the streams counts as bounded.
    const StreamRun& s = sse1k->sse;
    const int added = s.threads_max - s.threads_before;
    md += absl::StrCat(
        "| 1k SSE streams on one generation: server threads bounded (fewer "
        "than 10 added) | ",
        s.threads_before, " before, ", s.threads_max,
        " at most with the streams open (gRPC run: ",
        sse1k->grpc.threads_before, " → ", sse1k->grpc.threads_max, "); RSS ",
        Fixed(Figures(s.watch).kb_per_stream, 1), " KB/stream (gRPC ",
        Fixed(Figures(sse1k->grpc.watch).kb_per_stream, 1), "); fan-out p99 ",
        Fixed(Ms(Figures(s.watch).p99)), " ms (gRPC ",
        Fixed(Ms(Figures(sse1k->grpc.watch).p99)), ") | ",
        verdict(s.threads_max > 0, added < 10), " |\n");
  } else {
    md +=
        "| 1k SSE streams on one generation: server threads bounded | – | "
        "not measured |\n";
  }
  if (p50k != nullptr && p50k->videogen.ran) {
    const WatchResult& r = p50k->videogen.result;
    md += absl::StrCat(
        "| 50k watchers held without errors | ", r.attached, "/", r.streams,
        " attached, ", r.finished_ok, " ended OK, ", r.errors, " errors | ",
        verdict(true, r.errors == 0 && r.attached == r.streams), " |\n");
  } else {
    md += "| 50k watchers held without errors | – | not measured |\n";
  }
  return md;
}

}  // namespace

bool Report::AnyFailure() const {
  for (const WatchPair& p : watchers) {
    for (const WatchRun* r : {&p.videogen, &p.bare}) {
      // A late watcher missed changes: the run did not measure every round.
      if (!r->ran || r->result.errors > 0 || r->result.late > 0 ||
          r->result.attached < r->result.streams || r->result.updates == 0) {
        return true;
      }
    }
  }
  for (const SsePair& p : sse) {
    for (const WatchRun* r : {&p.grpc.watch, &p.sse.watch}) {
      if (!r->ran || r->result.errors > 0 ||
          r->result.attached < r->result.streams || r->result.updates == 0) {
        return true;
      }
    }
  }
  if (!throughput.failure.empty() || !efficiency.failure.empty()) return true;
  if (throughput.ran &&
      (throughput.create.errors > 0 || throughput.generate.errors > 0 ||
       throughput.direct.errors > 0 || throughput.create_serial.errors > 0 ||
       throughput.direct_serial.errors > 0)) {
    return true;
  }
  for (const auto& r : efficiency.rows) {
    if (r.errors > 0 || r.polls <= 0) return true;
  }
  return false;
}

std::string LoadAverage() {
  std::string load = ReadFile("/proc/loadavg");
  // The 1, 5 and 15 minute averages: the first three fields.
  size_t end = 0;
  for (int i = 0; i < 3 && end != std::string::npos; ++i) {
    end = load.find(' ', end + (i > 0 ? 1 : 0));
  }
  return load.substr(0, end);
}

Machine DescribeMachine() {
  Machine m;
  m.cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  std::istringstream cpuinfo(ReadFile("/proc/cpuinfo"));
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      m.cpu_model = std::string(
          absl::StripAsciiWhitespace(line.substr(line.find(':') + 1)));
      break;
    }
  }
  std::istringstream meminfo(ReadFile("/proc/meminfo"));
  for (std::string line; std::getline(meminfo, line);) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "MemTotal: %lld kB", &kb) == 1) {
      m.ram_bytes = kb * 1024;
    }
  }
  utsname u{};
  if (uname(&u) == 0) m.kernel = absl::StrCat(u.sysname, " ", u.release);
  m.load_average = LoadAverage();
  return m;
}

std::string RenderMarkdown(const Report& rep) {
  const Machine& m = rep.machine;
  std::string md = "# videogen benchmark results\n\n";
  md += absl::StrFormat(
      "- Machine: %d cores, %s, %.1f GiB RAM, %s; load average at start: "
      "%s, at the end: %s (a shared box: other work may run)\n",
      m.cores, m.cpu_model, static_cast<double>(m.ram_bytes) / (1 << 30),
      m.kernel, std::string(absl::StripAsciiWhitespace(m.load_average)),
      LoadAverage());
  md += absl::StrCat(
      "- Date: ",
      absl::FormatTime("%Y-%m-%d %H:%M UTC", rep.start, absl::UTCTimeZone()),
      ", suite took ", Fixed(absl::ToDoubleSeconds(rep.end - rep.start), 0),
      " s; gRPC ", grpc::Version(), "; RLIMIT_NOFILE ", rep.fd_limit,
      " (children inherit it)\n");
  md += absl::StrCat("- Command: `", rep.command, "`\n");
  md +=
      "- Server and clients share the same cores; latency is measured "
      "from the server's `observe_time` to the client's receive time on "
      "the same clock. Ratios are videogen / bare, measured in the same "
      "run.\n";
  md +=
      "- The bare server replays videogen's change schedule from the same "
      "run: the same generation groups, number of UPDATEs and spacing "
      "(the bench queues each change at the bare server ahead of time with "
      "its due time, and the server's own thread broadcasts it when due). "
      "Each change of one generation is one fan-out round to its watchers. "
      "Both servers stamp `observe_time` when the change happens (videogen: "
      "its tracker writes the poll's answer; bare: the change is due), so a "
      "round that waits behind an earlier one counts the wait in both.\n";
  md += TargetsTable(rep);
  RenderWatchers(rep, md);
  RenderThroughput(rep, md);
  RenderEfficiency(rep, md);
  RenderSse(rep, md);
  return md;
}

}  // namespace videogen::bench
