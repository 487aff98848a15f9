#include "server/upstream/parse.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/upstream/aimlapi_upstream.h"
#include "server/upstream/http_errors.h"
#include "server/upstream/sanitize.h"
#include "server/upstream/upstream.h"

namespace videogen::upstream {
namespace {

TEST(MapStatus, EveryKnownStringCaseInsensitive) {
  EXPECT_EQ(MapStatus("queued"), TaskState::kQueued);
  EXPECT_EQ(MapStatus("Waiting"), TaskState::kQueued);
  EXPECT_EQ(MapStatus("active"), TaskState::kGenerating);
  EXPECT_EQ(MapStatus("GENERATING"), TaskState::kGenerating);
  EXPECT_EQ(MapStatus("completed"), TaskState::kCompleted);
  EXPECT_EQ(MapStatus("succeeded"), TaskState::kCompleted);
  EXPECT_EQ(MapStatus("error"), TaskState::kFailed);
  EXPECT_EQ(MapStatus("failed"), TaskState::kFailed);
  EXPECT_EQ(MapStatus(""), TaskState::kUnknown);
  EXPECT_EQ(MapStatus("rendering-ish"), TaskState::kUnknown);
}

TEST(ParseSnapshot, CompletedFileShape) {
  auto snap = ParseSnapshot(R"({"id":"a:b/c","status":"completed",
      "video":{"url":"https://cdn/x.mp4","content_type":"video/mp4",
               "file_name":"x.mp4","file_size":12345}})");
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->upstream_id, "a:b/c");
  EXPECT_EQ(snap->state, TaskState::kCompleted);
  EXPECT_EQ(snap->raw_status, "completed");
  ASSERT_TRUE(snap->video.has_value());
  EXPECT_EQ(snap->video->url, "https://cdn/x.mp4");
  EXPECT_EQ(snap->video->content_type, "video/mp4");
  EXPECT_EQ(snap->video->file_name, "x.mp4");
  EXPECT_EQ(snap->video->file_size_bytes, 12345);
  EXPECT_FALSE(snap->error.has_value());
}

TEST(ParseSnapshot, CompletedUsageShapeWithTokens) {
  auto snap = ParseSnapshot(R"({"id":"g1","status":"completed",
      "video":{"url":"https://cdn/y.mp4","duration":"5.1"},"duration":8,
      "error":null,"meta":{"usage":{"tokens_used":120000}}})");
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->state, TaskState::kCompleted);
  ASSERT_TRUE(snap->video.has_value());
  EXPECT_EQ(snap->video->url, "https://cdn/y.mp4");
  EXPECT_DOUBLE_EQ(snap->video->duration_seconds, 5.1);
  EXPECT_EQ(snap->tokens_used, 120000);
  EXPECT_FALSE(snap->error.has_value());
}

TEST(ParseSnapshot, TopLevelDurationAndCreditsAsString) {
  auto snap = ParseSnapshot(R"({"id":"g1","status":"succeeded",
      "video":{"url":"u"},"duration":"8","meta":{"usage":
      {"credits_used":"42","tokens_used":null}}})");
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->state, TaskState::kCompleted);
  EXPECT_DOUBLE_EQ(snap->video->duration_seconds, 8);
  EXPECT_EQ(snap->credits_used, 42);
  EXPECT_EQ(snap->tokens_used, 0);
}

TEST(ParseSnapshot, NumbersAsStringsNullsAndUnknownFields) {
  auto snap = ParseSnapshot(R"({"id":12345,"status":"active","video":null,
      "meta":null,"error":null,"brand_new_field":{"x":[1,2,3]},
      "progress":"0.5"})");
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->upstream_id, "12345");
  EXPECT_EQ(snap->state, TaskState::kGenerating);
  EXPECT_FALSE(snap->video.has_value());
  EXPECT_FALSE(snap->error.has_value());
  auto sized = ParseSnapshot(
      R"({"id":"g","status":"completed","video":{"url":"u","file_size":"77"}})");
  ASSERT_TRUE(sized.ok());
  EXPECT_EQ(sized->video->file_size_bytes, 77);
  auto junk = ParseSnapshot(
      R"({"id":"g","status":"completed","video":{"url":"u","file_size":"big"}})");
  ASSERT_TRUE(junk.ok());
  EXPECT_EQ(junk->video->file_size_bytes, 0);
}

TEST(ParseSnapshot, UnknownStatusKeepsRawString) {
  auto snap = ParseSnapshot(R"({"id":"g","status":"moderating"})");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->state, TaskState::kUnknown);
  EXPECT_EQ(snap->raw_status, "moderating");
}

