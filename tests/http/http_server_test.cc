// The HTTP/JSON API and SSE streams over real loopback sockets, against a
// fake gateway and authenticator (design.md §9).

#include "server/http/http_server.h"

#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/http/sse.h"
#include "server/http/strings.h"
#include "tests/http/fakes.h"
#include "tests/http/test_client.h"

namespace videogen::http {
namespace {

using ::testing::HasSubstr;
using ::videogen::http::testing::FakeAuthenticator;
using ::videogen::http::testing::FakeGateway;
using ::videogen::http::testing::FakeMedia;
using ::videogen::http::testing::Fetch;
using ::videogen::http::testing::HttpResponse;
using ::videogen::http::testing::SseReader;
using Json = nlohmann::json;
using State = v1::Generation;

const std::string kAcme = "Authorization: Bearer k-acme";
const std::string kOther = "Authorization: Bearer k-other";
const std::string kJson = "Content-Type: application/json";

bool WaitFor(const std::function<bool()>& cond,
             absl::Duration timeout = absl::Seconds(10)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return cond();
}

int ThreadCount() {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

// The AIP-193 body of an error response.
void ExpectError(const HttpResponse& r, int http, const std::string& status) {
  EXPECT_EQ(r.status, http) << r.body;
  EXPECT_THAT(r.Header("content-type"), HasSubstr("application/json"));
  Json body = Json::parse(r.body, nullptr, false);
  ASSERT_TRUE(body.is_object()) << r.body;
  EXPECT_EQ(body["error"]["code"], http) << r.body;
  EXPECT_EQ(body["error"]["status"], status) << r.body;
  EXPECT_TRUE(body["error"]["message"].is_string()) << r.body;
  EXPECT_FALSE(body["error"]["message"].get<std::string>().empty());
}

class HttpServerTest : public ::testing::Test {
 protected:
  void Start(HttpServerOptions options = {}) {
    options.listen = "127.0.0.1:0";
    options.on_request = [this](const RequestLog& log) {
      absl::MutexLock lock(&log_mu_);
      logs_.push_back(
          absl::StrCat(Av(log.method), " ", Av(log.route), " ", log.status));
    };
    server_ = std::make_unique<HttpServer>(
        options, &gateway_, &auth_,
        [] { return std::string("# TYPE videogen_up gauge\nvideogen_up 1\n"); },
        &media_);
    ASSERT_TRUE(server_->Start().ok());
    port_ = server_->port();
    ASSERT_GT(port_, 0);
  }

  // Creates a generation through the API; returns its JSON.
  Json Create(const std::string& body, const std::string& key = kAcme) {
    HttpResponse r =
        Fetch(port_, "POST", "/v1/generations", {key, kJson}, body);
    EXPECT_EQ(r.status, 200) << r.body;
    return Json::parse(r.body, nullptr, false);
  }

  std::vector<std::string> Logs() {
    absl::MutexLock lock(&log_mu_);
    return logs_;
  }

  FakeGateway gateway_;
  FakeAuthenticator auth_;
  FakeMedia media_;
  absl::Mutex log_mu_;
  std::vector<std::string> logs_ ABSL_GUARDED_BY(log_mu_);
  std::unique_ptr<HttpServer> server_;  // destroyed before the fakes
  int port_ = 0;
};

// ---- Unary routes ----

TEST_F(HttpServerTest, DashboardAndAssetsNeedNoKey) {
  Start();
  HttpResponse page = Fetch(port_, "GET", "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_THAT(page.Header("content-type"), HasSubstr("text/html"));
  EXPECT_THAT(page.body, HasSubstr("<title>videogen"));
  EXPECT_THAT(page.Header("content-security-policy"),
              HasSubstr("default-src 'self'"));
  HttpResponse js = Fetch(port_, "GET", "/dashboard.js");
  EXPECT_EQ(js.status, 200);
  EXPECT_THAT(js.Header("content-type"), HasSubstr("javascript"));
  EXPECT_THAT(js.body, HasSubstr("/v1/generations:watch"));
  HttpResponse css = Fetch(port_, "GET", "/dashboard.css");
  EXPECT_EQ(css.status, 200);
  EXPECT_THAT(css.Header("content-type"), HasSubstr("text/css"));
  EXPECT_EQ(auth_.calls_.load(), 0);
}

TEST_F(HttpServerTest, MetricsNeedNoKey) {
  Start();
  HttpResponse r = Fetch(port_, "GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.Header("content-type"), HasSubstr("text/plain"));
  EXPECT_THAT(r.body, HasSubstr("videogen_up 1"));
}

TEST_F(HttpServerTest, ApiWithoutKeyIs401WithJsonError) {
  Start();
  HttpResponse r = Fetch(port_, "GET", "/v1/generations");
  ExpectError(r, 401, "UNAUTHENTICATED");
  EXPECT_EQ(r.Header("www-authenticate"), "Bearer");
  ExpectError(Fetch(port_, "GET", "/v1/generations/g1",
                    {"Authorization: Bearer wrong"}),
              401, "UNAUTHENTICATED");
  ExpectError(Fetch(port_, "POST", "/v1/generations", {kJson}, "{}"), 401,
              "UNAUTHENTICATED");
  SseReader watch(port_, "/v1/generations:watch");
  EXPECT_EQ(watch.status(), 401);
  // The key never comes back in an error.
  HttpResponse bad = Fetch(port_, "GET", "/v1/generations",
                           {"Authorization: Bearer sekrit-key-123"});
  EXPECT_THAT(bad.body, ::testing::Not(HasSubstr("sekrit")));
}

TEST_F(HttpServerTest, CreateReturnsGenerationJson) {
  Start();
  gateway_.set_async_create(true);  // `done` on another thread, later
  HttpResponse r = Fetch(
      port_, "POST", "/v1/generations",
      {kAcme, kJson,
       "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
      R"({"prompt":"a red fox","durationSeconds":5,"aspect_ratio":"16:9",)"
      R"("labels":{"env":"prod"},"requestId":"r-1"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.Header("content-type"), HasSubstr("application/json"));
  Json g = Json::parse(r.body);
  EXPECT_EQ(g["id"], "g1");
  EXPECT_EQ(g["state"], "STATE_QUEUED");
  EXPECT_EQ(g["revision"], "1");  // proto3 JSON: int64 as a string
  EXPECT_EQ(g["request"]["prompt"], "a red fox");
  EXPECT_EQ(g["request"]["durationSeconds"], 5);
  EXPECT_EQ(g["labels"]["env"], "prod");
  // Idempotent through the gateway: the same request_id, the same id.
  Json again = Create(R"({"prompt":"a red fox","requestId":"r-1"})");
  EXPECT_EQ(again["id"], "g1");
}

TEST_F(HttpServerTest, CreateRejectsBadBodies) {
  Start();
  HttpResponse unknown = Fetch(port_, "POST", "/v1/generations", {kAcme, kJson},
                               R"({"prompt":"x","colour":"red"})");
  ExpectError(unknown, 400, "INVALID_ARGUMENT");
  EXPECT_THAT(unknown.body, HasSubstr("colour"));
  ExpectError(Fetch(port_, "POST", "/v1/generations", {kAcme, kJson}, "{nope"),
              400, "INVALID_ARGUMENT");
  ExpectError(Fetch(port_, "POST", "/v1/generations", {kAcme, kJson}, ""), 400,
              "INVALID_ARGUMENT");
  // The gateway's own validation comes back as is.
  HttpResponse empty = Fetch(port_, "POST", "/v1/generations", {kAcme, kJson},
                             R"({"prompt":""})");
  ExpectError(empty, 400, "INVALID_ARGUMENT");
  EXPECT_THAT(empty.body, HasSubstr("prompt: must not be empty"));
  ExpectError(Fetch(port_, "POST", "/v1/generations",
                    {kAcme, "Content-Type: text/plain"}, R"({"prompt":"x"})"),
              415, "INVALID_ARGUMENT");
  // curl -d without -H sends form-urlencoded: the JSON inside is accepted.
  EXPECT_EQ(Fetch(port_, "POST", "/v1/generations",
                  {kAcme, "Content-Type: application/x-www-form-urlencoded"},
                  R"({"prompt":"x"})")
                .status,
            200);
  EXPECT_EQ(Fetch(port_, "POST", "/v1/generations",
                  {kAcme, "Content-Type: application/json; charset=utf-8"},
                  R"({"prompt":"y"})")
                .status,
            200);
}

TEST_F(HttpServerTest, BodyOverLimitIs413) {
  HttpServerOptions o;
  o.max_body_bytes = 1024;
  Start(o);
  std::string big =
      absl::StrCat(R"({"prompt":")", std::string(2000, 'a'), "\"}");
  ExpectError(Fetch(port_, "POST", "/v1/generations", {kAcme, kJson}, big), 413,
              "INVALID_ARGUMENT");
}

TEST_F(HttpServerTest, GetIsScopedToTheTenant) {
  Start();
  Json g = Create(R"({"prompt":"fox"})");
  HttpResponse mine = Fetch(port_, "GET", "/v1/generations/g1", {kAcme});
  ASSERT_EQ(mine.status, 200) << mine.body;
  EXPECT_EQ(Json::parse(mine.body)["id"], "g1");
  ExpectError(Fetch(port_, "GET", "/v1/generations/g1", {kOther}), 404,
              "NOT_FOUND");
  ExpectError(Fetch(port_, "GET", "/v1/generations/nope", {kAcme}), 404,
              "NOT_FOUND");
  EXPECT_EQ(Fetch(port_, "GET", "/v1/generations/g1",
                  {"Authorization: Bearer k-admin"})
                .status,
            200);
}

TEST_F(HttpServerTest, ListPagesAndFilters) {
  Start();
  Create(R"({"prompt":"a","labels":{"env":"prod"}})");
  Create(R"({"prompt":"b","labels":{"env":"dev"}})");
  Create(R"({"prompt":"c","labels":{"env":"prod"}})");
  Create(R"({"prompt":"z"})", kOther);
  gateway_.Advance("g3", State::STATE_GENERATING, "active");

  HttpResponse p1 = Fetch(port_, "GET", "/v1/generations?page_size=2", {kAcme});
  ASSERT_EQ(p1.status, 200) << p1.body;
  Json j1 = Json::parse(p1.body);
  ASSERT_EQ(j1["generations"].size(), 2u);
  EXPECT_EQ(j1["generations"][0]["id"], "g3");  // newest first
  EXPECT_EQ(j1["generations"][1]["id"], "g2");
  ASSERT_TRUE(j1["nextPageToken"].is_string());
  HttpResponse p2 =
      Fetch(port_, "GET",
            absl::StrCat("/v1/generations?page_size=2&page_token=",
                         j1["nextPageToken"].get<std::string>()),
            {kAcme});
  Json j2 = Json::parse(p2.body);
  ASSERT_EQ(j2["generations"].size(), 1u);
  EXPECT_EQ(j2["generations"][0]["id"], "g1");
  EXPECT_FALSE(j2.contains("nextPageToken"));

  // Filters reach the gateway: repeated states (both spellings), labels.
  HttpResponse f = Fetch(
      port_, "GET",
      "/v1/generations?states=QUEUED&states=STATE_GENERATING&labels.env=prod",
      {kAcme});
  ASSERT_EQ(f.status, 200) << f.body;
  Json jf = Json::parse(f.body);
  ASSERT_EQ(jf["generations"].size(), 2u);
  v1::ListGenerationsRequest seen = gateway_.last_list();
  ASSERT_EQ(seen.states_size(), 2);
  EXPECT_EQ(seen.states(0), State::STATE_QUEUED);
  EXPECT_EQ(seen.states(1), State::STATE_GENERATING);
  EXPECT_EQ(seen.labels().at("env"), "prod");
  Json only = Json::parse(
      Fetch(port_, "GET", "/v1/generations?states=generating", {kAcme}).body);
  ASSERT_EQ(only["generations"].size(), 1u);
  EXPECT_EQ(only["generations"][0]["id"], "g3");
  // Percent-encoded label values.
  Json dev = Json::parse(
      Fetch(port_, "GET", "/v1/generations?labels.env=%64ev", {kAcme}).body);
  ASSERT_EQ(dev["generations"].size(), 1u);

  ExpectError(Fetch(port_, "GET", "/v1/generations?states=DONE", {kAcme}), 400,
              "INVALID_ARGUMENT");
  ExpectError(Fetch(port_, "GET", "/v1/generations?state=QUEUED", {kAcme}), 400,
              "INVALID_ARGUMENT");
  ExpectError(Fetch(port_, "GET", "/v1/generations?page_size=ten", {kAcme}),
              400, "INVALID_ARGUMENT");
  ExpectError(Fetch(port_, "GET", "/v1/generations?page_size=-1", {kAcme}), 400,
              "INVALID_ARGUMENT");
}

TEST_F(HttpServerTest, CancelMovesToCancelled) {
  Start();
  Create(R"({"prompt":"fox"})");
  HttpResponse r = Fetch(port_, "POST", "/v1/generations/g1:cancel", {kAcme});
  ASSERT_EQ(r.status, 200) << r.body;
  Json g = Json::parse(r.body);
  EXPECT_EQ(g["state"], "STATE_CANCELLED");
  EXPECT_EQ(g["done"], true);
  EXPECT_EQ(
      Json::parse(
          Fetch(port_, "GET", "/v1/generations/g1", {kAcme}).body)["state"],
      "STATE_CANCELLED");
  EXPECT_EQ(
      Fetch(port_, "POST", "/v1/generations/g1:cancel", {kAcme, kJson}, "{}")
          .status,
      200);
  ExpectError(Fetch(port_, "POST", "/v1/generations/g1:cancel", {kAcme, kJson},
                    R"({"id":"g2"})"),
              400, "INVALID_ARGUMENT");
  ExpectError(Fetch(port_, "POST", "/v1/generations/g1:cancel", {kOther}), 404,
              "NOT_FOUND");
}

TEST_F(HttpServerTest, UnknownRoutesAndMethods) {
  Start();
  ExpectError(Fetch(port_, "GET", "/v2/things", {kAcme}), 404, "NOT_FOUND");
  ExpectError(Fetch(port_, "GET", "/v1/generations/g1:explode", {kAcme}), 404,
              "NOT_FOUND");
  HttpResponse m = Fetch(port_, "DELETE", "/v1/generations/g1", {kAcme});
  ExpectError(m, 405, "UNIMPLEMENTED");
  EXPECT_EQ(m.Header("allow"), "GET");
  EXPECT_EQ(Fetch(port_, "GET", "/v1/generations/g1:cancel", {kAcme}).status,
            405);
}

// Every canonical code the gateway may return maps to its HTTP status with
// the AIP-193 body.
TEST_F(HttpServerTest, GatewayErrorsMapToHttpStatusAndJsonBody) {
  Start();
  struct Case {
    absl::Status status;
    int http;
    std::string name;
  };
  std::vector<Case> cases = {
      {absl::InvalidArgumentError("bad"), 400, "INVALID_ARGUMENT"},
      {absl::FailedPreconditionError("pre"), 400, "FAILED_PRECONDITION"},
      {absl::OutOfRangeError("range"), 400, "OUT_OF_RANGE"},
      {absl::UnauthenticatedError("who"), 401, "UNAUTHENTICATED"},
      {absl::PermissionDeniedError("no"), 403, "PERMISSION_DENIED"},
      {absl::NotFoundError("gone"), 404, "NOT_FOUND"},
      {absl::AlreadyExistsError("dup"), 409, "ALREADY_EXISTS"},
      {absl::AbortedError("race"), 409, "ABORTED"},
      {absl::ResourceExhaustedError("max_concurrent"), 429,
       "RESOURCE_EXHAUSTED"},
      {absl::CancelledError("gave up"), 499, "CANCELLED"},
      {absl::InternalError("oops"), 500, "INTERNAL"},
      {absl::UnknownError("huh"), 500, "UNKNOWN"},
      {absl::DataLossError("lost"), 500, "DATA_LOSS"},
      {absl::UnimplementedError("later"), 501, "UNIMPLEMENTED"},
      {absl::UnavailableError("draining"), 503, "UNAVAILABLE"},
      {absl::DeadlineExceededError("slow"), 504, "DEADLINE_EXCEEDED"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    gateway_.FailNext(c.status);
    HttpResponse r = Fetch(port_, "POST", "/v1/generations", {kAcme, kJson},
                           R"({"prompt":"x"})");
    ExpectError(r, c.http, c.name);
    EXPECT_EQ(Json::parse(r.body)["error"]["message"],
              std::string(c.status.message()));
  }
  gateway_.FailNext(absl::ResourceExhaustedError("quota"));
  ExpectError(Fetch(port_, "GET", "/v1/generations", {kAcme}), 429,
              "RESOURCE_EXHAUSTED");
  gateway_.FailNext(absl::UnavailableError("draining"));
  SseReader watch(port_, "/v1/generations:watch", {kAcme});
  EXPECT_EQ(watch.status(), 503);
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  Start();
  int fd = testing::ConnectLoopback(port_);
  ASSERT_GE(fd, 0);
  std::string req =
      "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /v1/generations/none HTTP/1.1\r\nHost: x\r\n"
      "Authorization: Bearer k-acme\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(req.size()));
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) all.append(buf, n);
  ::close(fd);
  EXPECT_THAT(all, HasSubstr("HTTP/1.1 200 OK"));
  EXPECT_THAT(all, HasSubstr("HTTP/1.1 404 Not Found"));
  EXPECT_THAT(all, HasSubstr("\"NOT_FOUND\""));
}

TEST_F(HttpServerTest, RequestLogHasRouteNamesNotTargets) {
  Start();
  Create(R"({"prompt":"fox"})");
  Fetch(port_, "GET", "/v1/media/g1?access_token=sekrit");
  std::vector<std::string> logs;
  ASSERT_TRUE(WaitFor([&] {
    logs = Logs();
    return logs.size() >= 2;
  }));
  EXPECT_EQ(logs[0], "POST /v1/generations 200");
  EXPECT_EQ(logs[1], "GET /v1/media/{id} 401");  // not a valid key
  for (const auto& l : logs)
    EXPECT_THAT(l, ::testing::Not(HasSubstr("sekrit")));
}

// ---- Media ----

class MediaTest : public HttpServerTest {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/media_test_" + std::to_string(getpid());
    std::ofstream f(path_, std::ios::binary);
    for (int i = 0; i < 1000; ++i)
      content_.push_back(static_cast<char>(i % 251));
    f << content_;
    f.close();
    Start();
    Create(R"({"prompt":"fox"})");
    MediaFile m;
    m.path = path_;
    m.size = 1000;
    m.content_type = "video/mp4";
    m.sha256 = "abc123";
    media_.Put("g1", m);
  }
  void TearDown() override { std::remove(path_.c_str()); }
  std::string path_;
  std::string content_;
};

TEST_F(MediaTest, WholeFile) {
  HttpResponse r = Fetch(port_, "GET", "/v1/media/g1", {kAcme});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, content_);
  EXPECT_EQ(r.Header("content-type"), "video/mp4");
  EXPECT_EQ(r.Header("content-length"), "1000");
  EXPECT_EQ(r.Header("accept-ranges"), "bytes");
  EXPECT_EQ(r.Header("etag"), "\"abc123\"");
  EXPECT_EQ(media_.last_scope(), "acme");
}

TEST_F(MediaTest, Ranges) {
  HttpResponse mid =
      Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=10-19"});
  ASSERT_EQ(mid.status, 206) << mid.body;
  EXPECT_EQ(mid.body, content_.substr(10, 10));
  EXPECT_EQ(mid.Header("content-range"), "bytes 10-19/1000");
  EXPECT_EQ(mid.Header("content-length"), "10");

  HttpResponse open =
      Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=990-"});
  ASSERT_EQ(open.status, 206);
  EXPECT_EQ(open.body, content_.substr(990));
  EXPECT_EQ(open.Header("content-range"), "bytes 990-999/1000");

  HttpResponse suffix =
      Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=-5"});
  ASSERT_EQ(suffix.status, 206);
  EXPECT_EQ(suffix.body, content_.substr(995));

  HttpResponse clipped =
      Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=500-5000"});
  ASSERT_EQ(clipped.status, 206);
  EXPECT_EQ(clipped.body, content_.substr(500));

  HttpResponse past =
      Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=1000-"});
  ExpectError(past, 416, "OUT_OF_RANGE");
  EXPECT_EQ(past.Header("content-range"), "bytes */1000");
  ExpectError(Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=abc"}),
              416, "OUT_OF_RANGE");
  ExpectError(Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=9-3"}),
              416, "OUT_OF_RANGE");
  // Several ranges, or another unit: the whole file (RFC 9110 allows it).
  EXPECT_EQ(Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: bytes=0-1,5-6"})
                .status,
            200);
  EXPECT_EQ(
      Fetch(port_, "GET", "/v1/media/g1", {kAcme, "Range: items=0-1"}).status,
      200);
}

TEST_F(MediaTest, HeadSendsLengthWithoutBody) {
  HttpResponse r = Fetch(port_, "HEAD", "/v1/media/g1", {kAcme});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-length"), "1000");
  EXPECT_TRUE(r.body.empty());
}

TEST_F(MediaTest, SameAuthAndTenantScope) {
  ExpectError(Fetch(port_, "GET", "/v1/media/g1"), 401, "UNAUTHENTICATED");
  ExpectError(Fetch(port_, "GET", "/v1/media/g1", {kOther}), 404, "NOT_FOUND");
  // <video src> cannot send headers: access_token in the query works here.
  HttpResponse token = Fetch(port_, "GET", "/v1/media/g1?access_token=k-acme",
                             {"Range: bytes=0-3"});
  EXPECT_EQ(token.status, 206);
  EXPECT_EQ(token.body, content_.substr(0, 4));
  // A generation without a mirrored copy.
  Create(R"({"prompt":"other"})");
  ExpectError(Fetch(port_, "GET", "/v1/media/g2", {kAcme}), 404, "NOT_FOUND");
}

TEST_F(MediaTest, FileOfTheWrongSizeIsNotServed) {
  MediaFile m;
  m.path = path_;
  m.size = 2000;  // still being written
  media_.Put("g1", m);
  ExpectError(Fetch(port_, "GET", "/v1/media/g1", {kAcme}), 503, "UNAVAILABLE");
}

// ---- Server-Sent Events ----

// Reads the next non-comment frame.
std::optional<testing::SseFrame> NextEvent(SseReader& r) {
  while (true) {
    std::optional<testing::SseFrame> f = r.Next();
    if (!f.has_value() || f->comment.empty()) return f;
  }
}

TEST_F(HttpServerTest, WatchStreamsRevisionsAndEndsAfterTerminal) {
  Start();
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme});
  ASSERT_EQ(r.status(), 200);
  EXPECT_THAT(r.headers().at("content-type"), HasSubstr("text/event-stream"));
  std::optional<testing::SseFrame> f1 = NextEvent(r);
  ASSERT_TRUE(f1.has_value());
  EXPECT_EQ(f1->id, "1");
  EXPECT_EQ(f1->event, "snapshot");
  Json e1 = Json::parse(f1->data);
  EXPECT_EQ(e1["type"], "TYPE_SNAPSHOT");
  EXPECT_EQ(e1["generation"]["revision"], "1");

  gateway_.Advance("g1", State::STATE_GENERATING, "active");
  gateway_.Advance("g1", State::STATE_COMPLETED, "completed");
  std::optional<testing::SseFrame> f2 = NextEvent(r);
  ASSERT_TRUE(f2.has_value());
  EXPECT_EQ(f2->id, "2");
  EXPECT_EQ(f2->event, "update");
  EXPECT_EQ(Json::parse(f2->data)["generation"]["upstreamStatus"], "active");
  std::optional<testing::SseFrame> f3 = NextEvent(r);
  ASSERT_TRUE(f3.has_value());
  EXPECT_EQ(f3->id, "3");
  EXPECT_EQ(Json::parse(f3->data)["generation"]["state"], "STATE_COMPLETED");
  EXPECT_FALSE(NextEvent(r).has_value());
  EXPECT_TRUE(r.eof());
  EXPECT_TRUE(WaitFor([&] { return server_->stats().open_streams == 0; }));
  // The stream's watch is released on an I/O thread after the count drops.
  EXPECT_TRUE(WaitFor([&] { return gateway_.watchers() == 0u; }));
}

// The hub may hand a stream the UPDATE of a change that raced its Subscribe
// before Subscribe's SNAPSHOT of the same revision (dropped as a duplicate):
// the stream still starts with a snapshot. CI once saw a Generate stream
// start with an UPDATE this way.
TEST_F(HttpServerTest, WatchStartsWithASnapshotWhenAnUpdateRacesSubscribe) {
  Start();
  Create(R"({"prompt":"fox"})");
  gateway_.Advance("g1", State::STATE_GENERATING, "active");
  gateway_.set_watch_race(true);
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme});
  ASSERT_EQ(r.status(), 200);
  std::optional<testing::SseFrame> first = NextEvent(r);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, "2");
  EXPECT_EQ(first->event, "snapshot");
  EXPECT_EQ(Json::parse(first->data)["type"], "TYPE_SNAPSHOT");
  gateway_.Advance("g1", State::STATE_COMPLETED, "completed");
  std::optional<testing::SseFrame> last = NextEvent(r);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->id, "3");
  EXPECT_EQ(last->event, "update");
  EXPECT_FALSE(NextEvent(r).has_value());
}

