// Polls per second that one AimlApiUpstream loop sustains against the
// simulator on loopback, next to wrk against the same endpoint in the same
// run. Prints one markdown row. Not a test: timing lives here, not in ctest.
#include <curl/curl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/sim/sim_server.h"
#include "server/upstream/aimlapi_upstream.h"

ABSL_FLAG(std::string, url, "",
          "base URL of a running videogen-sim; empty starts one in-process");
ABSL_FLAG(std::string, key, "bench-key", "API key the simulator expects");
ABSL_FLAG(int, seconds, 5, "length of each measurement");
ABSL_FLAG(int, concurrency, 64, "polls in flight (and wrk connections)");
ABSL_FLAG(int, wrk_threads, 2, "wrk -t");
ABSL_FLAG(std::string, wrk, "wrk", "wrk binary");
ABSL_FLAG(int, rounds, 3, "alternating rounds of each client; medians kept");
ABSL_FLAG(bool, header, true, "print the markdown table header");

namespace videogen::upstream {
namespace {

struct LoopResult {
  double per_second = 0;
  int64_t ok = 0;
  int64_t errors = 0;
};

// Keeps `concurrency` polls in flight for `length`; each answer starts the
// next poll from the loop thread.
class PollDriver {
 public:
  PollDriver(AimlApiUpstream* up, std::string id)
      : up_(up), id_(std::move(id)) {}

  LoopResult Run(int concurrency, absl::Duration length) {
    {
      absl::MutexLock lock(&mu_);
      stop_at_ = absl::Now() + length;
    }
    const absl::Time start = absl::Now();
    for (int i = 0; i < concurrency; ++i) Next();
    absl::MutexLock lock(&mu_);
    auto drained = [this, concurrency] { return finished_ == concurrency; };
    mu_.Await(absl::Condition(&drained));
    const double secs = absl::ToDoubleSeconds(last_ - start);
    return {static_cast<double>(ok_ + errors_) / secs, ok_, errors_};
  }

 private:
  void Next() {
    up_->Poll(PollRequest{id_, "bench", "", ""},
              [this](absl::StatusOr<Snapshot> s) {
                bool more;
                {
                  absl::MutexLock lock(&mu_);
                  const absl::Time now = absl::Now();
                  more = now < stop_at_;
                  if (more) {
                    (s.ok() ? ok_ : errors_)++;
                    last_ = now;
                  } else {
                    ++finished_;
                  }
                  if (!s.ok() && errors_ == 1) {
                    std::fprintf(stderr, "poll error: %s\n",
                                 s.status().ToString().c_str());
                  }
                }
                if (more) Next();
              });
  }