TEST(ParseSnapshot, TaskErrorNameMessage) {
  auto snap = ParseSnapshot(R"({"id":"g","status":"error",
      "error":{"name":"ContentPolicy","message":"prompt was flagged"}})");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->state, TaskState::kFailed);
  ASSERT_TRUE(snap->error.has_value());
  EXPECT_EQ(snap->error->name, "ContentPolicy");
  EXPECT_EQ(snap->error->message, "prompt was flagged");
}

TEST(ParseSnapshot, TaskErrorDetailList) {
  auto snap = ParseSnapshot(R"({"id":"g","status":"failed",
      "error":{"detail":[{"loc":["body","duration"],"msg":"must be 5 or 10",
      "type":"value_error"},{"loc":["body",0],"msg":"second","type":"t"}]}})");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->state, TaskState::kFailed);
  ASSERT_TRUE(snap->error.has_value());
  EXPECT_EQ(snap->error->name, "value_error");
  EXPECT_EQ(snap->error->message,
            "body.duration: must be 5 or 10; body.0: second");
}

TEST(ParseSnapshot, ErrorWithoutStatusIsFailed) {
  auto snap = ParseSnapshot(R"({"id":"g","error":"boom"})");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->state, TaskState::kFailed);
  EXPECT_EQ(snap->error->message, "boom");
}

TEST(ParseSnapshot, MalformedIsUnavailableNeverACrash) {
  for (const char* body :
       {"", "{", "<html>502 Bad Gateway</html>", "[1,2]", "\"str\"", "null",
        "{\"id\":", "{\"id\":\"x\"}}", "\xff\xfe{}", "{\"a\":\"\xc3\x28\"}"}) {
    auto snap = ParseSnapshot(body);
    EXPECT_FALSE(snap.ok()) << body;
    EXPECT_EQ(snap.status().code(), absl::StatusCode::kUnavailable) << body;
  }
  std::string deep(100000, '[');
  EXPECT_FALSE(ParseSnapshot(deep).ok());
}

TEST(ParseSubmitResult, IdAndStatus) {
  auto r = ParseSubmitResult(
      R"({"id":"10c09c56:kling-video/v2/master/text-to-video","status":"queued"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->upstream_id, "10c09c56:kling-video/v2/master/text-to-video");
  EXPECT_EQ(r->status, "queued");
  auto numeric = ParseSubmitResult(R"({"id":77})");
  ASSERT_TRUE(numeric.ok());
  EXPECT_EQ(numeric->upstream_id, "77");
}

TEST(ParseSubmitResult, MissingIdOrEmptyBodyIsUnknown) {
  for (const char* body : {"", "{}", "{\"status\":\"queued\"}", "oops"}) {
    auto r = ParseSubmitResult(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnknown);
    EXPECT_NE(r.status().message().find("may or may not exist"),
              std::string::npos);
  }
}

TEST(ParseErrorBody, StatusCodeAsStringAndMessageArray) {
  ErrorBody e = ParseErrorBody(R"({"message":["prompt should not be empty",
      "duration must be 5 or 10"],"path":"/v2/x","requestId":"req-1",
      "statusCode":"400","timestamp":"2024-01-01T00:00:00Z"})");
  EXPECT_EQ(e.message, "prompt should not be empty; duration must be 5 or 10");
  EXPECT_EQ(e.path, "/v2/x");
  EXPECT_EQ(e.request_id, "req-1");
  EXPECT_EQ(e.status_code, 400);
  ErrorBody listed = ParseErrorBody(R"({"message":"Body validation error",
      "errors":["duration must be 5 or 10"],"statusCode":400})");
  EXPECT_EQ(listed.message, "Body validation error: duration must be 5 or 10");
  ErrorBody html = ParseErrorBody("<html>\n<b>Bad gateway</b></html>");
  EXPECT_EQ(html.message, "<html> <b>Bad gateway</b></html>");
}

