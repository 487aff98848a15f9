// Pure parts of the HTTP layer: routing, query parsing, Range, status
// mapping, SSE framing and the stream sink's dedupe and bounds.

#include <memory>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/http/json.h"
#include "server/http/router.h"
#include "server/http/sse.h"
#include "server/http/status_http.h"

namespace videogen::http {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(RouterTest, MatchesDesignRoutes) {
  EXPECT_EQ(MatchRoute("/").kind, RouteKind::kDashboard);
  EXPECT_EQ(MatchRoute("/dashboard.js").kind, RouteKind::kDashboard);
  EXPECT_EQ(MatchRoute("/metrics").kind, RouteKind::kMetrics);
  EXPECT_EQ(MatchRoute("/v1/generations").kind, RouteKind::kCollection);
  EXPECT_EQ(MatchRoute("/v1/generations:watch").kind, RouteKind::kWatchAll);
  Route get = MatchRoute("/v1/generations/abc_-1");
  EXPECT_EQ(get.kind, RouteKind::kGeneration);
  EXPECT_EQ(get.id, "abc_-1");
  Route cancel = MatchRoute("/v1/generations/abc:cancel");
  EXPECT_EQ(cancel.kind, RouteKind::kCancel);
  EXPECT_EQ(cancel.id, "abc");
  EXPECT_EQ(MatchRoute("/v1/generations/abc:watch").kind, RouteKind::kWatchOne);
  Route media = MatchRoute("/v1/media/abc");
  EXPECT_EQ(media.kind, RouteKind::kMedia);
  EXPECT_EQ(media.id, "abc");
  for (const char* bad :
       {"/v1/generations/", "/v1/generations/a/b", "/v1/generations/a:stop",
        "/v1/generations/:watch", "/v1/media/", "/v1/media/a/b", "/v2",
        "/v1/generationsX", "/metrics/x"}) {
    EXPECT_EQ(MatchRoute(bad).kind, RouteKind::kNotFound) << bad;
  }
  EXPECT_EQ(RouteName(RouteKind::kWatchOne), "/v1/generations/{id}:watch");
}

TEST(RouterTest, ParsesAndDecodesTargets) {
  absl::StatusOr<Target> t = ParseTarget(
      "/v1/gen%65rations?labels.a%20b=c+d&states=QUEUED&states=x&e");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->path, "/v1/generations");
  EXPECT_THAT(t->query,
              ElementsAre(Pair("labels.a b", "c d"), Pair("states", "QUEUED"),
                          Pair("states", "x"), Pair("e", "")));
  EXPECT_EQ(t->Param("states"), "x");
  EXPECT_FALSE(t->Param("zzz").has_value());
  EXPECT_FALSE(ParseTarget("/a?b=%4").ok());
  EXPECT_FALSE(ParseTarget("/a?b=%zz").ok());
  EXPECT_FALSE(ParseTarget("http://x/a").ok());
}

TEST(RouterTest, ListQuery) {
  Target t = *ParseTarget(
      "/v1/generations?page_size=5&page_token=tok&states=queued,COMPLETED"
      "&states=STATE_FAILED&labels.env=prod&labels.team=a");
  absl::StatusOr<v1::ListGenerationsRequest> req = ListRequestFromQuery(t, {});
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->page_size(), 5);
  EXPECT_EQ(req->page_token(), "tok");
  EXPECT_THAT(req->states(), ElementsAre(v1::Generation::STATE_QUEUED,
                                         v1::Generation::STATE_COMPLETED,
                                         v1::Generation::STATE_FAILED));
  EXPECT_EQ(req->labels().at("env"), "prod");
  EXPECT_EQ(req->labels().at("team"), "a");

  EXPECT_FALSE(
      ListRequestFromQuery(*ParseTarget("/x?states=UNSPECIFIED"), {}).ok());
  EXPECT_FALSE(ListRequestFromQuery(*ParseTarget("/x?labels.=v"), {}).ok());
  EXPECT_FALSE(
      ListRequestFromQuery(*ParseTarget("/x?labels.a=1&labels.a=2"), {}).ok());
  EXPECT_TRUE(
      ListRequestFromQuery(*ParseTarget("/x?labels.a=1&labels.a=1"), {}).ok());
  EXPECT_FALSE(ListRequestFromQuery(*ParseTarget("/x?foo=1"), {}).ok());
  EXPECT_TRUE(ListRequestFromQuery(*ParseTarget("/x?foo=1"), {"foo"}).ok());
  absl::StatusOr<v1::WatchGenerationsRequest> all = WatchAllRequestFromQuery(
      *ParseTarget("/x?states=GENERATING&labels.k=v&access_token=t"),
      {"access_token"});
  ASSERT_TRUE(all.ok());
  EXPECT_THAT(all->states(), ElementsAre(v1::Generation::STATE_GENERATING));
  EXPECT_FALSE(
      WatchAllRequestFromQuery(*ParseTarget("/x?page_size=1"), {}).ok());
}

