// The S3 media store against a local stand-in that checks every request's
// SigV4 signature with botocore (tests/media/s3_standin.py), so a signing
// bug cannot pass against a lenient server.

#include <curl/curl.h>
#include <stdlib.h>

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
#include "nlohmann/json.hpp"
#include "server/media/media_store.h"
#include "server/media/mirror_pool.h"
#include "tests/media/test_util.h"

namespace videogen::media {
namespace {

using testing::Child;
using ::testing::HasSubstr;
using testing::IndependentSha256;
using testing::ListDir;
using testing::RandomBytes;
using testing::TempDir;
using testing::VideoServer;

constexpr char kAccessKey[] = "AKIDVIDEOGENTEST";
constexpr char kSecret[] = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
constexpr char kRegion[] = "eu-west-3";
constexpr char kBucket[] = "videos";
constexpr size_t kSize = 1600000;  // over 1 MiB: curl adds Expect: 100-continue

size_t Append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// The stand-in, on a free port, for one test.
class S3StandIn {
 public:
  explicit S3StandIn(const std::string& token = "") : child_(Args(token)) {
    std::string line = child_.ReadLine(absl::Seconds(30));
    if (absl::StartsWith(line, "PORT ")) port_ = std::stoi(line.substr(5));
  }
  bool ready() const { return port_ > 0; }
  std::string endpoint() const {
    return absl::StrCat("http://127.0.0.1:", port_);
  }
  // The stand-in's counters: requests, verified, rejected, reasons, and the
  // SignedHeaders last seen per method.
  nlohmann::json Stats() const {
    std::string body;
    CURL* curl = curl_easy_init();
    std::string url = endpoint() + "/_stats";
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Append);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_perform(curl);
    curl_easy_cleanup(curl);
    return nlohmann::json::parse(body, nullptr, false);
  }

 private:
  static std::vector<std::string> Args(const std::string& token) {
    std::vector<std::string> args = {"/usr/bin/python3", VIDEOGEN_S3_STANDIN,
                                     "--access-key",     kAccessKey,
                                     "--secret-key",     kSecret,
                                     "--region",         kRegion,
                                     "--bucket",         kBucket};
    if (!token.empty()) {
      args.push_back("--token");
      args.push_back(token);
    }
    return args;
  }

  Child child_;
  int port_ = 0;
};

class S3Test : public ::testing::Test {
 protected:
  S3Options Options(const S3StandIn& s3) {
    S3Options o;
    o.endpoint = s3.endpoint();
    o.bucket = kBucket;
    o.region = kRegion;
    o.prefix = "media/";
    o.access_key_id = kAccessKey;
    o.secret_access_key = kSecret;
    o.staging_dir = dir_.path() + "/staging";
    o.timeout = absl::Seconds(30);
    return o;
  }

  MirrorOptions Fast() {
    MirrorOptions o;
    o.download.initial_backoff = absl::Milliseconds(10);
    o.download.max_backoff = absl::Milliseconds(40);
    o.stats = &stats_;
    return o;
  }

  absl::StatusOr<MirrorResult> Copy(MediaStore* store, const std::string& id) {
    std::unique_ptr<Mirror> mirror = NewMirror(store, Fast());
    absl::Notification done;
    absl::StatusOr<MirrorResult> result;
    MirrorJob job;
    job.generation_id = id;
    job.url = server_.Url("/video.mp4");
    job.expected_size = kSize;
    mirror->Copy(job, [&](absl::StatusOr<MirrorResult> r) {
      result = std::move(r);
      done.Notify();
    });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    return result;
  }

  std::string ReadAll(MediaStore* store, const std::string& id, int64_t offset,
                      int64_t length, absl::Status* status) {
    std::string out;
    *status = store->Read(id, offset, length, [&](std::string_view b) {
      out.append(b.data(), b.size());
      return true;
    });
    return out;
  }

