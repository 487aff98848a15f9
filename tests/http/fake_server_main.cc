// http_fake_server: the HTTP listener (HttpServer) over the test fakes, with
// generations that move QUEUED -> GENERATING -> COMPLETED on a timer and a
// playable MP4 as each one's mirrored copy. It stands in for videogen-server
// in the dashboard and curl tests until main.cc wires the HttpServer in, and
// lets the dashboard be worked on alone. Keys: k-acme, k-other, k-admin.
//
//   http_fake_server [--http_listen=127.0.0.1:0] [--queued_for_ms=800]
//                    [--generating_for_ms=1500] [--heartbeat_ms=15000]
// Prints "HTTP listening on 127.0.0.1:PORT" once ready; stops on SIGTERM or
// SIGINT.

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "server/http/http_server.h"
#include "server/sim/mp4.h"
#include "tests/http/fakes.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

std::string Flag(int argc, char** argv, const std::string& name,
                 const std::string& fallback) {
  std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) return argv[i] + prefix.size();
  }
  return fallback;
}

int IntFlag(int argc, char** argv, const std::string& name, int fallback) {
  int v = fallback;
  std::string s = Flag(argc, argv, name, "");
  if (!s.empty() && !absl::SimpleAtoi(s, &v)) {
    std::fprintf(stderr, "--%s must be an integer\n", name.c_str());
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using videogen::v1::Generation;
  namespace http = videogen::http;
  const absl::Duration queued =
      absl::Milliseconds(IntFlag(argc, argv, "queued_for_ms", 800));
  const absl::Duration generating =
      absl::Milliseconds(IntFlag(argc, argv, "generating_for_ms", 1500));

  // A 3 s clip the browser can play.
  videogen::sim::Mp4Spec spec;
  spec.width = 256;
  spec.height = 144;
  spec.frames = 30;
  spec.fps = 10;
  std::string mp4 = videogen::sim::MakeMp4(spec);
  char dir_template[] = "/tmp/http_fake_server.XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (dir == nullptr) return 1;
  std::string video_path = std::string(dir) + "/video.mp4";
  std::ofstream(video_path, std::ios::binary) << mp4;

  http::testing::FakeGateway gateway;
  gateway.set_estimate(queued + generating);
  http::testing::FakeAuthenticator auth;
  http::testing::FakeMedia media;
  http::HttpServerOptions options;
  options.listen = Flag(argc, argv, "http_listen", "127.0.0.1:0");
  options.heartbeat_interval =
      absl::Milliseconds(IntFlag(argc, argv, "heartbeat_ms", 15000));
  http::HttpServer server(
      options, &gateway, &auth,
      [&gateway] {
        return "# TYPE fake_generations gauge\n"
               "fake_generations " +
               std::to_string(gateway.All().size()) + "\n";
      },
      &media);
  if (absl::Status s = server.Start(); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::printf("HTTP listening on 127.0.0.1:%d\n", server.port());
  std::fflush(stdout);

  // The "upstream": moves every generation on by its age.
  while (!g_stop) {
    absl::SleepFor(absl::Milliseconds(50));
    const absl::Time now = absl::Now();
    for (const auto& g : gateway.All()) {
      if (g->done()) continue;
      absl::Time created = absl::FromUnixSeconds(g->create_time().seconds()) +
                           absl::Nanoseconds(g->create_time().nanos());
      if (g->state() == Generation::STATE_QUEUED && now - created >= queued) {
        gateway.Advance(g->id(), Generation::STATE_GENERATING, "generating");
      } else if (g->state() == Generation::STATE_GENERATING &&
                 now - created >= queued + generating) {
        http::MediaFile file;
        file.path = video_path;
        file.size = static_cast<int64_t>(mp4.size());
        file.content_type = "video/mp4";
        media.Put(g->id(), file);
        gateway.Advance(g->id(), Generation::STATE_COMPLETED, "completed");
      }
    }
  }
  server.Drain();
  server.Stop();
  std::remove(video_path.c_str());
  rmdir(dir);
  return 0;
}