TEST(RouterTest, ResumeRevision) {
  Target none = *ParseTarget("/x");
  Target q = *ParseTarget("/x?after_revision=7");
  EXPECT_EQ(*ResumeRevision("", none), 0);
  EXPECT_EQ(*ResumeRevision("", q), 7);
  EXPECT_EQ(*ResumeRevision(" 3 ", q), 3);  // the header wins
  EXPECT_FALSE(ResumeRevision("-1", none).ok());
  EXPECT_FALSE(ResumeRevision("abc", none).ok());
  EXPECT_FALSE(ResumeRevision("", *ParseTarget("/x?after_revision=1.5")).ok());
}

TEST(RangeTest, Decisions) {
  auto d = [](const char* h, int64_t size) { return DecideRange(h, size); };
  EXPECT_EQ(d("", 100).kind, RangeDecision::kWhole);
  EXPECT_EQ(d("items=1-2", 100).kind, RangeDecision::kWhole);
  EXPECT_EQ(d("bytes=0-1,4-5", 100).kind, RangeDecision::kWhole);
  RangeDecision a = d("bytes=0-0", 100);
  EXPECT_EQ(a.kind, RangeDecision::kPartial);
  EXPECT_EQ(a.range.first, 0);
  EXPECT_EQ(a.range.length, 1);
  RangeDecision b = d("bytes=90-", 100);
  EXPECT_EQ(b.range.first, 90);
  EXPECT_EQ(b.range.length, 10);
  RangeDecision c = d("bytes=-30", 100);
  EXPECT_EQ(c.range.first, 70);
  EXPECT_EQ(c.range.length, 30);
  RangeDecision e = d("bytes=-300", 100);
  EXPECT_EQ(e.range.first, 0);
  EXPECT_EQ(e.range.length, 100);
  RangeDecision f = d("bytes=50-1000", 100);
  EXPECT_EQ(f.range.length, 50);
  for (const char* bad : {"bytes=100-", "bytes=5-4", "bytes=x-1", "bytes=-0",
                          "bytes=", "bytes=-", "bytes=1", "bytes=+1-2"}) {
    EXPECT_EQ(d(bad, 100).kind, RangeDecision::kUnsatisfiable) << bad;
  }
  EXPECT_EQ(d("bytes=0-", 0).kind, RangeDecision::kUnsatisfiable);
}

TEST(StatusTest, MapsEveryCode) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kCancelled), 499);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnimplemented), 501);
  EXPECT_EQ(ErrorJson(absl::NotFoundError("generation \"x\" not found")),
            R"({"error":{"code":404,"message":"generation \"x\" not found",)"
            R"("status":"NOT_FOUND"}})");
}

TEST(JsonTest, RoundTripAndStrictness) {
  v1::GenerateRequest req;
  ASSERT_TRUE(
      FromJson(R"({"prompt":"p","duration_seconds":10,"labels":{"a":"b"}})",
               &req)
          .ok());
  EXPECT_EQ(req.duration_seconds(), 10);
  absl::Status unknown = FromJson(R"({"prompt":"p","nope":1})", &req);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.message()), ::testing::HasSubstr("nope"));
  v1::Generation g;
  g.set_revision(3);
  g.set_state(v1::Generation::STATE_QUEUED);
  g.set_upstream_status("line1\nline2");
  std::string json = ToJson(g);
  EXPECT_EQ(json.find('\n'), std::string::npos);  // one SSE data line
  auto parsed = nlohmann::json::parse(json);
  EXPECT_EQ(parsed["revision"], "3");
  EXPECT_EQ(parsed["state"], "STATE_QUEUED");
  EXPECT_EQ(parsed["upstreamStatus"], "line1\nline2");
}