TEST_F(HttpServerTest, LastEventIdResumesAfterThatRevision) {
  Start();
  Create(R"({"prompt":"fox"})");
  gateway_.Advance("g1", State::STATE_GENERATING, "active");
  gateway_.Advance("g1", State::STATE_COMPLETED, "completed");
  for (const auto& [target, headers] :
       std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"/v1/generations/g1:watch", {kAcme, "Last-Event-ID: 2"}},
           {"/v1/generations/g1:watch?after_revision=2", {kAcme}},
           // The header wins over the query (EventSource reconnects).
           {"/v1/generations/g1:watch?after_revision=0",
            {kAcme, "Last-Event-ID: 2"}}}) {
    SCOPED_TRACE(target);
    SseReader r(port_, target, headers);
    ASSERT_EQ(r.status(), 200);
    std::optional<testing::SseFrame> f = NextEvent(r);
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->id, "3");
    EXPECT_EQ(f->event, "snapshot");
    EXPECT_FALSE(NextEvent(r).has_value());
    EXPECT_TRUE(r.eof());
  }
  // Nothing newer than 3: the stream ends with no event at all.
  SseReader done(port_, "/v1/generations/g1:watch",
                 {kAcme, "Last-Event-ID: 3"});
  ASSERT_EQ(done.status(), 200);
  EXPECT_FALSE(NextEvent(done).has_value());
  EXPECT_TRUE(done.eof());

  SseReader bad(port_, "/v1/generations/g1:watch", {kAcme, "Last-Event-ID: x"});
  EXPECT_EQ(bad.status(), 400);
  SseReader missing(port_, "/v1/generations/nope:watch", {kAcme});
  EXPECT_EQ(missing.status(), 404);
  EXPECT_THAT(missing.ReadAll(), HasSubstr("\"NOT_FOUND\""));
}

