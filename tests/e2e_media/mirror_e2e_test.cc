// Issue 21 end to end: completed videos are copied before COMPLETED and
// served by videogen at /v1/media/{id} after the upstream's file is gone;
// failed copies still complete (with mirror_error and the upstream URL); a
// kill -9 mid-copy leaves nothing visible and the copy completes after a
// restart; media is private to its tenant, purged with its record, and
// servable from S3.
#include <signal.h>
#include <sys/stat.h>

#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_media/media_harness.h"
#include "tests/e2e_media/upstream_front.h"

namespace videogen::e2e_media {
namespace {

// The bytes of a video URL's file, fetched from `base` (the simulator).
std::string FetchFile(const std::string& base, const std::string& video_url) {
  std::string path = video_url.substr(video_url.find("/files/"));
  httplib::Client client(base);
  httplib::Result r = client.Get(path);
  if (!r || r->status != 200) return "";
  return r->body;
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

bool HasTempFile(const std::string& dir) {
  for (const std::string& name : ListDir(dir)) {
    if (absl::StartsWith(name, ".tmp-") && FileSize(dir + "/" + name) > 0 &&
        !absl::EndsWith(name, ".meta")) {
      return true;
    }
  }
  return false;
}

// Waits for `pred` every 10 ms; false on timeout.
template <typename Pred>
bool WaitFor(Pred pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pred();
}

std::string Metrics(const std::string& http_url) {
  httplib::Client client(http_url);
  httplib::Result r = client.Get("/metrics");
  return r && r->status == 200 ? r->body : "";
}

// The value of an unlabelled series in a Prometheus text exposition;
// nullopt when the series is absent.
std::optional<double> MetricValue(const std::string& text,
                                  const std::string& name) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!absl::StartsWith(line, name + " ")) continue;
    std::istringstream fields(line.substr(name.size() + 1));
    double value = 0;
    if (fields >> value) return value;
  }
  return std::nullopt;
}

// What the local media store holds on disk: the bytes of its visible
// objects (not temp files nor .meta sidecars).
int64_t MediaBytesOnDisk(const std::string& media_dir) {
  int64_t total = 0;
  for (const std::string& name : ListDir(media_dir)) {
    if (absl::StartsWith(name, ".") || absl::EndsWith(name, ".meta")) continue;
    total += FileSize(media_dir + "/" + name);
  }
  return total;
}

const std::vector<std::string> kFastSim = {"--queued_for=300ms",
                                           "--generating_for=600ms"};

