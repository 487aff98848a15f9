#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/media/media_store.h"
#include "server/media/mirror_pool.h"
#include "tests/media/test_util.h"

namespace videogen::media {
namespace {

using testing::Child;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::IndependentSha256;
using testing::ListDir;
using testing::RandomBytes;
using testing::TempDir;
using testing::VideoServer;
using testing::WaitFor;

constexpr size_t kSize = (1 << 20) + 12345;
constexpr size_t kDropAt = 400000;

// One Copy's outcome.
struct Outcome {
  absl::Notification done;
  absl::StatusOr<MirrorResult> result;
  int calls = 0;
  MirrorCallback Callback() {
    return [this](absl::StatusOr<MirrorResult> r) {
      ++calls;
      result = std::move(r);
      done.Notify();
    };
  }
  const absl::StatusOr<MirrorResult>& Wait() {
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    return result;
  }
};

class MirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = NewLocalMediaStore(dir_.path() + "/media");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    options_.download.initial_backoff = absl::Milliseconds(10);
    options_.download.max_backoff = absl::Milliseconds(40);
    options_.download.attempts = 3;
    options_.stats = &stats_;
    mirror_ = NewMirror(store_.get(), options_);
  }

  MirrorJob Job(const std::string& path, const std::string& id = "gen_1") {
    MirrorJob job;
    job.generation_id = id;
    job.tenant = "acme";
    job.url = server_.Url(path);
    return job;
  }

  absl::StatusOr<MirrorResult> CopyAndWait(MirrorJob job) {
    Outcome out;
    mirror_->Copy(std::move(job), out.Callback());
    out.Wait();
    EXPECT_EQ(out.calls, 1);
    return out.result;
  }

  std::string MediaDir() const { return dir_.path() + "/media"; }
  std::vector<std::string> Files() const { return ListDir(MediaDir()); }
  int Requests(const std::string& path) const {
    int n = 0;
    for (const std::string& r : server_.requests()) {
      n += absl::StartsWith(r, path + " ");
    }
    return n;
  }

  TempDir dir_;
  VideoServer server_{RandomBytes(kSize, 42), kDropAt};
  std::unique_ptr<MediaStore> store_;
  MirrorStats stats_;
  MirrorOptions options_;
  std::unique_ptr<Mirror> mirror_;
};

TEST_F(MirrorTest, CopiesTheBytesWithAnIndependentlyCheckedSha256) {
  MirrorJob job = Job("/video.mp4");
  job.expected_size = kSize;
  job.expected_content_type = "video/mp4";
  absl::StatusOr<MirrorResult> r = CopyAndWait(job);
  ASSERT_TRUE(r.ok()) << r.status();
  std::string sha = IndependentSha256(server_.body(), dir_.path());
  ASSERT_EQ(sha.size(), 64u);
  EXPECT_EQ(r->sha256, sha);
  EXPECT_EQ(r->size, static_cast<int64_t>(kSize));
  EXPECT_EQ(r->mirror_url, "/v1/media/gen_1");
  EXPECT_THAT(Files(), ElementsAre("gen_1", "gen_1.meta"));
  EXPECT_EQ(testing::ReadFile(MediaDir() + "/gen_1"), server_.body());

  absl::StatusOr<MediaObject> obj = store_->Open("gen_1");
  ASSERT_TRUE(obj.ok()) << obj.status();
  EXPECT_EQ(obj->size, static_cast<int64_t>(kSize));
  EXPECT_EQ(obj->content_type, "video/mp4");
  EXPECT_EQ(obj->sha256, sha);
  EXPECT_EQ(obj->local_path, MediaDir() + "/gen_1");

  std::string slice;
  ASSERT_TRUE(store_
                  ->Read("gen_1", 100, 70000,
                         [&](std::string_view b) {
                           slice.append(b.data(), b.size());
                           return true;
                         })
                  .ok());
  EXPECT_EQ(slice, server_.body().substr(100, 70000));
  EXPECT_TRUE(absl::IsOutOfRange(store_->Read(
      "gen_1", kSize - 10, 11, [](std::string_view) { return true; })));

  MirrorStats::Snapshot s = stats_.snapshot();
  EXPECT_EQ(s.bytes_mirrored, static_cast<int64_t>(kSize));
  EXPECT_EQ(s.copies, 1);
  EXPECT_TRUE(s.failures.empty());
  EXPECT_EQ(store_->StoredBytes(), static_cast<int64_t>(kSize));
}

TEST_F(MirrorTest, UpstreamNotFoundIsRetriedThenReported) {
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/missing.mp4"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "upstream answered 404");
  EXPECT_EQ(Requests("/missing.mp4"), 3);
  EXPECT_TRUE(Files().empty());
  EXPECT_EQ(stats_.snapshot().failures["not_found"], 1);
}