TEST(HttpError, CodesAndActionableMessages) {
  const std::string body =
      R"({"message":"nope","requestId":"r9","statusCode":403})";
  struct Case {
    CallKind kind;
    long http;
    absl::StatusCode code;
    const char* hint;
  } cases[] = {
      {CallKind::kSubmit, 400, absl::StatusCode::kInvalidArgument, "fix"},
      {CallKind::kSubmit, 401, absl::StatusCode::kUnauthenticated,
       "AIMLAPI_KEY"},
      {CallKind::kSubmit, 403, absl::StatusCode::kFailedPrecondition,
       "credits"},
      {CallKind::kPoll, 404, absl::StatusCode::kNotFound, "lost upstream"},
      {CallKind::kSubmit, 404, absl::StatusCode::kFailedPrecondition,
       "--upstream_url"},
      {CallKind::kPoll, 429, absl::StatusCode::kResourceExhausted, "rate"},
      {CallKind::kPoll, 500, absl::StatusCode::kUnavailable, "later"},
      {CallKind::kPoll, 503, absl::StatusCode::kUnavailable, "later"},
      {CallKind::kSubmit, 504, absl::StatusCode::kUnknown, "never resubmitted"},
      {CallKind::kSubmit, 500, absl::StatusCode::kUnknown,
       "may have created the job"},
      {CallKind::kSubmit, 408, absl::StatusCode::kUnknown, "never resubmitted"},
      {CallKind::kSubmit, 303, absl::StatusCode::kUnknown, "never resubmitted"},
      {CallKind::kSubmit, 429, absl::StatusCode::kResourceExhausted, "rate"},
      {CallKind::kSubmit, 409, absl::StatusCode::kFailedPrecondition,
       "not expected"},
      {CallKind::kPoll, 504, absl::StatusCode::kDeadlineExceeded, "later"},
      {CallKind::kLogs, 400, absl::StatusCode::kInvalidArgument, "92 days"},
      {CallKind::kLogs, 404, absl::StatusCode::kFailedPrecondition,
       "--upstream_url"},
      {CallKind::kLogs, 429, absl::StatusCode::kResourceExhausted, "rate"},
      {CallKind::kLogs, 502, absl::StatusCode::kUnavailable, "later"},
  };
  for (const Case& c : cases) {
    absl::Status s = HttpError(c.kind, c.http, body, 1, "id:1/2", "");
    EXPECT_EQ(s.code(), c.code) << c.http;
    EXPECT_NE(s.message().find(c.hint), std::string::npos) << s;
    EXPECT_NE(s.message().find("nope"), std::string::npos) << s;
    EXPECT_NE(s.message().find("r9"), std::string::npos) << s;
  }
}

TEST(HttpError, RetryableClasses) {
  EXPECT_FALSE(IsRetryableHttp(CallKind::kPoll, 400));
  EXPECT_FALSE(IsRetryableHttp(CallKind::kPoll, 401));
  EXPECT_FALSE(IsRetryableHttp(CallKind::kPoll, 403));
  EXPECT_FALSE(IsRetryableHttp(CallKind::kPoll, 404));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kPoll, 408));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kPoll, 429));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kPoll, 500));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kPoll, 504));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kLogs, 503));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kLogs, 408));
  EXPECT_FALSE(IsRetryableHttp(CallKind::kLogs, 429));  // caller backs off
  EXPECT_FALSE(IsRetryableHttp(CallKind::kLogs, 400));
  // A submit is retried only when the upstream created nothing.
  for (long http = 100; http < 600; ++http) {
    EXPECT_EQ(IsRetryableHttp(CallKind::kSubmit, http), http == 429) << http;
  }
}

TEST(HttpError, RetryAfterPayloadRoundTrips) {
  absl::Status s = WithRetryAfter(absl::ResourceExhaustedError("slow down"),
                                  absl::Milliseconds(6500));
  EXPECT_EQ(std::string(*s.GetPayload(kRetryAfterPayload)), "7");
  ASSERT_TRUE(RetryAfterOf(s).has_value());
  EXPECT_EQ(*RetryAfterOf(s), absl::Seconds(7));
  EXPECT_FALSE(RetryAfterOf(absl::ResourceExhaustedError("x")).has_value());
  absl::Status junk = absl::ResourceExhaustedError("x");
  junk.SetPayload(kRetryAfterPayload, absl::Cord("soon"));
  EXPECT_FALSE(RetryAfterOf(junk).has_value());
}

TEST(ClassifySubmitError, OnlyProvenRefusalsAreNotCreated) {
  using absl::StatusCode;
  for (StatusCode code :
       {StatusCode::kInvalidArgument, StatusCode::kUnauthenticated,
        StatusCode::kFailedPrecondition, StatusCode::kResourceExhausted,
        StatusCode::kUnavailable, StatusCode::kAborted,
        StatusCode::kCancelled}) {
    EXPECT_EQ(ClassifySubmitError(absl::Status(code, "x")),
              SubmitOutcome::kNotCreated)
        << code;
  }
  for (StatusCode code : {StatusCode::kUnknown, StatusCode::kDeadlineExceeded,
                          StatusCode::kInternal, StatusCode::kDataLoss,
                          StatusCode::kNotFound, StatusCode::kOk}) {
    EXPECT_EQ(ClassifySubmitError(absl::Status(code, "x")),
              SubmitOutcome::kMaybeCreated)
        << code;
  }
}