TEST(MirrorE2e, ServesTheSameBytesAfterTheSimulatorIsGone) {
  Sim sim = StartSim(kFastSim);
  const std::string data_dir = MakeTempDir("mirror-data");
  ServerSpec spec;
  spec.upstream_url = sim.url;
  spec.data_dir = data_dir;
  Server server = StartServer(spec);
  Api api(server.http_url);

  absl::StatusOr<v1::Generation> g = api.Create("a fox, mirrored");
  ASSERT_TRUE(g.ok()) << g.status();
  g = api.WaitDone(g->id(), absl::Seconds(30));
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->state(), v1::Generation::STATE_COMPLETED);
  const v1::Video& video = g->video();
  EXPECT_EQ(video.mirror_url(), "/v1/media/" + g->id());
  EXPECT_EQ(video.mirror_error(), "");
  ASSERT_EQ(video.sha256().size(), 64u);
  EXPECT_TRUE(absl::StartsWith(video.url(), sim.url + "/files/"))
      << video.url();

  const std::string original = FetchFile(sim.url, video.url());
  ASSERT_FALSE(original.empty());
  EXPECT_EQ(Sha256Hex(original), video.sha256());
  EXPECT_EQ(FileSize(data_dir + "/media/" + g->id()),
            static_cast<int64_t>(original.size()));

  // Issue 21's metrics: the bytes copied, and what the store holds.
  const std::string metrics = Metrics(server.http_url);
  EXPECT_EQ(MetricValue(metrics, "videogen_mirror_bytes_total"),
            static_cast<double>(original.size()))
      << metrics;
  EXPECT_EQ(MetricValue(metrics, "videogen_media_store_bytes"),
            static_cast<double>(MediaBytesOnDisk(data_dir + "/media")))
      << metrics;
  EXPECT_EQ(MetricValue(metrics, "videogen_media_store_bytes"),
            static_cast<double>(original.size()))
      << metrics;

  // The upstream's file is gone for good.
  sim.process->Kill();
  ASSERT_EQ(FetchFile(sim.url, video.url()), "");

  httplib::Result whole = api.Media(g->id());
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  EXPECT_EQ(Sha256Hex(whole->body), video.sha256());
  EXPECT_EQ(whole->body, original);
  EXPECT_EQ(whole->get_header_value("Content-Type"), "video/mp4");
  EXPECT_EQ(whole->get_header_value("Accept-Ranges"), "bytes");
  EXPECT_EQ(whole->get_header_value("ETag"), "\"" + video.sha256() + "\"");

  httplib::Result part = api.Media(g->id(), "bytes=100-1099");
  ASSERT_TRUE(part);
  ASSERT_EQ(part->status, 206) << part->body;
  EXPECT_EQ(part->get_header_value("Content-Range"),
            absl::StrCat("bytes 100-1099/", original.size()));
  EXPECT_EQ(part->body, original.substr(100, 1000));

  httplib::Result tail = api.Media(g->id(), "bytes=-64");
  ASSERT_TRUE(tail);
  ASSERT_EQ(tail->status, 206);
  EXPECT_EQ(tail->body, original.substr(original.size() - 64));

  httplib::Result beyond =
      api.Media(g->id(), absl::StrCat("bytes=", original.size(), "-"));
  ASSERT_TRUE(beyond);
  EXPECT_EQ(beyond->status, 416);

  // The copy also survives a restart of videogen itself.
  server.process->Signal(SIGTERM);
  ASSERT_TRUE(server.process->Wait(absl::Seconds(20)).has_value());
  server = StartServer(spec);
  Api again(server.http_url);
  httplib::Result after = again.Media(g->id());
  ASSERT_TRUE(after);
  ASSERT_EQ(after->status, 200);
  EXPECT_EQ(Sha256Hex(after->body), video.sha256());
  // A restarted server counts what its store already holds, and has
  // copied nothing itself yet.
  const std::string restarted = Metrics(server.http_url);
  EXPECT_EQ(MetricValue(restarted, "videogen_media_store_bytes"),
            static_cast<double>(original.size()))
      << restarted;
  EXPECT_EQ(MetricValue(restarted, "videogen_mirror_bytes_total"), 0.0)
      << restarted;
}