TEST_F(MirrorTest, TruncatedBodyResumesThenFails) {
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/truncated.mp4"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            absl::StrCat("truncated: got ", kDropAt, " of ", kSize, " bytes"));
  // The first attempt progressed, so it resumed; later ones did not.
  std::vector<std::string> reqs = server_.requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[0], "/truncated.mp4 -");
  EXPECT_EQ(reqs[1], absl::StrCat("/truncated.mp4 bytes=", kDropAt, "-"));
  EXPECT_TRUE(Files().empty());
  EXPECT_EQ(stats_.snapshot().failures["truncated"], 1);
}

TEST_F(MirrorTest, SizeMismatchFailsAtOnce) {
  MirrorJob job = Job("/video.mp4");
  job.expected_size = kSize + 1;
  absl::StatusOr<MirrorResult> r = CopyAndWait(job);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            absl::StrCat("size mismatch: upstream sends ", kSize,
                         " bytes, expected ", kSize + 1));
  EXPECT_EQ(Requests("/video.mp4"), 1);  // retrying cannot help
  EXPECT_TRUE(Files().empty());
}

TEST_F(MirrorTest, AnHtmlPageIsNotAVideo) {
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/page.html"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "unexpected content type text/html");
  EXPECT_TRUE(Files().empty());
}

TEST_F(MirrorTest, TooLargeStopsTheDownload) {
  mirror_.reset();
  options_.download.max_bytes = kSize - 1;
  mirror_ = NewMirror(store_.get(), options_);
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/video.mp4"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            absl::StrCat("too large: ", kSize, " bytes, limit ", kSize - 1));
  EXPECT_TRUE(Files().empty());
}

TEST_F(MirrorTest, DroppedConnectionResumesWithRange) {
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/drop-once.mp4"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, IndependentSha256(server_.body(), dir_.path()));
  EXPECT_THAT(server_.requests(),
              ElementsAre("/drop-once.mp4 -",
                          absl::StrCat("/drop-once.mp4 bytes=", kDropAt, "-")));
  // The second request sent only the rest.
  EXPECT_THAT(server_.served(), ElementsAre(kDropAt, kSize - kDropAt));
  EXPECT_EQ(testing::ReadFile(MediaDir() + "/gen_1"), server_.body());
}

TEST_F(MirrorTest, RestartsWhenTheServerIgnoresRange) {
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/no-range.mp4"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->size, static_cast<int64_t>(kSize));
  EXPECT_EQ(r->sha256, IndependentSha256(server_.body(), dir_.path()));
  EXPECT_EQ(Requests("/no-range.mp4"), 2);
  // The resume asked for a range and got the whole file again.
  EXPECT_THAT(server_.requests(),
              ElementsAre("/no-range.mp4 -",
                          absl::StrCat("/no-range.mp4 bytes=", kDropAt, "-")));
  EXPECT_THAT(server_.served(), ElementsAre(kDropAt, kSize));
}

TEST_F(MirrorTest, FollowsRedirects) {
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/redirect.mp4"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, IndependentSha256(server_.body(), dir_.path()));
}

TEST_F(MirrorTest, StoppingMidDownloadLeavesNoFileAndAnswersCancelled) {
  Outcome out;
  mirror_->Copy(Job("/gate.mp4"), out.Callback());
  // Wait until the copy is stuck half way (the server holds the rest).
  ASSERT_TRUE(WaitFor([&] {
    for (const std::string& f : Files()) {
      struct stat st;
      if (absl::StartsWith(f, ".tmp-") &&
          stat((MediaDir() + "/" + f).c_str(), &st) == 0 &&
          st.st_size == static_cast<off_t>(kDropAt)) {
        return true;
      }
    }
    return false;
  }));
  Outcome queued;
  mirror_->Copy(Job("/video.mp4", "gen_2"), queued.Callback());
  Outcome queued2;
  mirror_->Copy(Job("/video.mp4", "gen_3"), queued2.Callback());
  mirror_.reset();  // stops: aborts the transfer, answers everything
  ASSERT_TRUE(out.done.HasBeenNotified());
  EXPECT_TRUE(absl::IsCancelled(out.result.status())) << out.result.status();
  EXPECT_EQ(out.calls, 1);
  // Jobs still queued are answered too (or finished, if a thread was free).
  EXPECT_TRUE(queued.done.HasBeenNotified());
  EXPECT_TRUE(queued2.done.HasBeenNotified());
  for (const std::string& f : Files()) {
    EXPECT_FALSE(absl::StartsWith(f, "gen_1")) << f;
    EXPECT_FALSE(absl::StartsWith(f, ".tmp-")) << f;
  }

  // A later copy of the same job completes.
  server_.Release();
  mirror_ = NewMirror(store_.get(), options_);
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/gate.mp4"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, IndependentSha256(server_.body(), dir_.path()));
}