TEST(ParseLogPage, RowsPaginationAndNulls) {
  auto page = ParseLogPage(R"({"data":[
      {"created":"2026-01-02T03:04:05.678Z","status":"succeeded",
       "origin":"api","model":"klingai/v2-master-text-to-video",
       "cost":{"usd":0.84,"credits":"1680000"},
       "tokens":{"input":0,"output":0,"total":0},
       "request_id":"req-1","inference_id":"abc:kling-video/v2/master",
       "client_request_id":"gen-1"},
      {"created":"2026-01-02T03:00:00Z","status":"failed","model":"m",
       "cost":{"usd":"0","credits":null},"request_id":"req-2",
       "inference_id":null,"client_request_id":null},
      {"status":"succeeded"},
      "not a row", 17, null],
      "pagination":{"limit":100,"offset":0,"total":"250","has_more":true}})",
                           100);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->rows.size(), 3u);
  EXPECT_EQ(page->total, 250);
  EXPECT_TRUE(page->has_more);
  const LogRow& a = page->rows[0];
  EXPECT_EQ(a.created, "2026-01-02T03:04:05.678Z");
  EXPECT_EQ(a.status, "succeeded");
  EXPECT_EQ(a.model, "klingai/v2-master-text-to-video");
  EXPECT_EQ(a.request_id, "req-1");
  EXPECT_EQ(a.inference_id, "abc:kling-video/v2/master");
  EXPECT_EQ(a.client_request_id, "gen-1");
  EXPECT_DOUBLE_EQ(a.cost_usd, 0.84);
  EXPECT_EQ(a.cost_credits, 1680000);
  const LogRow& b = page->rows[1];
  EXPECT_EQ(b.client_request_id, "");
  EXPECT_EQ(b.inference_id, "");
  EXPECT_EQ(b.cost_credits, 0);
  EXPECT_EQ(page->rows[2].client_request_id, "");
  EXPECT_EQ(page->rows[2].created, "");
}

TEST(ParseLogPage, HasMoreWithoutTheFlag) {
  auto from_total = ParseLogPage(
      R"({"data":[{"inference_id":"a"}],"pagination":{"offset":5,"total":7}})",
      1);
  ASSERT_TRUE(from_total.ok());
  EXPECT_TRUE(from_total->has_more);  // 5 + 1 < 7
  auto last = ParseLogPage(
      R"({"data":[{"inference_id":"a"}],"pagination":{"offset":6,"total":7,
          "has_more":"false"}})",
      1);
  ASSERT_TRUE(last.ok());
  EXPECT_FALSE(last->has_more);
  // No pagination at all: a full page may have a successor.
  auto full = ParseLogPage(R"({"data":[{},{}]})", 2);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(full->has_more);
  EXPECT_EQ(full->total, 2);
  auto partial = ParseLogPage(R"({"data":[{}]})", 2);
  ASSERT_TRUE(partial.ok());
  EXPECT_FALSE(partial->has_more);
}

TEST(ParseLogPage, NoDataArrayIsAnErrorNotAnEmptyPage) {
  for (const char* body :
       {"", "{}", R"({"data":null})", R"({"data":{"rows":[]}})",
        R"({"message":"Too many requests","statusCode":429})", "[]",
        "<html>502</html>"}) {
    auto page = ParseLogPage(body, 100);
    EXPECT_FALSE(page.ok()) << body;
    EXPECT_EQ(page.status().code(), absl::StatusCode::kUnavailable) << body;
  }
  auto empty = ParseLogPage(R"({"data":[],"pagination":{"total":0}})", 100);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->rows.empty());
  EXPECT_FALSE(empty->has_more);
}