TEST_F(HttpServerTest, LiveResumeMissesNothingAndRepeatsNothing) {
  Start();
  Create(R"({"prompt":"fox"})");
  gateway_.Advance("g1", State::STATE_GENERATING, "active");
  {
    SseReader first(port_, "/v1/generations/g1:watch", {kAcme});
    std::optional<testing::SseFrame> f = NextEvent(first);
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->id, "2");
  }  // dropped
  gateway_.Advance("g1", State::STATE_GENERATING, "active 50%");
  SseReader second(port_, "/v1/generations/g1:watch",
                   {kAcme, "Last-Event-ID: 2"});
  std::optional<testing::SseFrame> f = NextEvent(second);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->id, "3");
  gateway_.Advance("g1", State::STATE_FAILED, "error");
  f = NextEvent(second);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->id, "4");
  EXPECT_FALSE(NextEvent(second).has_value());
}

TEST_F(HttpServerTest, HeartbeatsOnAnIdleStream) {
  HttpServerOptions o;
  o.heartbeat_interval = absl::Milliseconds(50);
  Start(o);
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme});
  ASSERT_EQ(r.status(), 200);
  std::optional<testing::SseFrame> snap = r.Next();
  ASSERT_TRUE(snap.has_value());
  EXPECT_EQ(snap->id, "1");
  int heartbeats = 0;
  for (int i = 0; i < 3; ++i) {
    std::optional<testing::SseFrame> f = r.Next(absl::Seconds(5));
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->comment, "heartbeat");
    EXPECT_TRUE(f->id.empty());
    heartbeats++;
  }
  EXPECT_EQ(heartbeats, 3);
  // Events still flow between heartbeats.
  gateway_.Advance("g1", State::STATE_COMPLETED, "completed");
  std::optional<testing::SseFrame> last = NextEvent(r);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->id, "2");
}