TEST(MirrorE2e, MediaIsPrivateToItsTenant) {
  Sim sim = StartSim(kFastSim);
  const std::string data_dir = MakeTempDir("tenant-data");
  absl::StatusOr<std::string> key_a = CreateKey(data_dir, "tenant-a", false);
  ASSERT_TRUE(key_a.ok()) << key_a.status();
  absl::StatusOr<std::string> key_b = CreateKey(data_dir, "tenant-b", false);
  ASSERT_TRUE(key_b.ok()) << key_b.status();
  absl::StatusOr<std::string> admin = CreateKey(data_dir, "ops", true);
  ASSERT_TRUE(admin.ok()) << admin.status();
  ServerSpec spec;
  spec.upstream_url = sim.url;
  spec.data_dir = data_dir;
  spec.auth = "keys";
  Server server = StartServer(spec);
  Api a(server.http_url, *key_a);
  Api b(server.http_url, *key_b);
  Api ops(server.http_url, *admin);
  Api nobody(server.http_url);

  absl::StatusOr<v1::Generation> g = a.Create("tenant a's fox");
  ASSERT_TRUE(g.ok()) << g.status();
  g = a.WaitDone(g->id(), absl::Seconds(30));
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->video().mirror_url(), "/v1/media/" + g->id());
  EXPECT_EQ(g->tenant(), "tenant-a");

  httplib::Result mine = a.Media(g->id());
  ASSERT_TRUE(mine);
  EXPECT_EQ(mine->status, 200);
  EXPECT_EQ(Sha256Hex(mine->body), g->video().sha256());

  httplib::Result theirs = b.Media(g->id());
  ASSERT_TRUE(theirs);
  EXPECT_EQ(theirs->status, 404) << theirs->body;
  EXPECT_EQ(theirs->body.find(g->video().sha256()), std::string::npos);
  httplib::Result theirs_range = b.Media(g->id(), "bytes=0-9");
  ASSERT_TRUE(theirs_range);
  EXPECT_EQ(theirs_range->status, 404);

  // <video src> sends the key as ?access_token=: the same check applies.
  httplib::Client raw(server.http_url);
  httplib::Result by_token =
      raw.Get(absl::StrCat("/v1/media/", g->id(), "?access_token=", *key_b));
  ASSERT_TRUE(by_token);
  EXPECT_EQ(by_token->status, 404);
  by_token =
      raw.Get(absl::StrCat("/v1/media/", g->id(), "?access_token=", *key_a));
  ASSERT_TRUE(by_token);
  EXPECT_EQ(by_token->status, 200);

  httplib::Result anonymous = nobody.Media(g->id());
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);

  httplib::Result admin_view = ops.Media(g->id());
  ASSERT_TRUE(admin_view);
  EXPECT_EQ(admin_view->status, 200);
}

// The purge runs hourly, and on SIGHUP (server/main.cc's signal loop).
TEST(MirrorE2e, RetentionPurgeRemovesMediaWithItsRecord) {
  Sim sim = StartSim(kFastSim);
  const std::string data_dir = MakeTempDir("retention-data");
  ServerSpec spec;
  spec.upstream_url = sim.url;
  spec.data_dir = data_dir;
  spec.flags = {"--retention=1s"};
  Server server = StartServer(spec);
  Api api(server.http_url);
  const std::string media_dir = data_dir + "/media";

  // Two videos: the metrics sum them.
  absl::StatusOr<v1::Generation> other = api.Create("another short-lived fox");
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<v1::Generation> g = api.Create("a short-lived fox");
  ASSERT_TRUE(g.ok()) << g.status();
  g = api.WaitDone(g->id(), absl::Seconds(30));
  ASSERT_TRUE(g.ok()) << g.status();
  other = api.WaitDone(other->id(), absl::Seconds(30));
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_FALSE(g->video().mirror_url().empty());
  ASSERT_FALSE(other->video().mirror_url().empty());
  const std::string file = media_dir + "/" + g->id();
  ASSERT_GT(FileSize(file), 0);
  const int64_t other_size = FileSize(media_dir + "/" + other->id());
  ASSERT_GT(other_size, 0);
  httplib::Result before = api.Media(g->id());
  ASSERT_TRUE(before);
  EXPECT_EQ(before->status, 200);
  const std::string metrics = Metrics(server.http_url);
  const double both = static_cast<double>(FileSize(file) + other_size);
  EXPECT_EQ(MetricValue(metrics, "videogen_mirror_bytes_total"), both)
      << metrics;
  EXPECT_EQ(MetricValue(metrics, "videogen_media_store_bytes"), both)
      << metrics;
  EXPECT_EQ(MediaBytesOnDisk(media_dir), FileSize(file) + other_size);

  absl::SleepFor(absl::Milliseconds(1500));  // older than --retention
  server.process->Signal(SIGHUP);
  ASSERT_TRUE(server.process->WaitForOutput("\"purged\"", absl::Seconds(10)))
      << server.process->Stdout();
  EXPECT_TRUE(absl::IsNotFound(api.Get(g->id()).status()));
  httplib::Result after = api.Media(g->id());
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 404);
  EXPECT_EQ(FileSize(file), -1) << "the mirrored file outlived its record";
  EXPECT_EQ(FileSize(file + ".meta"), -1);
  // The purge frees the store: its size drops to what is left on disk
  // (nothing), while the bytes ever mirrored stay counted.
  EXPECT_EQ(MediaBytesOnDisk(media_dir), 0);
  const std::string purged = Metrics(server.http_url);
  EXPECT_EQ(MetricValue(purged, "videogen_media_store_bytes"), 0.0) << purged;
  EXPECT_EQ(MetricValue(purged, "videogen_mirror_bytes_total"), both) << purged;
}

