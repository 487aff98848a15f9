#include "server/upstream/parse.h"

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/upstream/http_errors.h"
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
      {CallKind::kSubmit, 504, absl::StatusCode::kDeadlineExceeded,
       "may or may not exist"},
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
  EXPECT_TRUE(IsRetryableHttp(CallKind::kPoll, 429));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kSubmit, 429));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kSubmit, 503));
  EXPECT_TRUE(IsRetryableHttp(CallKind::kPoll, 504));
  EXPECT_FALSE(IsRetryableHttp(CallKind::kSubmit, 504));
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