TEST_F(HttpServerTest, MaxStreamsAnswers503) {
  HttpServerOptions o;
  o.max_streams = 2;
  Start(o);
  Create(R"({"prompt":"fox"})");
  SseReader a(port_, "/v1/generations/g1:watch", {kAcme});
  SseReader b(port_, "/v1/generations:watch", {kAcme});
  ASSERT_EQ(a.status(), 200);
  ASSERT_EQ(b.status(), 200);
  SseReader c(port_, "/v1/generations/g1:watch", {kAcme});
  EXPECT_EQ(c.status(), 503);
  std::string body = c.ReadAll();
  EXPECT_THAT(body, HasSubstr("\"UNAVAILABLE\""));
  EXPECT_THAT(body, HasSubstr("too many open event streams"));
  EXPECT_EQ(server_->stats().streams_rejected, 1);
  // A slot frees when a client leaves.
  a.Close();
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open_streams == 1; }));
  SseReader d(port_, "/v1/generations/g1:watch", {kAcme});
  EXPECT_EQ(d.status(), 200);
}

TEST_F(HttpServerTest, PerTenantStreamLimitAnswers429) {
  HttpServerOptions o;
  o.max_streams_per_tenant = 2;
  Start(o);
  Create(R"({"prompt":"fox"})");
  auto a = std::make_unique<SseReader>(port_, "/v1/generations:watch",
                                       std::vector<std::string>{kAcme});
  SseReader b(port_, "/v1/generations:watch", {kAcme});
  ASSERT_EQ(a->status(), 200);
  ASSERT_EQ(b.status(), 200);
  SseReader c(port_, "/v1/generations:watch", {kAcme});
  EXPECT_EQ(c.status(), 429);
  EXPECT_THAT(c.ReadAll(), HasSubstr("\"RESOURCE_EXHAUSTED\""));
  // Another tenant has its own share.
  SseReader other(port_, "/v1/generations:watch", {kOther});
  EXPECT_EQ(other.status(), 200);
  // A failed watch (unknown id) gives its slot back at once.
  SseReader missing(port_, "/v1/generations/nope:watch", {kOther});
  EXPECT_EQ(missing.status(), 404);
  SseReader other2(port_, "/v1/generations:watch", {kOther});
  EXPECT_EQ(other2.status(), 200);
  // A closed stream gives its slot back.
  a.reset();
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 3; }));
  SseReader d(port_, "/v1/generations:watch", {kAcme});
  EXPECT_EQ(d.status(), 200);
}