#ifdef VIDEOGEN_HAVE_BOTOCORE
struct S3Standin {
  std::unique_ptr<Process> process;
  std::string url;
  nlohmann::json Stats() const {
    httplib::Client client(url);
    httplib::Result r = client.Get("/_stats");
    return r && r->status == 200 ? nlohmann::json::parse(r->body)
                                 : nlohmann::json::object();
  }
};

S3Standin StartS3() {
  S3Standin s;
  s.process = std::make_unique<Process>(
      std::vector<std::string>{"/usr/bin/python3", VIDEOGEN_S3_STANDIN,
                               "--access-key", "AKIDE2EMEDIA", "--secret-key",
                               "e2e-secret/with+chars", "--region", "eu-west-1",
                               "--bucket", "videos"},
      std::map<std::string, std::string>{});
  if (!s.process->WaitForOutput("PORT ", absl::Seconds(20))) {
    throw std::runtime_error("s3 stand-in did not start: " +
                             s.process->Stderr());
  }
  std::smatch m;
  std::string out = s.process->Stdout();
  std::regex_search(out, m, std::regex("PORT (\\d+)"));
  s.url = "http://127.0.0.1:" + m.str(1);
  return s;
}

TEST(MirrorE2e, S3MirroredVideoIsServedOverHttp) {
  Sim sim = StartSim(kFastSim);
  S3Standin s3 = StartS3();
  const std::string data_dir = MakeTempDir("s3-data");
  ServerSpec spec;
  spec.upstream_url = sim.url;
  spec.data_dir = data_dir;
  spec.mirror = "s3";
  spec.flags = {"--s3_endpoint=" + s3.url, "--s3_bucket=videos",
                "--s3_region=eu-west-1", "--retention=1s"};
  spec.env = {{"AWS_ACCESS_KEY_ID", "AKIDE2EMEDIA"},
              {"AWS_SECRET_ACCESS_KEY", "e2e-secret/with+chars"}};
  Server server = StartServer(spec);
  Api api(server.http_url);

  absl::StatusOr<v1::Generation> g = api.Create("a fox in a bucket");
  ASSERT_TRUE(g.ok()) << g.status();
  g = api.WaitDone(g->id(), absl::Seconds(30));
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->state(), v1::Generation::STATE_COMPLETED);
  ASSERT_EQ(g->video().mirror_url(), "/v1/media/" + g->id())
      << g->video().mirror_error();
  const std::string original = FetchFile(sim.url, g->video().url());
  ASSERT_FALSE(original.empty());
  EXPECT_EQ(Sha256Hex(original), g->video().sha256());
  sim.process->Kill();

  httplib::Result whole = api.Media(g->id());
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  EXPECT_EQ(whole->body, original);
  EXPECT_EQ(whole->get_header_value("ETag"), "\"" + g->video().sha256() + "\"");
  httplib::Result part = api.Media(g->id(), "bytes=10-19");
  ASSERT_TRUE(part);
  ASSERT_EQ(part->status, 206);
  EXPECT_EQ(part->body, original.substr(10, 10));

  nlohmann::json stats = s3.Stats();
  EXPECT_EQ(stats["rejected"], 0) << stats.dump();
  EXPECT_GE(stats["verified"].get<int>(), 3) << stats.dump();
  EXPECT_EQ(stats["methods"]["PUT"], 1) << stats.dump();
  // One HEAD per media request (the store is asked every time), one GET:
  // the second request is served from the local copy.
  EXPECT_EQ(stats["methods"]["HEAD"], 2) << stats.dump();
  EXPECT_EQ(stats["methods"]["GET"], 1) << stats.dump();

  // Retention deletes the object from the bucket with its record.
  absl::SleepFor(absl::Milliseconds(1500));
  server.process->Signal(SIGHUP);
  ASSERT_TRUE(server.process->WaitForOutput("\"purged\"", absl::Seconds(10)));
  EXPECT_EQ(s3.Stats()["methods"]["DELETE"], 1);
  httplib::Result gone = api.Media(g->id());
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, 404);
}