TEST_F(MirrorTest, KillNineMidCopyLeavesNoVisibleFileAndACopyCompletesAfter) {
  mirror_.reset();
  store_.reset();
  Child child(
      {VIDEOGEN_MIRROR_COPY, server_.Url("/gate.mp4"), MediaDir(), "gen_1"});
  ASSERT_TRUE(child.started());
  std::string partial;
  ASSERT_TRUE(WaitFor([&] {
    for (const std::string& f : Files()) {
      struct stat st;
      if (absl::StartsWith(f, ".tmp-") &&
          stat((MediaDir() + "/" + f).c_str(), &st) == 0 &&
          st.st_size == static_cast<off_t>(kDropAt)) {
        partial = f;
        return true;
      }
    }
    return false;
  }));
  int status = child.KillAndWait(SIGKILL);
  ASSERT_TRUE(WIFSIGNALED(status));
  // Only the hidden temp file: nothing a reader could mistake for the
  // video, and no metadata without bytes.
  EXPECT_THAT(Files(), ElementsAre(partial));

  // Restart: the store sweeps the leftover, and the copy completes.
  server_.Release();
  auto store = NewLocalMediaStore(MediaDir());
  ASSERT_TRUE(store.ok());
  store_ = std::move(*store);
  EXPECT_TRUE(Files().empty());
  EXPECT_TRUE(absl::IsNotFound(store_->Open("gen_1").status()));
  mirror_ = NewMirror(store_.get(), options_);
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/gate.mp4"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, IndependentSha256(server_.body(), dir_.path()));
  EXPECT_THAT(Files(), ElementsAre("gen_1", "gen_1.meta"));
}

TEST_F(MirrorTest, ChildProcessCopiesToo) {
  // The helper the kill test relies on really copies when left alone.
  Child child(
      {VIDEOGEN_MIRROR_COPY, server_.Url("/video.mp4"), MediaDir(), "gen_9"});
  ASSERT_TRUE(child.started());
  std::string line = child.ReadLine(absl::Seconds(60));
  EXPECT_EQ(line,
            absl::StrCat("OK ", IndependentSha256(server_.body(), dir_.path()),
                         " ", kSize));
  EXPECT_EQ(child.Wait(), 0);
}

TEST_F(MirrorTest, RemoveDeletesAndRestartCountsStoredBytes) {
  ASSERT_TRUE(CopyAndWait(Job("/video.mp4", "gen_a")).ok());
  ASSERT_TRUE(CopyAndWait(Job("/video.mp4", "gen_b")).ok());
  EXPECT_EQ(store_->StoredBytes(), static_cast<int64_t>(2 * kSize));
  auto reopened = NewLocalMediaStore(MediaDir());
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->StoredBytes(), static_cast<int64_t>(2 * kSize));

  ASSERT_TRUE(store_->Remove("gen_a").ok());
  EXPECT_TRUE(absl::IsNotFound(store_->Open("gen_a").status()));
  EXPECT_TRUE(store_->Remove("gen_a").ok());  // already gone: fine
  EXPECT_EQ(store_->StoredBytes(), static_cast<int64_t>(kSize));
  EXPECT_THAT(Files(), ElementsAre("gen_b", "gen_b.meta"));
}

TEST_F(MirrorTest, RejectsIdsThatCouldEscapeTheDirectory) {
  EXPECT_TRUE(absl::IsInvalidArgument(store_->Open("../etc").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->Remove("a/b")));
  absl::StatusOr<MirrorResult> r = CopyAndWait(Job("/video.mp4", "../x"));
  EXPECT_TRUE(absl::IsInvalidArgument(r.status()));
  EXPECT_EQ(Requests("/video.mp4"), 0);
}

TEST_F(MirrorTest, ManyJobsOnASmallPoolEachAnsweredOnce) {
  std::vector<std::unique_ptr<Outcome>> outs;
  for (int i = 0; i < 6; ++i) {
    outs.push_back(std::make_unique<Outcome>());
    mirror_->Copy(Job("/video.mp4", absl::StrCat("gen_", i)),
                  outs.back()->Callback());
  }
  std::string sha = IndependentSha256(server_.body(), dir_.path());
  for (auto& o : outs) {
    ASSERT_TRUE(o->Wait().ok()) << o->result.status();
    EXPECT_EQ(o->result->sha256, sha);
  }
  mirror_.reset();
  for (auto& o : outs) EXPECT_EQ(o->calls, 1);
  EXPECT_EQ(stats_.snapshot().copies, 6);
}

}  // namespace
}  // namespace videogen::media