TEST_F(HttpServerTest, DisconnectUnwatches) {
  Start();
  Create(R"({"prompt":"fox"})");
  {
    SseReader r(port_, "/v1/generations/g1:watch", {kAcme});
    ASSERT_TRUE(NextEvent(r).has_value());
    SseReader all(port_, "/v1/generations:watch", {kAcme});
    ASSERT_TRUE(NextEvent(all).has_value());
    EXPECT_EQ(gateway_.watchers(), 2u);
  }
  EXPECT_TRUE(WaitFor([&] { return gateway_.watchers() == 0; }));
  EXPECT_TRUE(WaitFor([&] { return server_->stats().open_streams == 0; }));
  EXPECT_EQ(gateway_.unwatched(), 2);
}

TEST_F(HttpServerTest, AccessTokenInQueryOnWatchRoutesOnly) {
  Start();
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch?access_token=k-acme");
  ASSERT_EQ(r.status(), 200);
  ASSERT_TRUE(NextEvent(r).has_value());
  SseReader all(port_, "/v1/generations:watch?access_token=k-acme");
  ASSERT_EQ(all.status(), 200);
  SseReader wrong(port_, "/v1/generations:watch?access_token=nope");
  EXPECT_EQ(wrong.status(), 401);
  // Not on the JSON routes, where a header is always possible.
  ExpectError(Fetch(port_, "GET", "/v1/generations?access_token=k-acme"), 401,
              "UNAUTHENTICATED");
  ExpectError(
      Fetch(port_, "GET", "/v1/generations?access_token=k-acme", {kAcme}), 400,
      "INVALID_ARGUMENT");
}