// The bucket refuses every upload (a wrong secret): the generation still
// completes, with the upstream URL and the store's refusal, and the secret
// shows up nowhere.
TEST(MirrorE2e, S3RefusalCompletesWithMirrorErrorAndNoSecret) {
  Sim sim = StartSim(kFastSim);
  S3Standin s3 = StartS3();
  const std::string wrong_secret = "not-the-secret-4f1d2c";
  ServerSpec spec;
  spec.upstream_url = sim.url;
  spec.data_dir = MakeTempDir("s3-refused-data");
  spec.mirror = "s3";
  spec.flags = {"--s3_endpoint=" + s3.url, "--s3_bucket=videos",
                "--s3_region=eu-west-1"};
  spec.env = {{"AWS_ACCESS_KEY_ID", "AKIDE2EMEDIA"},
              {"AWS_SECRET_ACCESS_KEY", wrong_secret}};
  Server server = StartServer(spec);
  Api api(server.http_url);

  absl::StatusOr<v1::Generation> g = api.Create("a fox the bucket refuses");
  ASSERT_TRUE(g.ok()) << g.status();
  g = api.WaitDone(g->id(), absl::Seconds(60));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(g->video().mirror_url(), "");
  EXPECT_EQ(g->video().mirror_error(),
            "media store: s3 answered 403 SignatureDoesNotMatch");
  EXPECT_TRUE(absl::StartsWith(g->video().url(), sim.url + "/files/"));
  EXPECT_GE(s3.Stats()["rejected"].get<int>(), 1);
  // The bucket refuses videogen, not the caller: 503, never the caller's 403.
  httplib::Result media = api.Media(g->id());
  ASSERT_TRUE(media);
  EXPECT_EQ(media->status, 503) << media->body;
  EXPECT_EQ(media->body.find(wrong_secret), std::string::npos);
  EXPECT_NE(Metrics(server.http_url)
                .find("videogen_mirror_failures_total{reason=\"store\"} 1"),
            std::string::npos);
  const std::string logs = server.process->Stdout() + server.process->Stderr();
  EXPECT_EQ(logs.find(wrong_secret), std::string::npos);
  httplib::Client raw(server.http_url);
  httplib::Result json = raw.Get("/v1/generations/" + g->id());
  ASSERT_TRUE(json);
  EXPECT_EQ(json->body.find(wrong_secret), std::string::npos);
}
#endif  // VIDEOGEN_HAVE_BOTOCORE