core::EventPtr Event(
    const std::string& id, int64_t revision, bool done = false,
    v1::GenerationEvent::Type type = v1::GenerationEvent::TYPE_UPDATE) {
  auto e = std::make_shared<v1::GenerationEvent>();
  e->set_type(type);
  e->mutable_generation()->set_id(id);
  e->mutable_generation()->set_revision(revision);
  e->mutable_generation()->set_done(done);
  return e;
}

TEST(SseTest, Frames) {
  EXPECT_EQ(SseFrame(3, "update", "{}"), "id: 3\nevent: update\ndata: {}\n\n");
  std::string err = SseErrorFrame(absl::UnavailableError("bye"));
  EXPECT_EQ(err.rfind("event: error\ndata: {", 0), 0u);
  EXPECT_EQ(err.find("id:"), std::string::npos);
  FrameCache cache(2);
  core::EventPtr e = Event("g", 4, false, v1::GenerationEvent::TYPE_SNAPSHOT);
  auto f1 = cache.Frame(e);
  auto f2 = cache.Frame(e);
  EXPECT_EQ(f1.get(), f2.get());  // encoded once for every stream
  EXPECT_EQ(f1->rfind("id: 4\nevent: snapshot\ndata: {", 0), 0u);
}

TEST(StreamSinkTest, SingleDropsOldRevisionsAndEndsAfterTerminal) {
  StreamSink sink(/*single=*/true, /*after_revision=*/2, 16);
  int wakes = 0;
  sink.OnEvent(Event("g", 1));
  sink.OnEvent(Event("g", 2));
  sink.OnEvent(Event("g", 3));
  sink.Start([&] { ++wakes; });
  EXPECT_EQ(wakes, 1);
  sink.OnEvent(Event("g", 3));  // duplicate
  sink.OnEvent(Event("g", 4, /*done=*/true));
  sink.OnEvent(Event("g", 5));  // nothing after the terminal event
  sink.OnEvent(Event("g", 9, false, v1::GenerationEvent::TYPE_HEARTBEAT));
  EXPECT_EQ(wakes, 1);  // armed once until taken
  StreamSink::Batch b = sink.Take(10);
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_EQ(b.events[0]->generation().revision(), 3);
  EXPECT_EQ(b.events[1]->generation().revision(), 4);
  EXPECT_TRUE(b.done);
  EXPECT_FALSE(b.overflowed);
}

// What the hub may do when changes race Subscribe (core::SnapshotFirst):
// the stream still starts with one SNAPSHOT and continues with UPDATEs.
TEST(StreamSinkTest, SingleStartsWithASnapshotWhateverArrivesFirst) {
  using v1::GenerationEvent;
  {  // The hub's UPDATE 3, then Subscribe's SNAPSHOT 3 (a duplicate).
    StreamSink sink(/*single=*/true, /*after_revision=*/0, 16);
    sink.OnEvent(Event("g", 3, false, GenerationEvent::TYPE_UPDATE));
    sink.OnEvent(Event("g", 3, false, GenerationEvent::TYPE_SNAPSHOT));
    ASSERT_TRUE(sink.AttachSubscription(1));
    sink.OnEvent(Event("g", 4, false, GenerationEvent::TYPE_UPDATE));
    StreamSink::Batch b = sink.Take(10);
    ASSERT_EQ(b.events.size(), 2u);
    EXPECT_EQ(b.events[0]->type(), GenerationEvent::TYPE_SNAPSHOT);
    EXPECT_EQ(b.events[0]->generation().revision(), 3);
    EXPECT_EQ(b.events[1]->type(), GenerationEvent::TYPE_UPDATE);
  }
  {  // The hub's UPDATE 2, then Subscribe's newer SNAPSHOT 3.
    StreamSink sink(true, 0, 16);
    sink.OnEvent(Event("g", 2, false, GenerationEvent::TYPE_UPDATE));
    sink.OnEvent(Event("g", 3, false, GenerationEvent::TYPE_SNAPSHOT));
    StreamSink::Batch b = sink.Take(10);
    ASSERT_EQ(b.events.size(), 2u);
    EXPECT_EQ(b.events[0]->type(), GenerationEvent::TYPE_SNAPSHOT);
    EXPECT_EQ(b.events[0]->generation().revision(), 2);
    EXPECT_EQ(b.events[1]->type(), GenerationEvent::TYPE_UPDATE);
    EXPECT_EQ(b.events[1]->generation().revision(), 3);
  }
  {  // Resumed at the current revision: no SNAPSHOT due, changes are UPDATEs.
    StreamSink sink(true, 5, 16);
    ASSERT_TRUE(sink.AttachSubscription(1));
    sink.OnEvent(Event("g", 6, false, GenerationEvent::TYPE_UPDATE));
    StreamSink::Batch b = sink.Take(10);
    ASSERT_EQ(b.events.size(), 1u);
    EXPECT_EQ(b.events[0]->type(), GenerationEvent::TYPE_UPDATE);
  }
}