TEST_F(HttpServerTest, FirehoseShowsSnapshotsThenUpdatesOfTheTenantOnly) {
  Start();
  gateway_.Insert("acme", State::STATE_GENERATING, {{"env", "prod"}});  // g1
  gateway_.Insert("acme", State::STATE_COMPLETED, {{"env", "prod"}});   // g2
  gateway_.Insert("other", State::STATE_QUEUED, {{"env", "prod"}});     // g3
  SseReader r(port_, "/v1/generations:watch", {kAcme});
  ASSERT_EQ(r.status(), 200);
  std::optional<testing::SseFrame> f = NextEvent(r);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->event, "snapshot");
  EXPECT_EQ(Json::parse(f->data)["generation"]["id"], "g1");
  Create(R"({"prompt":"new","labels":{"env":"dev"}})");  // g4
  Create(R"({"prompt":"theirs"})", kOther);              // g5, not shown
  gateway_.Advance("g4", State::STATE_GENERATING, "active");
  gateway_.Advance("g1", State::STATE_COMPLETED, "completed");
  std::vector<std::pair<std::string, std::string>> seen;
  for (int i = 0; i < 3; ++i) {
    f = NextEvent(r);
    ASSERT_TRUE(f.has_value());
    Json e = Json::parse(f->data);
    seen.emplace_back(e["generation"]["id"], f->id);
    EXPECT_EQ(f->id, e["generation"]["revision"].get<std::string>());
  }
  EXPECT_THAT(seen, ::testing::ElementsAre(::testing::Pair("g4", "1"),
                                           ::testing::Pair("g4", "2"),
                                           ::testing::Pair("g1", "2")));
  // Filtered firehose: label and state.
  SseReader prod(
      port_, "/v1/generations:watch?labels.env=dev&states=GENERATING", {kAcme});
  f = NextEvent(prod);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(Json::parse(f->data)["generation"]["id"], "g4");
  SseReader bad(port_, "/v1/generations:watch?states=BOGUS", {kAcme});
  EXPECT_EQ(bad.status(), 400);
}