TEST(MirrorFailureE2e, FailedCopiesCompleteWithMirrorErrorAndTheUpstreamUrl) {
  Sim sim = StartSim(kFastSim);
  UpstreamFront front(sim.url);
  ServerSpec spec;
  spec.upstream_url = front.url();
  spec.data_dir = MakeTempDir("failures-data");
  Server server = StartServer(spec);
  Api api(server.http_url);

  struct Case {
    std::string prompt;
    std::regex error;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"[front:404] a fox", std::regex("^upstream answered 404$"), "not_found"},
      {"[front:truncated] a fox",
       std::regex(R"(^truncated: got (\d+) of (\d+) bytes$)"), "truncated"},
      {"[front:wrong_size] a fox",
       std::regex(R"(^size mismatch: upstream sends \d+ bytes, expected \d+$)"),
       "size_mismatch"},
  };
  std::vector<std::string> ids;
  for (const Case& c : cases) {
    absl::StatusOr<v1::Generation> g = api.Create(c.prompt);
    ASSERT_TRUE(g.ok()) << g.status();
    ids.push_back(g->id());
  }
  const absl::Time start = absl::Now();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].prompt);
    absl::StatusOr<v1::Generation> g = api.WaitDone(ids[i], absl::Seconds(90));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->state(), v1::Generation::STATE_COMPLETED);
    EXPECT_FALSE(g->has_error());
    const v1::Video& v = g->video();
    EXPECT_TRUE(std::regex_match(v.mirror_error(), cases[i].error))
        << v.mirror_error();
    EXPECT_EQ(v.mirror_url(), "");
    EXPECT_EQ(v.sha256(), "");
    EXPECT_TRUE(absl::StartsWith(v.url(), front.url() + "/files/")) << v.url();
    httplib::Result media = api.Media(ids[i]);
    ASSERT_TRUE(media);
    EXPECT_EQ(media->status, 404);
  }
  std::printf("mirror failures: 3 generations done %.1f s after create\n",
              absl::ToDoubleSeconds(absl::Now() - start));
  const std::string metrics = Metrics(server.http_url);
  for (const Case& c : cases) {
    EXPECT_NE(
        metrics.find(absl::StrCat("videogen_mirror_failures_total{reason=\"",
                                  c.reason, "\"} 1")),
        std::string::npos)
        << c.reason << "\n"
        << metrics;
  }
  EXPECT_GE(front.range_requests(), 1) << "the truncated copy never resumed";
}

TEST(MirrorFailureE2e,
     KillNineMidCopyLeavesNoPartialFileAndResumesAfterRestart) {
  Sim sim = StartSim(kFastSim);
  UpstreamFront front(sim.url);
  ServerSpec spec;
  spec.upstream_url = front.url();
  spec.data_dir = MakeTempDir("kill9-data");
  const std::string media_dir = spec.data_dir + "/media";
  Server server = StartServer(spec);
  Api api(server.http_url);

  absl::StatusOr<v1::Generation> g = api.Create("[front:slow] a fox");
  ASSERT_TRUE(g.ok()) << g.status();
  const std::string id = g->id();
  ASSERT_TRUE(
      WaitFor([&] { return HasTempFile(media_dir); }, absl::Seconds(30)))
      << "no copy in progress under " << media_dir;
  g = api.Get(id);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_FALSE(g->done()) << "COMPLETED before the copy finished";
  server.process->Kill();  // SIGKILL

  for (const std::string& name : ListDir(media_dir)) {
    EXPECT_TRUE(absl::StartsWith(name, ".tmp-"))
        << "visible after kill -9: " << name;
  }
  EXPECT_EQ(FileSize(media_dir + "/" + id), -1);

  server = StartServer(spec);
  Api again(server.http_url);
  absl::StatusOr<v1::Generation> done = again.WaitDone(id, absl::Seconds(90));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(done->video().mirror_url(), "/v1/media/" + id);
  EXPECT_EQ(done->video().mirror_error(), "");
  const std::string original = FetchFile(sim.url, done->video().url());
  ASSERT_FALSE(original.empty());
  EXPECT_EQ(done->video().sha256(), Sha256Hex(original));
  httplib::Result media = again.Media(id);
  ASSERT_TRUE(media);
  ASSERT_EQ(media->status, 200);
  EXPECT_EQ(media->body, original);
  for (const std::string& name : ListDir(media_dir)) {
    EXPECT_FALSE(absl::StartsWith(name, ".tmp-")) << "left behind: " << name;
  }
  EXPECT_GE(front.file_requests(), 2);
}

}  // namespace
}  // namespace videogen::e2e_media