  TempDir dir_;
  VideoServer server_{RandomBytes(kSize, 7), kSize};
  MirrorStats stats_;
};

TEST_F(S3Test, MirrorsIntoS3AndServesRangesWithVerifiedSignatures) {
  S3StandIn s3;
  ASSERT_TRUE(s3.ready());
  auto store = NewS3MediaStore(Options(s3));
  ASSERT_TRUE(store.ok()) << store.status();

  absl::StatusOr<MirrorResult> r = Copy(store->get(), "gen_s3");
  ASSERT_TRUE(r.ok()) << r.status() << " " << s3.Stats().dump();
  std::string sha = IndependentSha256(server_.body(), dir_.path());
  EXPECT_EQ(r->sha256, sha);
  EXPECT_EQ(r->mirror_url, "/v1/media/gen_s3");
  // The staged download is gone once uploaded.
  EXPECT_TRUE(ListDir(dir_.path() + "/staging").empty());

  absl::StatusOr<MediaObject> obj = (*store)->Open("gen_s3");
  ASSERT_TRUE(obj.ok()) << obj.status();
  EXPECT_EQ(obj->size, static_cast<int64_t>(kSize));
  EXPECT_EQ(obj->content_type, "video/mp4");
  EXPECT_EQ(obj->sha256, sha);
  EXPECT_TRUE(obj->local_path.empty());

  absl::Status s;
  EXPECT_EQ(ReadAll(store->get(), "gen_s3", 0, kSize, &s), server_.body());
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(ReadAll(store->get(), "gen_s3", 1000, 5000, &s),
            server_.body().substr(1000, 5000));
  EXPECT_TRUE(s.ok()) << s;
  ReadAll(store->get(), "gen_s3", kSize, 10, &s);
  EXPECT_TRUE(absl::IsOutOfRange(s)) << s;

  ASSERT_TRUE((*store)->Remove("gen_s3").ok());
  EXPECT_TRUE(absl::IsNotFound((*store)->Open("gen_s3").status()));
  EXPECT_TRUE((*store)->Remove("gen_s3").ok());

  nlohmann::json stats = s3.Stats();
  ASSERT_TRUE(stats.is_object());
  EXPECT_EQ(stats["rejected"], 0) << stats.dump();
  EXPECT_GE(stats["verified"].get<int>(), 7);
  // The upload went through "Expect: 100-continue", unsigned, as S3 allows.
  EXPECT_GE(stats["expect_100"].get<int>(), 1);
  for (const char* method : {"PUT", "GET", "HEAD", "DELETE"}) {
    EXPECT_TRUE(stats["signed_headers"].contains(method)) << method;
  }
  // The range and the stored type and hash are covered by the signature.
  EXPECT_THAT(stats["signed_headers"]["GET"].get<std::string>(),
              HasSubstr("range"));
  EXPECT_THAT(stats["signed_headers"]["PUT"].get<std::string>(),
              HasSubstr("content-type"));
  EXPECT_THAT(stats["signed_headers"]["PUT"].get<std::string>(),
              HasSubstr("x-amz-meta-sha256"));
}

TEST_F(S3Test, SessionTokenIsSentAndSigned) {
  S3StandIn s3("FQoGZXIvYXdzEXAMPLEtoken//+=");
  ASSERT_TRUE(s3.ready());
  S3Options o = Options(s3);
  o.session_token = "FQoGZXIvYXdzEXAMPLEtoken//+=";
  auto store = NewS3MediaStore(o);
  ASSERT_TRUE(store.ok());
  absl::StatusOr<MirrorResult> r = Copy(store->get(), "gen_tok");
  ASSERT_TRUE(r.ok()) << r.status() << " " << s3.Stats().dump();
  nlohmann::json stats = s3.Stats();
  EXPECT_EQ(stats["rejected"], 0) << stats.dump();
  EXPECT_THAT(stats["signed_headers"]["PUT"].get<std::string>(),
              HasSubstr("x-amz-security-token"));

  // Without the token the stand-in refuses.
  o.session_token.clear();
  auto tokenless = NewS3MediaStore(o);
  ASSERT_TRUE(tokenless.ok());
  EXPECT_TRUE(absl::IsPermissionDenied((*tokenless)->Open("gen_tok").status()));
}

TEST_F(S3Test, AWrongSecretIsRefusedAndTheMirrorReportsIt) {
  S3StandIn s3;
  ASSERT_TRUE(s3.ready());
  S3Options o = Options(s3);
  o.secret_access_key = "not-the-secret";
  auto store = NewS3MediaStore(o);
  ASSERT_TRUE(store.ok());
  absl::StatusOr<MirrorResult> r = Copy(store->get(), "gen_bad");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "media store: s3 answered 403 SignatureDoesNotMatch");
  EXPECT_EQ(r.status().message().find("not-the-secret"), std::string::npos);
  EXPECT_EQ(stats_.snapshot().failures["store"], 1);
  EXPECT_TRUE(ListDir(dir_.path() + "/staging").empty());
  nlohmann::json stats = s3.Stats();
  EXPECT_GE(stats["rejected"].get<int>(), 1);
  EXPECT_EQ(stats["verified"], 0) << stats.dump();
  EXPECT_TRUE(absl::IsPermissionDenied((*store)->Open("gen_bad").status()));
}

TEST_F(S3Test, OptionsAreChecked) {
  S3Options o;
  o.endpoint = "ftp://example";
  o.bucket = kBucket;
  o.access_key_id = kAccessKey;
  o.secret_access_key = kSecret;
  o.staging_dir = dir_.path() + "/staging";
  EXPECT_TRUE(absl::IsInvalidArgument(NewS3MediaStore(o).status()));
  o.endpoint = "http://127.0.0.1:9";
  o.bucket = "a/b";
  EXPECT_TRUE(absl::IsInvalidArgument(NewS3MediaStore(o).status()));
  o.bucket = kBucket;
  o.secret_access_key.clear();
  EXPECT_TRUE(absl::IsFailedPrecondition(NewS3MediaStore(o).status()));

  setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
  unsetenv("AWS_SECRET_ACCESS_KEY");
  absl::Status s = S3CredentialsFromEnv(o);
  EXPECT_TRUE(absl::IsFailedPrecondition(s));
  EXPECT_THAT(std::string(s.message()), HasSubstr("AWS_SECRET_ACCESS_KEY"));
  setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
  setenv("AWS_SESSION_TOKEN", "envtoken", 1);
  ASSERT_TRUE(S3CredentialsFromEnv(o).ok());
  EXPECT_EQ(o.access_key_id, "AKIDENV");
  EXPECT_EQ(o.secret_access_key, "envsecret");
  EXPECT_EQ(o.session_token, "envtoken");
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SECRET_ACCESS_KEY");
  unsetenv("AWS_SESSION_TOKEN");
}

}  // namespace
}  // namespace videogen::media