TEST_F(HttpServerTest, DrainEndsStreamsWithAnErrorEventAndRefusesNewOnes) {
  Start();
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme});
  ASSERT_TRUE(NextEvent(r).has_value());
  server_->Drain();
  std::optional<testing::SseFrame> f = NextEvent(r);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->event, "error");
  EXPECT_TRUE(f->id.empty());  // Last-Event-ID stays at the last revision
  Json e = Json::parse(f->data);
  EXPECT_EQ(e["error"]["status"], "UNAVAILABLE");
  EXPECT_EQ(e["error"]["code"], 503);
  EXPECT_THAT(e["error"]["message"].get<std::string>(),
              HasSubstr("Last-Event-ID"));
  EXPECT_FALSE(NextEvent(r).has_value());
  EXPECT_TRUE(r.eof());
  EXPECT_TRUE(WaitFor([&] { return gateway_.watchers() == 0; }));
  SseReader late(port_, "/v1/generations/g1:watch", {kAcme});
  EXPECT_EQ(late.status(), 503);
  // Unary calls still work while draining.
  EXPECT_EQ(Fetch(port_, "GET", "/v1/generations/g1", {kAcme}).status, 200);
}

TEST_F(HttpServerTest, StopUnwatchesOpenStreams) {
  Start();
  Create(R"({"prompt":"fox"})");
  SseReader a(port_, "/v1/generations/g1:watch", {kAcme});
  SseReader b(port_, "/v1/generations:watch", {kAcme});
  ASSERT_TRUE(NextEvent(a).has_value());
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 2; }));
  server_->Stop();
  EXPECT_EQ(gateway_.watchers(), 0u);
  // Events after Stop reach closed sinks and go nowhere.
  gateway_.Advance("g1", State::STATE_GENERATING, "active");
  server_.reset();
}