  AimlApiUpstream* up_;
  const std::string id_;
  absl::Mutex mu_;
  absl::Time stop_at_ ABSL_GUARDED_BY(mu_);
  absl::Time last_ ABSL_GUARDED_BY(mu_);
  int64_t ok_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t errors_ ABSL_GUARDED_BY(mu_) = 0;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double CpuSeconds(int who) {
  rusage u{};
  getrusage(who, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

size_t Append(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

// A bare libcurl multi loop on the calling thread: the same polls with none
// of the client's machinery (queue, mutex, retries, parsing). The gap to it
// is what the loop adds; the gap from it to wrk is what libcurl costs.
LoopResult RunBareCurl(const std::string& url, const std::string& key,
                       int concurrency, int seconds) {
  CURLM* multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(concurrency));
  curl_slist* headers = curl_slist_append(
      nullptr, absl::StrCat("Authorization: Bearer ", key).c_str());
  std::vector<std::string> bodies(concurrency);
  std::vector<CURL*> easies;
  for (int i = 0; i < concurrency; ++i) {
    CURL* easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Append);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &bodies[i]);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, &bodies[i]);
    curl_multi_add_handle(multi, easy);
    easies.push_back(easy);
  }
  LoopResult out;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + absl::Seconds(seconds);
  int running = concurrency;
  while (running > 0) {
    curl_multi_perform(multi, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      long code = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
      (msg->data.result == CURLE_OK && code == 200 ? out.ok : out.errors)++;
      std::string* body = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &body);
      body->clear();
      CURL* easy = msg->easy_handle;
      curl_multi_remove_handle(multi, easy);
      if (absl::Now() < stop) {
        curl_multi_add_handle(multi, easy);
        ++running;
      }
    }
    curl_multi_poll(multi, nullptr, 0, 100, nullptr);
  }
  out.per_second = static_cast<double>(out.ok + out.errors) /
                   absl::ToDoubleSeconds(absl::Now() - start);
  for (CURL* easy : easies) curl_easy_cleanup(easy);
  curl_slist_free_all(headers);
  curl_multi_cleanup(multi);
  return out;
}

// The same bare loop driven by epoll and curl_multi_socket_action: curl
// only touches the sockets that are ready, instead of scanning every
// transfer per wakeup. Measures what that design would save.
struct EpollState {
  int epoll_fd = -1;
  long timeout_ms = -1;
};

int OnSocket(CURL*, curl_socket_t s, int what, void* user, void*) {
  auto* st = static_cast<EpollState*>(user);
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(st->epoll_fd, EPOLL_CTL_DEL, s, nullptr);
    return 0;
  }
  epoll_event ev{};
  ev.data.fd = s;
  if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
  if (epoll_ctl(st->epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0) {
    epoll_ctl(st->epoll_fd, EPOLL_CTL_ADD, s, &ev);
  }
  return 0;
}

int OnTimer(CURLM*, long timeout_ms, void* user) {
  static_cast<EpollState*>(user)->timeout_ms = timeout_ms;
  return 0;
}

LoopResult RunEpollCurl(const std::string& url, const std::string& key,
                        int concurrency, int seconds) {
  EpollState st;
  st.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  CURLM* multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(concurrency));
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &OnSocket);
  curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, &st);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &OnTimer);
  curl_multi_setopt(multi, CURLMOPT_TIMERDATA, &st);
  curl_slist* headers = curl_slist_append(
      nullptr, absl::StrCat("Authorization: Bearer ", key).c_str());
  std::vector<std::string> bodies(concurrency);
  std::vector<CURL*> easies;
  for (int i = 0; i < concurrency; ++i) {
    CURL* easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Append);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &bodies[i]);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, &bodies[i]);
    curl_multi_add_handle(multi, easy);
    easies.push_back(easy);
  }
  LoopResult out;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + absl::Seconds(seconds);
  int running = concurrency;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  std::vector<epoll_event> events(256);
  while (running > 0) {
    const int n =
        epoll_wait(st.epoll_fd, events.data(), static_cast<int>(events.size()),
                   st.timeout_ms < 0 ? 100 : st.timeout_ms);
    if (n <= 0) {
      curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    for (int i = 0; i < n; ++i) {
      int flags = 0;
      if (events[i].events & EPOLLIN) flags |= CURL_CSELECT_IN;
      if (events[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
      if (events[i].events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
      curl_multi_socket_action(multi, events[i].data.fd, flags, &running);
    }
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      long code = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
      (msg->data.result == CURLE_OK && code == 200 ? out.ok : out.errors)++;
      std::string* body = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &body);
      body->clear();
      CURL* easy = msg->easy_handle;
      curl_multi_remove_handle(multi, easy);
      if (absl::Now() < stop) {
        curl_multi_add_handle(multi, easy);
        ++running;
      }
    }
  }
  out.per_second = static_cast<double>(out.ok + out.errors) /
                   absl::ToDoubleSeconds(absl::Now() - start);
  for (CURL* easy : easies) curl_easy_cleanup(easy);
  curl_slist_free_all(headers);
  curl_multi_cleanup(multi);
  close(st.epoll_fd);
  return out;
}

// Runs wrk and returns its "Requests/sec", or a negative number.
double RunWrk(const std::string& url, const std::string& key, int threads,
              int connections, int seconds) {
  const std::string cmd = absl::StrCat(
      absl::GetFlag(FLAGS_wrk), " -t", threads, " -c", connections, " -d",
      seconds, "s -H 'Authorization: Bearer ", key, "' '", url, "' 2>&1");
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  double rps = -1;
  char line[512];
  while (std::fgets(line, sizeof line, pipe) != nullptr) {
    std::string s(line);
    if (s.rfind("Requests/sec:", 0) == 0) {
      std::string value(absl::StripAsciiWhitespace(s.substr(13)));
      if (!absl::SimpleAtod(value, &rps)) rps = -1;
    }
    if (s.find("Non-2xx") != std::string::npos) {
      std::fprintf(stderr, "wrk: %s", line);
    }
  }
  pclose(pipe);
  return rps;
}

int Main() {
  const std::string key = absl::GetFlag(FLAGS_key);
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const int seconds = absl::GetFlag(FLAGS_seconds);
  std::unique_ptr<sim::SimServer> sim;
  std::string base = absl::GetFlag(FLAGS_url);
  if (base.empty()) {
    sim::SimOptions o;
    o.api_key = key;
    sim = std::make_unique<sim::SimServer>(o);
    if (absl::Status s = sim->Start(); !s.ok()) {
      std::fprintf(stderr, "sim: %s\n", s.ToString().c_str());
      return 1;
    }
    base = sim->base_url();
  }
  AimlApiOptions o;
  o.base_url = base;
  o.api_key = key;
  o.max_connections = concurrency;
  o.max_in_flight = concurrency;
  AimlApiUpstream up(o);

  std::promise<absl::StatusOr<SubmitResult>> made;
  SubmitRequest req;
  req.client_request_id = "bench";
  req.prompt = "benchmark";
  up.Submit(
      req, [](std::shared_ptr<SubmitGate> gate) { gate->Send(); },
      [&](absl::StatusOr<SubmitResult> r) { made.set_value(r); });
  absl::StatusOr<SubmitResult> job = made.get_future().get();
  if (!job.ok()) {
    std::fprintf(stderr, "submit: %s\n", job.status().ToString().c_str());
    return 1;
  }
  char* escaped = curl_easy_escape(nullptr, job->upstream_id.data(),
                                   static_cast<int>(job->upstream_id.size()));
  const std::string poll_url = absl::StrCat(
      base, AimlApiUpstream::Path(o.endpoint), "?generation_id=", escaped);
  curl_free(escaped);

  // Warm up both sides (connections, sim threads), then alternate the two
  // clients for a few rounds so that load from elsewhere hits both alike.
  PollDriver(&up, job->upstream_id).Run(concurrency, absl::Seconds(1));
  const int wrk_threads = absl::GetFlag(FLAGS_wrk_threads);
  std::vector<double> loop_rps, wrk_rps, ratios, loop_us, wrk_us;
  std::vector<double> bare_rps, bare_us, epoll_rps, epoll_us;
  int64_t errors = 0;
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    const double self_before = CpuSeconds(RUSAGE_SELF);
    LoopResult loop = PollDriver(&up, job->upstream_id)
                          .Run(concurrency, absl::Seconds(seconds));
    const double self_cpu = CpuSeconds(RUSAGE_SELF) - self_before;
    const double children_before = CpuSeconds(RUSAGE_CHILDREN);
    const double wrk = RunWrk(poll_url, key, wrk_threads, concurrency, seconds);
    const double wrk_cpu = CpuSeconds(RUSAGE_CHILDREN) - children_before;
    const double bare_before = CpuSeconds(RUSAGE_SELF);
    LoopResult bare = RunBareCurl(poll_url, key, concurrency, seconds);
    const double bare_cpu = CpuSeconds(RUSAGE_SELF) - bare_before;
    bare_rps.push_back(bare.per_second);
    bare_us.push_back(1e6 * bare_cpu /
                      static_cast<double>(bare.ok + bare.errors));
    const double epoll_before = CpuSeconds(RUSAGE_SELF);
    LoopResult ep = RunEpollCurl(poll_url, key, concurrency, seconds);
    const double epoll_cpu = CpuSeconds(RUSAGE_SELF) - epoll_before;
    epoll_rps.push_back(ep.per_second);
    epoll_us.push_back(1e6 * epoll_cpu /
                       static_cast<double>(ep.ok + ep.errors));
    errors += loop.errors + bare.errors + ep.errors;
    loop_rps.push_back(loop.per_second);
    wrk_rps.push_back(wrk);
    ratios.push_back(wrk > 0 ? loop.per_second / wrk : 0);
    // CPU per request says how heavy each client is, whatever the load; it
    // isolates the loop only when the sim runs in another process.
    loop_us.push_back(1e6 * self_cpu /
                      static_cast<double>(loop.ok + loop.errors));
    wrk_us.push_back(wrk > 0 ? 1e6 * wrk_cpu / (wrk * seconds) : 0);
  }
  if (absl::GetFlag(FLAGS_header)) {
    std::printf(
        "| sim | conc. | rounds | loop polls/s | bare libcurl (poll) | bare "
        "libcurl (epoll) | wrk threads | wrk req/s | loop/wrk | loop/bare | "
        "CPU us per request: loop / bare / epoll / wrk | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  }
  // With an in-process sim, process CPU includes the sim's.
  const std::string cpu =
      sim ? absl::StrFormat("n/a / n/a / n/a / %.1f", Median(wrk_us))
          : absl::StrFormat("%.1f / %.1f / %.1f / %.1f", Median(loop_us),
                            Median(bare_us), Median(epoll_us), Median(wrk_us));
  std::printf(
      "| %s | %d | %zu | %.0f | %.0f | %.0f | %d | %.0f | %.2f | %.2f | %s | "
      "%lld |\n",
      sim ? "in-process" : "external", concurrency, ratios.size(),
      Median(loop_rps), Median(bare_rps), Median(epoll_rps), wrk_threads,
      Median(wrk_rps), Median(ratios),
      Median(loop_rps) / std::max(1.0, Median(bare_rps)), cpu.c_str(),
      static_cast<long long>(errors));
  return Median(wrk_rps) > 0 && errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace videogen::upstream

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return videogen::upstream::Main();
}