TEST(StreamSinkTest, FirehoseDedupesPerGeneration) {
  StreamSink sink(/*single=*/false, 0, 100);
  sink.OnEvent(Event("a", 1));
  sink.OnEvent(Event("b", 5));
  sink.OnEvent(Event("a", 1));
  sink.OnEvent(Event("a", 2, true));
  sink.OnEvent(Event("a", 2, true));
  sink.OnEvent(Event("b", 4));
  sink.OnEvent(Event("b", 6));
  StreamSink::Batch b = sink.Take(100);
  std::vector<std::pair<std::string, int64_t>> got;
  for (auto& e : b.events) {
    got.emplace_back(e->generation().id(), e->generation().revision());
  }
  EXPECT_THAT(
      got, ElementsAre(Pair("a", 1), Pair("b", 5), Pair("a", 2), Pair("b", 6)));
  EXPECT_FALSE(b.done);  // the firehose never ends on its own
}

TEST(StreamSinkTest, OverflowFreesTheBacklogAndStops) {
  StreamSink sink(/*single=*/false, 0, 4);
  sink.Start([] {});
  for (int i = 1; i <= 10; ++i) sink.OnEvent(Event("g", i));
  EXPECT_EQ(sink.high_water(), 4u);
  StreamSink::Batch b = sink.Take(100);
  EXPECT_TRUE(b.overflowed);
  EXPECT_TRUE(b.events.empty());
}

TEST(StreamSinkTest, InitialSnapshotsDoNotCountAgainstTheBacklog) {
  StreamSink sink(/*single=*/false, 0, 4);
  for (int i = 1; i <= 50; ++i) sink.OnEvent(Event(absl::StrCat("g", i), 1));
  sink.Start([] {});
  for (int i = 1; i <= 4; ++i) sink.OnEvent(Event(absl::StrCat("g", i), 2));
  EXPECT_FALSE(sink.overflowed());
  EXPECT_EQ(sink.Take(SIZE_MAX).events.size(), 54u);
  // After a Take the bound is max_backlog again.
  for (int i = 1; i <= 5; ++i) sink.OnEvent(Event(absl::StrCat("g", i), 3));
  EXPECT_TRUE(sink.overflowed());
}

TEST(StreamSinkTest, OverflowWakesEvenWhenAWakeIsPending) {
  StreamSink sink(/*single=*/true, 0, 3);
  int wakes = 0;
  sink.Start([&] { ++wakes; });
  sink.OnEvent(Event("g", 1));
  EXPECT_EQ(wakes, 1);  // armed until the stream Takes
  sink.OnEvent(Event("g", 2));
  sink.OnEvent(Event("g", 3));
  EXPECT_EQ(wakes, 1);
  sink.OnEvent(Event("g", 4));  // over the bound
  EXPECT_EQ(wakes, 2);
  EXPECT_TRUE(sink.overflowed());
}

TEST(StreamSinkTest, SubscriptionHandOffIsExactlyOnce) {
  StreamSink open(true, 0, 4);
  EXPECT_TRUE(open.AttachSubscription(7));
  EXPECT_EQ(open.TakeSubscription(), 7u);
  EXPECT_EQ(open.TakeSubscription(), 0u);
  StreamSink closed(true, 0, 4);
  closed.Close();
  EXPECT_FALSE(closed.AttachSubscription(8));  // the caller unwatches
  closed.OnEvent(Event("g", 1));
  EXPECT_TRUE(closed.Take(10).events.empty());
}

TEST(StreamSinkTest, FinishedWithNothingDueIsDone) {
  StreamSink sink(true, 5, 4);
  sink.MarkFinished();
  StreamSink::Batch b = sink.Take(10);
  EXPECT_TRUE(b.events.empty());
  EXPECT_TRUE(b.done);
}

}  // namespace
}  // namespace videogen::http