// A client that stops reading: the backlog stays bounded, the stream ends
// with an error event telling it where to resume, and it is unwatched at
// once (not only when the stuck write gives up).
TEST_F(HttpServerTest, SlowReaderIsCutOffWithBoundedMemory) {
  HttpServerOptions o;
  o.stream_backlog_events = 16;
  o.socket_send_buffer_bytes = 4096;
  o.write_timeout = absl::Seconds(60);  // the cut must not wait for it
  Start(o);
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme}, /*rcvbuf=*/4096);
  ASSERT_EQ(r.status(), 200);
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 1; }));
  std::shared_ptr<core::EventSink> sink = gateway_.sinks().at(0);
  auto* stream_sink = dynamic_cast<StreamSink*>(sink.get());
  ASSERT_NE(stream_sink, nullptr);
  // ~4 KiB per event, paced: the socket buffers fill, then the backlog.
  int sent = 0;
  for (; sent < 2000 && gateway_.watchers() == 1; ++sent) {
    gateway_.Advance("g1", State::STATE_GENERATING, "active", 4096);
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 0; }))
      << "sent " << sent;
  EXPECT_LT(sent, 2000);
  EXPECT_EQ(server_->stats().streams_cut_slow, 1);
  EXPECT_LE(stream_sink->high_water(), 16u);
  EXPECT_TRUE(stream_sink->closed());
  // Now read: revisions in order without gaps, the error, then the end.
  int64_t expect = 1;
  std::optional<testing::SseFrame> f;
  while ((f = NextEvent(r)).has_value() && f->event != "error") {
    ASSERT_EQ(f->id, std::to_string(expect));
    ++expect;
  }
  ASSERT_TRUE(f.has_value());
  EXPECT_GT(expect, 2);  // some got through before the buffers filled
  EXPECT_LT(expect, sent);
  Json e = Json::parse(f->data);
  EXPECT_EQ(e["error"]["status"], "RESOURCE_EXHAUSTED");
  // It names the last revision it sent, where the client resumes.
  EXPECT_THAT(e["error"]["message"].get<std::string>(),
              HasSubstr(absl::StrCat("Last-Event-ID: ", expect - 1)));
  EXPECT_FALSE(NextEvent(r).has_value());
  EXPECT_TRUE(r.eof());
}

// The same pace with a client that reads: nothing is cut.
TEST_F(HttpServerTest, ReadingClientKeepsUpWithTheSamePace) {
  HttpServerOptions o;
  o.stream_backlog_events = 16;
  o.socket_send_buffer_bytes = 4096;
  Start(o);
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme}, /*rcvbuf=*/4096);
  ASSERT_EQ(r.status(), 200);
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 1; }));
  std::thread reader([&] {
    for (int64_t expect = 1; expect <= 201; ++expect) {
      std::optional<testing::SseFrame> f = NextEvent(r);
      ASSERT_TRUE(f.has_value());
      ASSERT_EQ(f->id, std::to_string(expect));
    }
  });
  for (int i = 0; i < 200; ++i) {
    gateway_.Advance("g1", State::STATE_GENERATING, "active", 4096);
    absl::SleepFor(absl::Milliseconds(1));
  }
  reader.join();
  EXPECT_EQ(server_->stats().streams_cut_slow, 0);
  EXPECT_EQ(gateway_.watchers(), 1u);
}

// A client that never reads again is closed after write_timeout.
TEST_F(HttpServerTest, StalledWriterIsClosedAfterWriteTimeout) {
  HttpServerOptions o;
  o.stream_backlog_events = 1000000;  // never overflows: only the timeout
  o.socket_send_buffer_bytes = 4096;
  o.write_timeout = absl::Milliseconds(300);
  Start(o);
  Create(R"({"prompt":"fox"})");
  SseReader r(port_, "/v1/generations/g1:watch", {kAcme}, 4096);
  ASSERT_EQ(r.status(), 200);
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 1; }));
  for (int i = 0; i < 400 && gateway_.watchers() == 1; ++i) {
    gateway_.Advance("g1", State::STATE_GENERATING, "active", 4096);
  }
  EXPECT_TRUE(WaitFor([&] { return gateway_.watchers() == 0; }));
  EXPECT_TRUE(WaitFor([&] { return server_->stats().open_streams == 0; }));
}

// 1,000 open streams on one generation: the thread count does not move,
// and one change reaches all of them.
TEST_F(HttpServerTest, ThousandStreamsKeepThreadCountBounded) {
  HttpServerOptions o;
  o.io_threads = 2;
  o.worker_threads = 2;
  Start(o);
  Create(R"({"prompt":"fox"})");
  const int before = ThreadCount();
  std::vector<std::unique_ptr<SseReader>> readers;
  for (int i = 0; i < 1000; ++i) {
    readers.push_back(std::make_unique<SseReader>(
        port_, "/v1/generations/g1:watch", std::vector<std::string>{kAcme}, 0,
        /*read_headers=*/false));
  }
  for (auto& r : readers) {
    ASSERT_TRUE(r->ReadHead());
    ASSERT_EQ(r->status(), 200);
  }
  ASSERT_TRUE(WaitFor([&] { return gateway_.watchers() == 1000; }));
  EXPECT_EQ(server_->stats().open_streams, 1000);
  const int during = ThreadCount();
  EXPECT_EQ(during, before) << "threads before " << before << ", with 1000 "
                            << "streams " << during;
  std::printf("threads with 1000 SSE streams: %d (io 2 + workers 2 + test)\n",
              during);
  gateway_.Advance("g1", State::STATE_GENERATING, "active");
  for (auto& r : readers) {
    std::optional<testing::SseFrame> snap = NextEvent(*r);
    ASSERT_TRUE(snap.has_value());
    ASSERT_EQ(snap->id, "1");
    std::optional<testing::SseFrame> up = NextEvent(*r);
    ASSERT_TRUE(up.has_value());
    ASSERT_EQ(up->id, "2");
  }
  readers.clear();
  EXPECT_TRUE(WaitFor([&] { return gateway_.watchers() == 0; }));
  EXPECT_EQ(ThreadCount(), before);
}

TEST_F(HttpServerTest, StartFailsCleanlyOnABadAddress) {
  HttpServerOptions o;
  o.listen = "not-an-address:80";
  HttpServer bad(o, &gateway_, &auth_, nullptr, nullptr);
  absl::Status s = bad.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  HttpServerOptions busy;
  Start();
  busy.listen = absl::StrCat("127.0.0.1:", port_);
  HttpServer clash(busy, &gateway_, &auth_, nullptr, nullptr);
  EXPECT_EQ(clash.Start().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace videogen::http
