// http_sse_bench: N SSE streams on one generation through HttpServer over
// the fake gateway, on loopback. Reports the process's thread count, the RSS
// growth per stream (server and client sides together, so an upper bound for
// the server), and the fan-out latency from the change (Advance) to each
// client reading its frame, p50/p99/max over every stream and update.
//
//   http_sse_bench [--streams=1000] [--updates=20] [--io_threads=2]
// Prints one JSON object on stdout.

#include <dirent.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/http/http_server.h"
#include "tests/http/fakes.h"
#include "tests/http/test_client.h"

namespace {

int IntFlag(int argc, char** argv, const std::string& name, int fallback) {
  std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    int v = 0;
    if (absl::StartsWith(argv[i], prefix) &&
        absl::SimpleAtoi(argv[i] + prefix.size(), &v)) {
      return v;
    }
  }
  return fallback;
}

int Threads() {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  while (dirent* e = d ? readdir(d) : nullptr) n += e->d_name[0] != '.';
  if (d) closedir(d);
  return n;
}

int64_t RssKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      int64_t kib = 0;
      absl::SimpleAtoi(
          absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kib);
      return kib;
    }
  }
  return 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  namespace http = videogen::http;
  using videogen::v1::Generation;
  const int streams = IntFlag(argc, argv, "streams", 1000);
  const int updates = IntFlag(argc, argv, "updates", 20);
  rlimit lim;
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);

  http::testing::FakeGateway gateway;
  http::testing::FakeAuthenticator auth;
  http::HttpServerOptions options;
  options.io_threads = IntFlag(argc, argv, "io_threads", 2);
  options.worker_threads = 2;
  options.max_streams = streams + 10;
  http::HttpServer server(options, &gateway, &auth, nullptr, nullptr);
  if (!server.Start().ok()) return 1;
  videogen::auth::Principal acme;
  acme.tenant = "acme";
  videogen::v1::GenerateRequest req;
  req.set_prompt("bench");
  std::string id;
  gateway.Create(acme, req, {},
                 [&](absl::StatusOr<videogen::core::GenerationPtr> g) {
                   id = (*g)->id();
                 });

  const int threads_before = Threads();
  const int64_t rss_before = RssKiB();
  std::vector<int> fds;
  std::string request = absl::StrCat(
      "GET /v1/generations/", id,
      ":watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-acme\r\n\r\n");
  for (int i = 0; i < streams; ++i) {
    int fd = http::testing::ConnectLoopback(server.port());
    if (fd < 0 || ::send(fd, request.data(), request.size(), 0) !=
                      static_cast<ssize_t>(request.size())) {
      std::fprintf(stderr, "connect %d failed\n", i);
      return 1;
    }
    fds.push_back(fd);
  }
  // Read each stream's head and snapshot (id: 1).
  std::vector<std::string> bufs(streams);
  auto read_until = [&](const std::string& needle, std::vector<double>* lat,
                        absl::Time t0) {
    std::vector<bool> done(streams, false);
    int left = streams;
    std::vector<pollfd> pfds(streams);
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (left > 0 && absl::Now() < deadline) {
      for (int i = 0; i < streams; ++i)
        pfds[i] = {done[i] ? -1 : fds[i], POLLIN, 0};
      if (::poll(pfds.data(), pfds.size(), 1000) <= 0) continue;
      absl::Time now = absl::Now();
      for (int i = 0; i < streams; ++i) {
        if (done[i] || !(pfds[i].revents & POLLIN)) continue;
        char b[8192];
        ssize_t n = ::recv(fds[i], b, sizeof(b), 0);
        if (n <= 0) return false;
        bufs[i].append(b, n);
        if (bufs[i].find(needle) != std::string::npos) {
          done[i] = true;
          --left;
          bufs[i].clear();
          if (lat) lat->push_back(absl::ToDoubleMilliseconds(now - t0));
        }
      }
    }
    return left == 0;
  };
  if (!read_until("id: 1\n", nullptr, absl::Now())) return 1;
  const int threads_during = Threads();
  const int64_t rss_during = RssKiB();

  std::vector<double> latencies;
  for (int u = 0; u < updates; ++u) {
    absl::Time t0 = absl::Now();
    gateway.Advance(id, Generation::STATE_GENERATING, absl::StrCat("step ", u));
    if (!read_until(absl::StrCat("id: ", u + 2, "\n"), &latencies, t0)) {
      std::fprintf(stderr, "update %d did not reach every stream\n", u);
      return 1;
    }
  }
  for (int fd : fds) ::close(fd);
  std::printf(
      "{\"streams\":%d,\"updates\":%d,\"io_threads\":%d,"
      "\"threads_before\":%d,\"threads_with_streams\":%d,"
      "\"rss_kib_per_stream\":%.1f,"
      "\"fanout_ms_p50\":%.2f,\"fanout_ms_p99\":%.2f,\"fanout_ms_max\":%.2f}\n",
      streams, updates, options.io_threads, threads_before, threads_during,
      static_cast<double>(rss_during - rss_before) / streams,
      Percentile(latencies, 0.5), Percentile(latencies, 0.99),
      Percentile(latencies, 1.0));
  server.Stop();
  return 0;
}