TEST(Sanitize, StripsC0DelAndC1AndRepairsUtf8) {
  EXPECT_EQ(StripControl("a\x1b[31mb\x07"
                         "c\x7f",
                         false),
            "a[31mbc");
  EXPECT_EQ(StripControl("line1\r\n\tline2", true), "line1 line2");
  // U+009B (CSI) as UTF-8 is C2 9B; U+00A0 (C2 A0) is not a control.
  EXPECT_EQ(StripControl("x\xc2\x9b"
                         "2Jy\xc2\xa0z",
                         false),
            "x2Jy\xc2\xa0z");
  // A lone 0x9B byte is not UTF-8: replaced, never passed through.
  EXPECT_EQ(StripControl("x\x9by", false), "x\xef\xbf\xbdy");
  EXPECT_EQ(StripControl(std::string("a\0b", 3), false), "ab");
  // Multibyte text survives unchanged.
  EXPECT_EQ(StripControl("f\xc3\xbc"
                         "chse \xe2\x9c\x93 \xf0\x9f\x8e\xac",
                         false),
            "f\xc3\xbc"
            "chse \xe2\x9c\x93 \xf0\x9f\x8e\xac");
  // Overlong and surrogate encodings are ill-formed.
  EXPECT_EQ(StripControl("\xc0\x8a", false), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(StripControl("\xed\xa0\x80", false),
            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

TEST(Sanitize, RedactsTheKeyEvenWhenSplitByControls) {
  const std::string key = "sk-live-SECRET-42";
  EXPECT_EQ(CleanText("echo sk-live-\x01SECRET-42!", key, false),
            "echo [redacted]!");
  Snapshot s;
  s.raw_status = "queued\n";
  s.video = VideoInfo{"https://cdn/x.mp4?k=sk-live-SECRET-42\r\n",
                      "video/mp4\x1b", "x\x07.mp4", 1, 0};
  s.error = TaskError{"Name\x1b[2J", "bad\nkey sk-live-SECRET-42"};
  CleanSnapshot(&s, key);
  EXPECT_EQ(s.raw_status, "queued");
  EXPECT_EQ(s.state, TaskState::kQueued);
  EXPECT_EQ(s.video->url, "https://cdn/x.mp4?k=[redacted]");
  EXPECT_EQ(s.video->content_type, "video/mp4");
  EXPECT_EQ(s.video->file_name, "x.mp4");
  EXPECT_EQ(s.error->name, "Name [2J");
  EXPECT_EQ(s.error->message, "bad key [redacted]");
  absl::Status st = CleanStatus(
      WithRetryAfter(absl::ResourceExhaustedError("a\x1b"
                                                  "b sk-live-SECRET-42"),
                     absl::Seconds(3)),
      key);
  EXPECT_EQ(st.message(), "a b [redacted]");
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfterOf(st), absl::Seconds(3));
}

TEST(CheckBaseUrl, KeyOnlyOverTlsOrToLoopback) {
  using absl::StatusCode;
  struct Case {
    const char* url;
    bool has_key;
    StatusCode code;
  } cases[] = {
      {"https://api.aimlapi.com", true, StatusCode::kOk},
      {"HTTPS://api.aimlapi.com/", true, StatusCode::kOk},
      {"http://127.0.0.1:8080", true, StatusCode::kOk},
      {"http://127.9.8.7", true, StatusCode::kOk},
      {"http://localhost:1234", true, StatusCode::kOk},
      {"http://LOCALHOST", true, StatusCode::kOk},
      {"http://[::1]:9000", true, StatusCode::kOk},
      {"http://api.aimlapi.com", false, StatusCode::kOk},
      {"http://api.aimlapi.com", true, StatusCode::kFailedPrecondition},
      {"http://10.0.0.5:8080", true, StatusCode::kFailedPrecondition},
      {"http://127.0.0.1.nip.io", true, StatusCode::kFailedPrecondition},
      {"http://localhost.evil.com", true, StatusCode::kFailedPrecondition},
      {"http://127.0.0.1@evil.com", true, StatusCode::kFailedPrecondition},
      {"http://[::ffff:10.0.0.1]", true, StatusCode::kFailedPrecondition},
      {"ftp://api.aimlapi.com", true, StatusCode::kInvalidArgument},
      {"api.aimlapi.com", true, StatusCode::kInvalidArgument},
      {"", false, StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    absl::Status s = AimlApiUpstream::CheckBaseUrl(c.url, c.has_key);
    EXPECT_EQ(s.code(), c.code) << c.url << " " << s;
  }
  absl::Status refused =
      AimlApiUpstream::CheckBaseUrl("http://user:pw@api.example.com/", true);
  EXPECT_NE(refused.message().find("plain http"), std::string::npos);
  EXPECT_NE(refused.message().find("api.example.com"), std::string::npos);
  EXPECT_EQ(refused.message().find("pw"), std::string::npos) << refused;
}

TEST(HttpError, UpstreamEchoingTheKeyIsRedacted) {
  const std::string key = "sk-live-SECRET-0123456789";
  absl::Status s = HttpError(
      CallKind::kSubmit, 401,
      R"({"message":"invalid key sk-live-SECRET-0123456789"})", 1, "", key);
  EXPECT_EQ(s.message().find(key), std::string::npos) << s;
  EXPECT_NE(s.message().find("[redacted]"), std::string::npos) << s;
}

}  // namespace
}  // namespace videogen::upstream
