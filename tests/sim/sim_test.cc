// Drives the simulated AI/ML API over real HTTP on loopback.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "server/sim/mp4.h"
#include "server/sim/sim_server.h"

namespace videogen::sim {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

constexpr char kLegacy[] = "/v2/generate/video/kling/generation";
constexpr char kNew[] = "/v2/video/generations";
constexpr char kUuidRe[] =
    "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}";

std::string Encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

// A started simulator plus a keep-alive client that sends the right key.
class Sim {
 public:
  explicit Sim(SimOptions o = Fast()) : server_(o) {
    absl::Status s = server_.Start();
    EXPECT_TRUE(s.ok()) << s;
    client_ = std::make_unique<httplib::Client>(server_.base_url());
    client_->set_keep_alive(true);
    client_->set_read_timeout(10, 0);
  }

  static SimOptions Fast() {
    SimOptions o;
    o.queued_for = absl::Milliseconds(200);
    o.generating_for = absl::Milliseconds(300);
    return o;
  }

  httplib::Result Post(const std::string& path, const std::string& body,
                       httplib::Headers headers = Auth()) {
    return client_->Post(path.c_str(), headers, body, "application/json");
  }
  httplib::Result Poll(const std::string& path, const std::string& id,
                       httplib::Headers headers = Auth()) {
    return client_->Get(
        absl::StrCat(path, "?generation_id=", Encode(id)).c_str(), headers);
  }
  // Creates a job and returns its id.
  std::string Create(const std::string& path = kNew,
                     const std::string& body = R"({"prompt":"a cat"})") {
    auto res = Post(path, body);
    EXPECT_TRUE(res);
    if (!res) return "";
    EXPECT_EQ(res->status / 100, 2) << res->body;
    return json::parse(res->body).value("id", "");
  }
  // Polls until the status is no longer queued/generating.
  json WaitDone(const std::string& path, const std::string& id) {
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      auto res = Poll(path, id);
      if (res && res->status == 200) {
        json j = json::parse(res->body);
        if (j["status"] != "queued" && j["status"] != "generating") return j;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    ADD_FAILURE() << "job " << id << " never finished";
    return json();
  }

  static httplib::Headers Auth() {
    return {{"Authorization", "Bearer sim-key"}};
  }

  SimServer& server() { return server_; }
  httplib::Client& client() { return *client_; }

 private:
  SimServer server_;
  std::unique_ptr<httplib::Client> client_;
};

void ExpectErrorShape(const httplib::Result& res, int status,
                      const std::string& message) {
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, status);
  json j = json::parse(res->body);
  EXPECT_EQ(j["message"], message);
  EXPECT_TRUE(j["path"].is_string());
  EXPECT_TRUE(j["requestId"].is_string());
  EXPECT_TRUE(j["timestamp"].is_string());
  ASSERT_TRUE(j.contains("statusCode"));
  // statusCode is a number or, as upstream sometimes does, a string.
  std::string code = j["statusCode"].is_string()
                         ? j["statusCode"].get<std::string>()
                         : std::to_string(j["statusCode"].get<int>());
  EXPECT_EQ(code, std::to_string(status));
}

// Sends one raw request and reads until the server closes. Returns the
// promised Content-Length and the body bytes actually received.
struct RawReply {
  int status = 0;
  size_t content_length = 0;
  std::string body;
};
// Reads one response from `fd`: until the promised body is complete or the
// server closes the connection.
RawReply ReadReply(int fd) {
  RawReply reply;
  std::string all;
  char buf[4096];
  size_t header_end = std::string::npos;
  for (;;) {
    if (header_end == std::string::npos) {
      header_end = all.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        std::string head = all.substr(0, header_end);
        (void)absl::SimpleAtoi(head.substr(9, 3), &reply.status);
        size_t cl = head.find("Content-Length: ");
        if (cl != std::string::npos) {
          (void)absl::SimpleAtoi(
              head.substr(cl + 16, head.find("\r\n", cl) - cl - 16),
              &reply.content_length);
        }
      }
    }
    if (header_end != std::string::npos &&
        all.size() - header_end - 4 >= reply.content_length) {
      break;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    all.append(buf, n);
  }
  if (header_end != std::string::npos) reply.body = all.substr(header_end + 4);
  return reply;
}

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

RawReply RawGet(int port, const std::string& target,
                const std::string& extra_headers = "") {
  int fd = Connect(port);
  if (fd < 0) return RawReply();
  std::string req = absl::StrCat(
      "GET ", target,
      " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sim-key\r\n",
      extra_headers, "\r\n");
  EXPECT_EQ(send(fd, req.data(), req.size(), 0),
            static_cast<ssize_t>(req.size()));
  RawReply reply = ReadReply(fd);
  close(fd);
  return reply;
}

// ---------------------------------------------------------------- auth

TEST(SimAuth, MissingOrWrongKeyIs401WithUpstreamShape) {
  Sim sim;
  for (const char* path : {kLegacy, kNew}) {
    ExpectErrorShape(sim.Post(path, R"({"prompt":"x"})", {}), 401,
                     "Unauthorized");
    auto wrong = sim.Post(path, R"({"prompt":"x"})",
                          {{"Authorization", "Bearer nope-secret"}});
    ExpectErrorShape(wrong, 401, "Unauthorized");
    EXPECT_THAT(wrong->body, ::testing::Not(HasSubstr("nope-secret")));
    ExpectErrorShape(sim.Poll(path, "x", {{"Authorization", "sim-key"}}), 401,
                     "Unauthorized");
  }
  EXPECT_EQ(sim.server().Stats().submits, 0);
}

TEST(SimAuth, RightKeyIsAccepted) {
  Sim sim;
  auto res = sim.Post(kNew, R"({"prompt":"x"})");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

// ---------------------------------------------------------- validation

TEST(SimValidation, EachBadBodyIs400BodyValidationError) {
  Sim sim;
  const std::string long_prompt(2501, 'a');
  const std::vector<std::string> bad = {
      "not json",
      "[]",
      R"({})",
      R"({"prompt":""})",
      R"({"prompt":"   "})",
      R"({"prompt":42})",
      R"({"prompt":"x","aspect_ratio":"4:3"})",
      R"({"prompt":"x","aspect_ratio":169})",
      R"({"prompt":"x","duration":7})",
      R"({"prompt":"x","duration":"7"})",
      R"({"prompt":"x","duration":"five"})",
      R"({"prompt":"x","duration":true})",
      R"({"prompt":"x","cfg_scale":-0.1})",
      R"({"prompt":"x","cfg_scale":1.5})",
      R"({"prompt":"x","cfg_scale":"0.5"})",
      json{{"prompt", long_prompt}}.dump(),
      json{{"prompt", "x"}, {"negative_prompt", long_prompt}}.dump(),
  };
  for (const char* path : {kLegacy, kNew}) {
    for (const std::string& body : bad) {
      SCOPED_TRACE(body.substr(0, 60));
      ExpectErrorShape(sim.Post(path, body), 400, "Body validation error");
    }
  }
  EXPECT_EQ(sim.server().Stats().submits, 0);
}

TEST(SimValidation, BoundaryValuesAreAccepted) {
  Sim sim;
  std::string e_acute_2500;
  for (int i = 0; i < 2500; ++i) e_acute_2500 += "\xc3\xa9";  // 2500 chars
  const std::vector<std::string> good = {
      R"({"prompt":"x","duration":"5"})",
      R"({"prompt":"x","duration":10})",
      R"({"prompt":"x","duration":"10"})",
      R"({"prompt":"x","duration":5,"cfg_scale":0})",
      R"({"prompt":"x","cfg_scale":1,"aspect_ratio":"9:16"})",
      R"({"prompt":"x","aspect_ratio":"1:1","negative_prompt":"blur"})",
      R"({"model":"klingai/v2-master-text-to-video","prompt":"x"})",
      json{{"prompt", std::string(2500, 'a')}}.dump(),
      json{{"prompt", e_acute_2500}}.dump(),
  };
  for (const std::string& body : good) {
    SCOPED_TRACE(body.substr(0, 60));
    auto res = sim.Post(kNew, body);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
  }
  EXPECT_EQ(sim.server().Stats().submits, static_cast<int64_t>(good.size()));
}

// ------------------------------------------------------------- id shapes

TEST(SimIds, LegacyIdsCarryTheSuffixNewIdsAreUuids) {
  Sim sim;
  auto legacy = sim.Post(kLegacy, R"({"prompt":"x"})");
  ASSERT_TRUE(legacy);
  EXPECT_EQ(legacy->status, 201);
  json l = json::parse(legacy->body);
  EXPECT_EQ(l["status"], "queued");
  EXPECT_THAT(l["id"].get<std::string>(),
              MatchesRegex(absl::StrCat(
                  kUuidRe, ":kling-video/v2/master/text-to-video")));
  auto fresh = sim.Post(kNew, R"({"prompt":"x"})");
  ASSERT_TRUE(fresh);
  json n = json::parse(fresh->body);
  EXPECT_EQ(n["status"], "queued");
  EXPECT_THAT(n["id"].get<std::string>(), MatchesRegex(kUuidRe));
}

TEST(SimIds, IdsWithColonAndSlashRoundTripByteForByte) {
  Sim sim;
  const std::string id = sim.Create(kLegacy);
  ASSERT_THAT(id, HasSubstr(":kling-video/v2/"));
  // Percent-encoded, and also raw (':' and '/' are legal in a query).
  auto encoded = sim.Poll(kLegacy, id);
  ASSERT_TRUE(encoded);
  EXPECT_EQ(json::parse(encoded->body)["id"], id);
  auto raw = sim.client().Get(
      absl::StrCat(kLegacy, "?generation_id=", id).c_str(), Sim::Auth());
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->status, 200);
  EXPECT_EQ(json::parse(raw->body)["id"], id);
  SimStats stats = sim.server().Stats();
  EXPECT_EQ(stats.polls_by_id[id], 2);
  EXPECT_EQ(stats.polls_by_id.size(), 1u);
}

TEST(SimIds, UnknownIdIs404AndCountedVerbatim) {
  Sim sim;
  const std::string odd = "no-such:id/with spaces+plus%25&amp";
  for (const char* path : {kLegacy, kNew}) {
    ExpectErrorShape(sim.Poll(path, odd), 404, "Generation not found");
  }
  EXPECT_EQ(sim.server().Stats().polls_by_id[odd], 2);
  auto missing = sim.client().Get(kNew, Sim::Auth());
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 400);
}

// ------------------------------------------------------------ progression

// The distinct statuses a job went through, polled every 20 ms until it
// completed (for at most 20 s), and when the completion was seen.
struct Phases {
  std::vector<std::string> seen;
  absl::Time completed_at = absl::InfiniteFuture();
};
Phases PollUntilCompleted(Sim& sim, const std::string& id) {
  Phases p;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    auto res = sim.Poll(kNew, id);
    if (!res) {
      ADD_FAILURE() << "poll of " << id << " got no answer";
      break;
    }
    std::string status = json::parse(res->body)["status"];
    if (p.seen.empty() || p.seen.back() != status) p.seen.push_back(status);
    if (status == "completed") {
      p.completed_at = absl::Now();
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return p;
}

TEST(SimTiming, QueuedThenGeneratingThenCompletedOnTheJobsClock) {
  Sim sim;  // queued 200ms, generating 300ms
  const absl::Time before = absl::Now();
  const std::string id = sim.Create(kNew);
  Phases phases = PollUntilCompleted(sim, id);
  EXPECT_THAT(phases.seen,
              ::testing::ElementsAre("queued", "generating", "completed"));
  // Completion can never come before queued_for + generating_for.
  EXPECT_GE(phases.completed_at - before, absl::Milliseconds(500));
}

TEST(SimTiming, HeldJobsStayQueuedUntilReleasedThenRunFromTheRelease) {
  SimOptions o = Sim::Fast();  // queued 200ms, generating 300ms
  o.hold_queued = true;
  Sim sim(o);
  const std::string id = sim.Create(kNew);
  // Longer than the whole job would take on its own clock.
  absl::SleepFor(absl::Milliseconds(700));
  auto held = sim.Poll(kNew, id);
  ASSERT_TRUE(held);
  EXPECT_EQ(json::parse(held->body)["status"], "queued");

  const absl::Time released = absl::Now();
  auto first = sim.Post("/sim/release", "");
  ASSERT_TRUE(first);
  EXPECT_EQ(json::parse(first->body)["released"], true);
  auto again = sim.Post("/sim/release", "");
  ASSERT_TRUE(again);
  EXPECT_EQ(json::parse(again->body)["released"], false);  // already

  Phases phases = PollUntilCompleted(sim, id);
  EXPECT_THAT(phases.seen,
              ::testing::ElementsAre("queued", "generating", "completed"));
  // The job's phases count from the release, not from its creation.
  EXPECT_GE(phases.completed_at - released, absl::Milliseconds(500));
}

TEST(SimTiming, ReleaseWithoutAHoldChangesNothing) {
  Sim sim;
  EXPECT_FALSE(sim.server().Release());
  const std::string id = sim.Create(kNew);
  EXPECT_EQ(sim.WaitDone(kNew, id)["status"], "completed");
}

TEST(SimTiming, RealisticScalesGenerationWithClipLength) {
  SimOptions o = Sim::Fast();
  o.queued_for = absl::ZeroDuration();
  o.generating_for = absl::Milliseconds(400);
  o.scale_with_duration = true;
  Sim sim(o);
  const std::string five = sim.Create(kNew, R"({"prompt":"x","duration":5})");
  const std::string ten = sim.Create(kNew, R"({"prompt":"x","duration":10})");
  sim.WaitDone(kNew, five);
  // The 10 s clip needs 800ms; right after the 5 s one is done it cannot be.
  auto res = sim.Poll(kNew, ten);
  ASSERT_TRUE(res);
  EXPECT_EQ(json::parse(res->body)["status"], "generating");
  EXPECT_EQ(sim.WaitDone(kNew, ten)["status"], "completed");
}

// ------------------------------------------------------- completed shapes

TEST(SimShapes, LegacyCompletedShape) {
  Sim sim;
  const std::string id = sim.Create(kLegacy);
  json j = sim.WaitDone(kLegacy, id);
  EXPECT_EQ(j["status"], "completed");
  EXPECT_EQ(j["id"], id);
  const json& v = j["video"];
  EXPECT_THAT(v["url"].get<std::string>(),
              MatchesRegex(absl::StrCat(sim.server().base_url(), "/files/",
                                        kUuidRe, "\\.mp4")));
  EXPECT_EQ(v["content_type"], "video/mp4");
  EXPECT_THAT(v["file_name"].get<std::string>(),
              MatchesRegex(absl::StrCat(kUuidRe, "\\.mp4")));
  EXPECT_EQ(v["file_size"], SampleMp4().size());
}

TEST(SimShapes, NewCompletedShapeWithUsage) {
  Sim sim;
  for (int duration : {5, 10}) {
    const std::string id = sim.Create(
        kNew,
        json{{"prompt", "x"}, {"duration", std::to_string(duration)}}.dump());
    json j = sim.WaitDone(kNew, id);
    EXPECT_EQ(j["status"], "completed");
    EXPECT_TRUE(j["video"]["url"].is_string());
    EXPECT_EQ(j["video"]["duration"], duration);
    EXPECT_EQ(j["duration"], duration);
    EXPECT_TRUE(j.contains("error") && j["error"].is_null());
    EXPECT_EQ(j["meta"]["usage"]["tokens_used"], 24000 * duration);
  }
}

// ----------------------------------------------------------- task errors

TEST(SimErrors, ErrorRateOneFailsEveryJob) {
  SimOptions o = Sim::Fast();
  o.error_rate = 1;
  Sim sim(o);
  for (const char* path : {kLegacy, kNew}) {
    json j = sim.WaitDone(path, sim.Create(path));
    EXPECT_EQ(j["status"], "error");
    EXPECT_TRUE(j["error"]["name"].is_string());
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_FALSE(j.contains("video"));
  }
}

TEST(SimErrors, OutcomesAreDeterministicPerSeed) {
  auto outcomes = [](uint64_t seed) {
    SimOptions o = Sim::Fast();
    o.queued_for = absl::ZeroDuration();
    o.generating_for = absl::ZeroDuration();
    o.error_rate = 0.5;
    o.seed = seed;
    Sim sim(o);
    std::string s;
    for (int i = 0; i < 40; ++i) {
      json j = sim.WaitDone(kNew, sim.Create(kNew));
      s += j["status"] == "error" ? 'E' : 'C';
    }
    return s;
  };
  std::string a = outcomes(7);
  EXPECT_EQ(a, outcomes(7));
  EXPECT_THAT(a, HasSubstr("E"));
  EXPECT_THAT(a, HasSubstr("C"));
}

// --------------------------------------------------------------- faults

SimOptions WithFault(Endpoint e, FaultKind k, int every = 1) {
  SimOptions o = Sim::Fast();
  o.faults = {FaultRule{e, k, 0, every}};
  o.retry_after_seconds = 7;
  o.slow_delay = absl::Milliseconds(300);
  return o;
}

TEST(SimFaults, HttpErrorFaultsOnCreateAndPoll) {
  struct Case {
    FaultKind kind;
    int status;
  };
  for (Case c :
       {Case{FaultKind::k429, 429}, Case{FaultKind::k429NoRetryAfter, 429},
        Case{FaultKind::k500, 500}, Case{FaultKind::k502, 502},
        Case{FaultKind::k503, 503}, Case{FaultKind::k504, 504}}) {
    SCOPED_TRACE(FaultKindName(c.kind));
    Sim create(WithFault(Endpoint::kCreate, c.kind));
    auto res = create.Post(kNew, R"({"prompt":"x"})");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, c.status);
    EXPECT_EQ(res->has_header("Retry-After"), c.kind == FaultKind::k429);
    if (c.kind == FaultKind::k429) {
      EXPECT_EQ(res->get_header_value("Retry-After"), "7");
    }
    EXPECT_EQ(create.server().Stats().submits, 0);  // no job was made
    EXPECT_TRUE(create.server().UsageRows().empty());
    EXPECT_EQ(create.server().Stats().faults_by_kind[FaultKindName(c.kind)], 1);

    Sim poll(WithFault(Endpoint::kPoll, c.kind));
    const std::string id = poll.Create(kNew);
    auto p = poll.Poll(kNew, id);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->status, c.status);
    EXPECT_EQ(p->has_header("Retry-After"), c.kind == FaultKind::k429);
  }
}

TEST(SimFaults, EveryNthFiresOnlyOnMultiples) {
  Sim sim(WithFault(Endpoint::kPoll, FaultKind::k503, 3));
  const std::string id = sim.Create(kNew);
  std::vector<int> statuses;
  for (int i = 0; i < 6; ++i) statuses.push_back(sim.Poll(kNew, id)->status);
  EXPECT_THAT(statuses, ::testing::ElementsAre(200, 200, 503, 200, 200, 503));
  EXPECT_EQ(sim.server().Stats().faults_by_kind["503"], 2);
}

TEST(SimFaults, RateFiresAboutThatOften) {
  SimOptions o = Sim::Fast();
  o.faults = {FaultRule{Endpoint::kPoll, FaultKind::k500, 0.3, 0}};
  Sim sim(o);
  const std::string id = sim.Create(kNew);
  int faults = 0;
  for (int i = 0; i < 300; ++i) faults += sim.Poll(kNew, id)->status == 500;
  EXPECT_GT(faults, 30);
  EXPECT_LT(faults, 180);
  EXPECT_EQ(sim.server().Stats().faults_by_kind["500"], faults);
}

TEST(SimFaults, SlowAnswersAfterTheDelay) {
  Sim sim(WithFault(Endpoint::kPoll, FaultKind::kSlow));
  const std::string id = sim.Create(kNew);
  absl::Time start = absl::Now();
  auto res = sim.Poll(kNew, id);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
}

TEST(SimFaults, ResetCutsTheResponseAndClosesTheConnection) {
  Sim sim(WithFault(Endpoint::kPoll, FaultKind::kReset));
  const std::string id = sim.Create(kNew);
  RawReply r = RawGet(sim.server().port(),
                      absl::StrCat(kNew, "?generation_id=", Encode(id)));
  EXPECT_EQ(r.status, 200);
  EXPECT_GT(r.content_length, 0u);
  EXPECT_LT(r.body.size(), r.content_length);  // closed mid-body
  EXPECT_FALSE(sim.Poll(kNew, id));  // the client sees a transport error
}

TEST(SimFaults, ResetOnCreateStillMakesTheJob) {
  Sim sim(WithFault(Endpoint::kCreate, FaultKind::kReset));
  EXPECT_FALSE(sim.Post(kNew, R"({"prompt":"x"})"));
  EXPECT_EQ(sim.server().Stats().submits, 1);
}

TEST(SimFaults, MalformedJsonIs200WithABodyThatDoesNotParse) {
  for (Endpoint e : {Endpoint::kCreate, Endpoint::kPoll}) {
    Sim sim(WithFault(e, FaultKind::kMalformedJson));
    auto res = e == Endpoint::kCreate ? sim.Post(kNew, R"({"prompt":"x"})")
                                      : sim.Poll(kNew, sim.Create(kNew));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_TRUE(json::parse(res->body, nullptr, false).is_discarded())
        << res->body;
  }
}

TEST(SimFaults, OddStatusesReplaceTheUsualOnes) {
  SimOptions o = WithFault(Endpoint::kPoll, FaultKind::kOddStatus);
  o.faults.push_back({Endpoint::kCreate, FaultKind::kOddStatus, 0, 1});
  Sim sim(o);
  auto created = sim.Post(kNew, R"({"prompt":"x"})");
  ASSERT_TRUE(created);
  json c = json::parse(created->body);
  EXPECT_EQ(c["status"], "waiting");
  std::set<std::string> seen;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!seen.count("succeeded") && absl::Now() < deadline) {
    seen.insert(json::parse(sim.Poll(kNew, c["id"])->body)["status"]
                    .get<std::string>());
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(seen, (std::set<std::string>{"waiting", "active", "succeeded"}));
}

TEST(SimFaults, OddStatusOfAFailedJobIsFailed) {
  SimOptions o = WithFault(Endpoint::kPoll, FaultKind::kOddStatus);
  o.error_rate = 1;
  Sim sim(o);
  const std::string id = sim.Create(kNew);
  absl::SleepFor(absl::Milliseconds(600));
  json j;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  do {
    j = json::parse(sim.Poll(kNew, id)->body);
  } while (j["status"] != "failed" && absl::Now() < deadline);
  EXPECT_EQ(j["status"], "failed");
  EXPECT_TRUE(j["error"]["message"].is_string());
}

TEST(SimFaults, SetFaultsAtRunTime) {
  Sim sim;
  const std::string id = sim.Create(kNew);
  EXPECT_EQ(sim.Poll(kNew, id)->status, 200);
  sim.server().SetFaults({{Endpoint::kPoll, FaultKind::k502, 0, 1}});
  EXPECT_EQ(sim.Poll(kNew, id)->status, 502);
  sim.server().SetFaults({});
  EXPECT_EQ(sim.Poll(kNew, id)->status, 200);
}

TEST(SimFaults, ParseFaultRule) {
  auto r = ParseFaultRule("poll:500:rate=0.1");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->endpoint, Endpoint::kPoll);
  EXPECT_EQ(r->kind, FaultKind::k500);
  EXPECT_DOUBLE_EQ(r->rate, 0.1);
  r = ParseFaultRule("create:429:every=3");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->endpoint, Endpoint::kCreate);
  EXPECT_EQ(r->kind, FaultKind::k429);
  EXPECT_EQ(r->every_nth, 3);
  EXPECT_EQ(ParseFaultRule("download:reset")->rate, 1);  // always
  EXPECT_EQ(ParseFaultRule("poll:429nr")->kind, FaultKind::k429NoRetryAfter);
  EXPECT_EQ(ParseFaultRule("poll:malformed")->kind, FaultKind::kMalformedJson);
  EXPECT_EQ(ParseFaultRule("poll:odd")->kind, FaultKind::kOddStatus);
  EXPECT_EQ(ParseFaultRule("poll:slow")->kind, FaultKind::kSlow);
  EXPECT_EQ(ParseFaultRule("logs:500")->endpoint, Endpoint::kLogs);
  r = ParseFaultRule("create:create_then_500:every=1");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, FaultKind::kCreateThen500);
  EXPECT_EQ(r->every_nth, 1);
  EXPECT_EQ(ParseFaultRule("create:create_then_reset")->kind,
            FaultKind::kCreateThenReset);
  EXPECT_EQ(ParseFaultRule("create:create_then_slow")->kind,
            FaultKind::kCreateThenSlow);
  EXPECT_EQ(ParseFaultRule("create:create_2xx_no_id")->kind,
            FaultKind::kCreate2xxNoId);
  for (const char* bad : {"poll:create_then_500", "logs:create_2xx_no_id",
                          "download:create_then_reset"}) {
    EXPECT_FALSE(ParseFaultRule(bad).ok()) << bad;
  }
  for (const char* bad : {"poll", "nowhere:500", "poll:418", "poll:500:rate=2",
                          "poll:500:every=0", "poll:500:often", "logs:then"}) {
    EXPECT_FALSE(ParseFaultRule(bad).ok()) << bad;
  }
}

// ---------------------------------------------------------------- stats

TEST(SimStats, CountsRequestsPollsFaultsAndCorrelationHeaders) {
  Sim sim(WithFault(Endpoint::kPoll, FaultKind::k500, 2));
  auto created = sim.Post(kLegacy, R"({"prompt":"x"})",
                          {{"Authorization", "Bearer sim-key"},
                           {"X-Client-Request-Id", "gen-123"},
                           {"traceparent", "00-abc-def-01"}});
  ASSERT_TRUE(created);
  EXPECT_EQ(created->get_header_value("X-Client-Request-Id"), "gen-123");
  const std::string id = json::parse(created->body)["id"];
  for (int i = 0; i < 3; ++i) {
    sim.Poll(kLegacy, id,
             {{"Authorization", "Bearer sim-key"},
              {"X-Client-Request-Id", "gen-123"},
              {"traceparent", absl::StrCat("00-abc-", i, "-01")}});
  }
  sim.Post(kNew, "{}");
  SimStats s = sim.server().Stats();
  EXPECT_EQ(s.submits, 1);
  EXPECT_EQ(s.requests_by_path[absl::StrCat("POST ", kLegacy)], 1);
  EXPECT_EQ(s.requests_by_path[absl::StrCat("GET ", kLegacy)], 3);
  EXPECT_EQ(s.requests_by_path[absl::StrCat("POST ", kNew)], 1);
  EXPECT_EQ(s.polls_by_id[id], 3);
  EXPECT_EQ(s.faults_by_kind["500"], 1);
  EXPECT_EQ(s.client_request_id_by_id[id], "gen-123");
  EXPECT_EQ(s.traceparent_by_id[id], "00-abc-2-01");

  // The same numbers as JSON; reading them is not a poll.
  for (int i = 0; i < 2; ++i) {
    auto res = sim.client().Get("/sim/stats");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
    json j = json::parse(res->body);
    EXPECT_EQ(j["submits"], 1);
    EXPECT_EQ(j["polls_by_id"][id], 3);
    EXPECT_EQ(j["faults_by_kind"]["500"], 1);
    EXPECT_EQ(j["requests_by_path"][absl::StrCat("GET ", kLegacy)], 3);
    EXPECT_EQ(j["client_request_id_by_id"][id], "gen-123");
    EXPECT_EQ(j["traceparent_by_id"][id], "00-abc-2-01");
  }
  EXPECT_EQ(sim.server().Stats().requests_by_path.size(), 3u);

  sim.server().ResetStats();
  s = sim.server().Stats();
  EXPECT_EQ(s.submits, 0);
  EXPECT_TRUE(s.polls_by_id.empty());
  sim.server().SetFaults({});
  EXPECT_EQ(sim.Poll(kLegacy, id)->status, 200);  // jobs survive a reset
}

// ---------------------------------------------------------------- video

uint32_t Be32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) |
         (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

TEST(SimVideo, Mp4BoxesAreConsistent) {
  const std::string& mp4 = SampleMp4();
  std::vector<std::string> top;
  size_t mdat_payload = 0, mdat_size = 0;
  for (size_t at = 0; at + 8 <= mp4.size();) {
    uint32_t size = Be32(mp4, at);
    ASSERT_GE(size, 8u);
    top.push_back(mp4.substr(at + 4, 4));
    if (top.back() == "mdat") {
      mdat_payload = at + 8;
      mdat_size = size - 8;
    }
    at += size;
    ASSERT_LE(at, mp4.size());
  }
  EXPECT_THAT(top, ::testing::ElementsAre("ftyp", "moov", "mdat"));
  EXPECT_EQ(mp4.substr(8, 4), "isom");
  // The single chunk starts at the mdat payload and holds every sample.
  size_t stco = mp4.find("stco");
  ASSERT_NE(stco, std::string::npos);
  EXPECT_EQ(Be32(mp4, stco + 12), mdat_payload);
  size_t stsz = mp4.find("stsz");
  ASSERT_NE(stsz, std::string::npos);
  uint32_t count = Be32(mp4, stsz + 12);
  EXPECT_EQ(count, 10u);
  size_t total = 0;
  for (uint32_t i = 0; i < count; ++i) total += Be32(mp4, stsz + 16 + 4 * i);
  EXPECT_EQ(total, mdat_size);
  // Every sample is one length-prefixed IDR NAL (type 5).
  for (size_t at = mdat_payload; at < mdat_payload + mdat_size;) {
    EXPECT_EQ(uint8_t(mp4[at + 4]) & 0x1f, 5);
    at += 4 + Be32(mp4, at);
  }
  EXPECT_NE(mp4.find("avcC"), std::string::npos);
}

// Reads H.264 RBSP bits (emulation prevention bytes already removed).
class BitReader {
 public:
  explicit BitReader(std::string rbsp) : data_(std::move(rbsp)) {}
  uint32_t Bits(int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i, ++pos_) {
      v = (v << 1) | ((uint8_t(data_[pos_ / 8]) >> (7 - pos_ % 8)) & 1);
    }
    return v;
  }
  uint32_t Ue() {
    int zeros = 0;
    while (Bits(1) == 0) ++zeros;
    return (1u << zeros) - 1 + Bits(zeros);
  }
  void Align() { pos_ = (pos_ + 7) / 8 * 8; }

 private:
  std::string data_;
  size_t pos_ = 0;
};

std::string Unescape(const std::string& nal) {
  std::string out;
  int zeros = 0;
  for (char c : nal) {
    if (zeros >= 2 && c == 3) {
      zeros = 0;
      continue;
    }
    out.push_back(c);
    zeros = c == 0 ? zeros + 1 : 0;
  }
  return out;
}

TEST(SimVideo, H264IsBaselineWithPcmMacroblocks) {
  const std::string& mp4 = SampleMp4();
  // avcC: version, profile, compat, level, 0xff, 0xe1, sps length, sps.
  size_t avcc = mp4.find("avcC") + 4;
  EXPECT_EQ(uint8_t(mp4[avcc + 1]), 66);  // Baseline
  size_t sps_len = (uint8_t(mp4[avcc + 6]) << 8) | uint8_t(mp4[avcc + 7]);
  BitReader sps(Unescape(mp4.substr(avcc + 9, sps_len - 1)));
  EXPECT_EQ(sps.Bits(8), 66u);
  sps.Bits(16);             // constraints, level
  EXPECT_EQ(sps.Ue(), 0u);  // sps id
  EXPECT_EQ(sps.Ue(), 0u);  // log2_max_frame_num_minus4
  EXPECT_EQ(sps.Ue(), 2u);  // poc type
  sps.Ue();                 // max_num_ref_frames
  sps.Bits(1);              // gaps
  EXPECT_EQ(sps.Ue(), 3u);  // 64 px wide
  EXPECT_EQ(sps.Ue(), 3u);  // 64 px high

  // First sample: an IDR slice whose first macroblock is I_PCM holding the
  // gradient that MakeMp4 draws.
  size_t mdat = mp4.find("mdat") + 4;
  uint32_t nal_len = Be32(mp4, mdat);
  BitReader slice(Unescape(mp4.substr(mdat + 5, nal_len - 1)));
  EXPECT_EQ(slice.Ue(), 0u);   // first_mb_in_slice
  EXPECT_EQ(slice.Ue(), 7u);   // I
  EXPECT_EQ(slice.Ue(), 0u);   // pps id
  slice.Bits(4);               // frame_num
  slice.Ue();                  // idr_pic_id
  slice.Bits(2);               // dec_ref_pic_marking
  slice.Ue();                  // slice_qp_delta (se, 0)
  EXPECT_EQ(slice.Ue(), 1u);   // deblocking off
  EXPECT_EQ(slice.Ue(), 25u);  // I_PCM
  slice.Align();
  for (int y = 0; y < 16; ++y) {
    for (int x = 0; x < 16; ++x) {
      ASSERT_EQ(slice.Bits(8), uint32_t(16 + (x + y) * 2)) << x << "," << y;
    }
  }
}

TEST(SimVideo, VideoUrlServesTheMp4WithRanges) {
  Sim sim;
  json j = sim.WaitDone(kLegacy, sim.Create(kLegacy));
  const std::string url = j["video"]["url"];
  const std::string path = url.substr(sim.server().base_url().size());
  httplib::Client files(sim.server().base_url());
  auto whole = files.Get(path.c_str());
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->status, 200);
  EXPECT_EQ(whole->get_header_value("Content-Type"), "video/mp4");
  EXPECT_EQ(whole->get_header_value("Content-Length"),
            std::to_string(SampleMp4().size()));
  EXPECT_EQ(whole->body, SampleMp4());
  EXPECT_EQ(whole->body.substr(4, 4), "ftyp");

  auto part = files.Get(path.c_str(), {{"Range", "bytes=100-"}});
  ASSERT_TRUE(part);
  EXPECT_EQ(part->status, 206);
  EXPECT_EQ(part->get_header_value("Content-Range"),
            absl::StrCat("bytes 100-", SampleMp4().size() - 1, "/",
                         SampleMp4().size()));
  EXPECT_EQ(part->body, SampleMp4().substr(100));

  EXPECT_EQ(
      files.Get("/files/00000000-0000-4000-8000-000000000000.mp4")->status,
      404);
}

TEST(SimVideo, NoFileBeforeCompletion) {
  Sim sim;
  const std::string id = sim.Create(kNew);
  httplib::Client files(sim.server().base_url());
  EXPECT_EQ(files.Get(absl::StrCat("/files/", id, ".mp4").c_str())->status,
            404);
}

TEST(SimVideo, ResetDownloadCanBeResumedWithRange) {
  Sim sim(WithFault(Endpoint::kDownload, FaultKind::kReset, 2));
  json j = sim.WaitDone(kNew, sim.Create(kNew));
  const std::string url = j["video"]["url"];
  const std::string path = url.substr(sim.server().base_url().size());
  // First download is fine (1), the second (2) is cut, a resume (3) is fine.
  EXPECT_EQ(RawGet(sim.server().port(), path).body, SampleMp4());
  RawReply cut = RawGet(sim.server().port(), path);
  EXPECT_EQ(cut.content_length, SampleMp4().size());
  ASSERT_GT(cut.body.size(), 0u);
  ASSERT_LT(cut.body.size(), SampleMp4().size());
  RawReply rest =
      RawGet(sim.server().port(), path,
             absl::StrCat("Range: bytes=", cut.body.size(), "-\r\n"));
  EXPECT_EQ(rest.status, 206);
  EXPECT_EQ(cut.body + rest.body, SampleMp4());
}

// ---------------------------------------------------------- concurrency

TEST(SimConcurrency, ManyKeepAliveConnectionsAreAllServed) {
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  // Client and server ends both live in this process.
  const int n = static_cast<int>(std::min<rlim_t>(
      1000, (lim.rlim_cur > 200 ? lim.rlim_cur - 200 : 0) / 2));
  ASSERT_GE(n, 100) << "RLIMIT_NOFILE too low for this test";
  SimOptions o = Sim::Fast();
  // On a loaded box a round over 1000 sockets can outlast the default 5 s
  // idle timeout; this test is about holding connections, not timeouts.
  o.keep_alive_timeout = absl::Seconds(60);
  Sim sim(o);
  const std::string id = sim.Create(kNew);
  const std::string req = absl::StrCat(
      "GET ", kNew, "?generation_id=", id,
      " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sim-key\r\n\r\n");
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    int fd = Connect(sim.server().port());
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  // Two rounds on every connection while all of them stay open.
  for (int round = 0; round < 2; ++round) {
    for (int fd : fds) {
      ASSERT_EQ(send(fd, req.data(), req.size(), 0),
                static_cast<ssize_t>(req.size()));
    }
    int ok = 0;
    for (int fd : fds) {
      RawReply r = ReadReply(fd);
      ok += r.status == 200 && r.body.size() == r.content_length;
    }
    EXPECT_EQ(ok, n) << "round " << round;
  }
  for (int fd : fds) close(fd);
  EXPECT_EQ(sim.server().Stats().polls_by_id[id], 2 * n);
}

// ------------------------------------------------- create-then-fault modes

// Sends one raw POST and reads everything until the server closes. Returns
// the bytes received.
std::string RawPostAll(int port, const std::string& path,
                       const std::string& body, const std::string& crid) {
  int fd = Connect(port);
  if (fd < 0) return "connect failed";
  std::string req = absl::StrCat(
      "POST ", path,
      " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sim-key\r\n"
      "X-Client-Request-Id: ",
      crid,
      "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
      "\r\n\r\n", body);
  EXPECT_EQ(send(fd, req.data(), req.size(), 0),
            static_cast<ssize_t>(req.size()));
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) all.append(buf, n);
  close(fd);
  return all;
}

// Each create_then_* fault makes exactly one job per create, logged with the
// client's id, pollable under the id the log gives, while the answer the
// client got does not name that job.
TEST(SimCreateThen, EachFaultMakesExactlyOneLoggedPollableJob) {
  for (FaultKind kind :
       {FaultKind::kCreateThen500, FaultKind::kCreateThenReset,
        FaultKind::kCreateThenSlow, FaultKind::kCreate2xxNoId}) {
    const std::string name = FaultKindName(kind);
    SCOPED_TRACE(name);
    SimOptions o = WithFault(Endpoint::kCreate, kind);
    o.slow_delay = absl::Seconds(2);
    Sim sim(o);
    sim.client().set_read_timeout(0, 300000);  // 300 ms, < slow_delay
    const std::string crid = absl::StrCat("gen-", name);
    auto res = sim.Post(
        kNew, R"({"prompt":"x","duration":10})",
        {{"Authorization", "Bearer sim-key"}, {"X-Client-Request-Id", crid}});
    std::string answered_id;
    switch (kind) {
      case FaultKind::kCreateThen500:
        ExpectErrorShape(res, 500, "Internal server error");
        break;
      case FaultKind::kCreateThenReset:
      case FaultKind::kCreateThenSlow:
        EXPECT_FALSE(res) << "expected a transport error";
        break;
      case FaultKind::kCreate2xxNoId: {
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 200);
        json j = json::parse(res->body);
        EXPECT_FALSE(j.contains("id")) << res->body;
        EXPECT_EQ(j["status"], "queued");
        EXPECT_EQ(res->get_header_value("x-aimlapi-credits-used"),
                  std::to_string(588000 * 10));
        break;
      }
      default:
        FAIL();
    }
    SimStats stats = sim.server().Stats();
    EXPECT_EQ(stats.submits, 1);
    EXPECT_EQ(stats.faults_by_kind[name], 1);
    std::vector<UsageRow> rows = sim.server().UsageRows();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].client_request_id, crid);

    // Found again through the log, then polled under the logged id.
    auto logs = sim.client().Get("/v2/logs?period=24h", Sim::Auth());
    ASSERT_TRUE(logs);
    ASSERT_EQ(logs->status, 200) << logs->body;
    json page = json::parse(logs->body);
    ASSERT_EQ(page["data"].size(), 1u);
    const json& row = page["data"][0];
    EXPECT_EQ(row["client_request_id"], crid);
    const std::string id = row["inference_id"];
    EXPECT_THAT(id, MatchesRegex(kUuidRe));
    if (res) {
      // No answer names the job: not the body, not x-inference-id.
      EXPECT_THAT(res->body, ::testing::Not(HasSubstr(id)));
      EXPECT_NE(res->get_header_value("x-inference-id"), id);
      EXPECT_FALSE(res->get_header_value("x-inference-id").empty());
    }
    sim.client().set_read_timeout(10, 0);
    auto polled = sim.Poll(kNew, id);
    ASSERT_TRUE(polled);
    EXPECT_EQ(polled->status, 200);
    EXPECT_EQ(json::parse(polled->body)["id"], id);
    EXPECT_EQ(sim.server().Stats().submits, 1);  // the poll made nothing
  }
}

TEST(SimCreateThen, ResetSendsNoByteOfAnswer) {
  Sim sim(WithFault(Endpoint::kCreate, FaultKind::kCreateThenReset));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(RawPostAll(sim.server().port(), kLegacy, R"({"prompt":"x"})",
                         absl::StrCat("c", i)),
              "");
  }
  EXPECT_EQ(sim.server().Stats().submits, 3);
  std::vector<UsageRow> rows = sim.server().UsageRows();
  ASSERT_EQ(rows.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(rows[i].client_request_id, absl::StrCat("c", i));
    EXPECT_THAT(rows[i].inference_id,
                ::testing::EndsWith(":kling-video/v2/master/text-to-video"));
  }
  // The server is still healthy for the next client.
  sim.server().SetFaults({});
  EXPECT_FALSE(sim.Create(kNew).empty());
}

TEST(SimCreateThen, SlowAnswerArrivesLateWithTheId) {
  SimOptions o = WithFault(Endpoint::kCreate, FaultKind::kCreateThenSlow);
  o.slow_delay = absl::Milliseconds(500);
  Sim sim(o);
  absl::Time start = absl::Now();
  auto res = sim.Post(kNew, R"({"prompt":"x"})");
  ASSERT_TRUE(res);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_EQ(res->status, 200);
  const std::string id = json::parse(res->body)["id"];
  EXPECT_EQ(res->get_header_value("x-inference-id"), id);
  ASSERT_EQ(sim.server().UsageRows().size(), 1u);
  EXPECT_EQ(sim.server().UsageRows()[0].inference_id, id);
}

TEST(SimCreateThen, EveryNthFiresAndEachCreateMakesOneJob) {
  Sim sim(WithFault(Endpoint::kCreate, FaultKind::kCreateThen500, 2));
  int errors = 0;
  for (int i = 0; i < 6; ++i) {
    auto res = sim.Post(kNew, R"({"prompt":"x"})");
    ASSERT_TRUE(res);
    errors += res->status == 500;
  }
  EXPECT_EQ(errors, 3);
  EXPECT_EQ(sim.server().Stats().submits, 6);
  EXPECT_EQ(sim.server().UsageRows().size(), 6u);
}

// --------------------------------------------------- headers and shapes

TEST(SimHeaders, InferenceIdAndCostOnCreateAndPoll) {
  Sim sim;
  for (int duration : {5, 10}) {
    auto created = sim.Post(
        kNew, absl::StrCat(R"({"prompt":"x","duration":)", duration, "}"));
    ASSERT_TRUE(created);
    const std::string id = json::parse(created->body)["id"];
    EXPECT_EQ(created->get_header_value("x-inference-id"), id);
    EXPECT_EQ(created->get_header_value("x-aimlapi-credits-used"),
              std::to_string(588000 * duration));
    double usd = 0;
    ASSERT_TRUE(absl::SimpleAtod(
        created->get_header_value("x-aimlapi-usd-spent"), &usd));
    EXPECT_DOUBLE_EQ(usd, 0.28 * duration);

    auto polled = sim.Poll(kNew, id);
    ASSERT_TRUE(polled);
    EXPECT_EQ(polled->get_header_value("x-inference-id"), id);
    EXPECT_EQ(polled->get_header_value("x-aimlapi-credits-used"), "0");
    EXPECT_EQ(polled->get_header_value("x-aimlapi-usd-spent"), "0");
  }
  // Error answers carry a per-request id and no cost headers.
  auto missing = sim.Poll(kNew, "no-such-id");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_THAT(missing->get_header_value("x-inference-id"),
              MatchesRegex(kUuidRe));
  EXPECT_FALSE(missing->has_header("x-aimlapi-credits-used"));
  auto bad = sim.Post(kNew, "{}");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_TRUE(bad->has_header("x-inference-id"));
  EXPECT_TRUE(sim.server().UsageRows().size() == 2u);  // 400 made nothing
}

TEST(SimHeaders, CostIsConfigurable) {
  SimOptions o = Sim::Fast();
  o.credits_per_second = 7;
  o.usd_per_second = 0.5;
  Sim sim(o);
  auto created = sim.Post(kNew, R"({"prompt":"x"})");
  ASSERT_TRUE(created);
  EXPECT_EQ(created->get_header_value("x-aimlapi-credits-used"), "35");
  EXPECT_EQ(created->get_header_value("x-aimlapi-usd-spent"), "2.5");
}

TEST(SimShapes, DetailTaskErrorShape) {
  SimOptions o = Sim::Fast();
  o.error_rate = 1;
  o.detail_error_share = 1;
  Sim sim(o);
  json j = sim.WaitDone(kNew, sim.Create(kNew));
  EXPECT_EQ(j["status"], "error");
  ASSERT_TRUE(j["error"]["detail"].is_array()) << j;
  ASSERT_EQ(j["error"]["detail"].size(), 1u);
  const json& d = j["error"]["detail"][0];
  EXPECT_TRUE(d["loc"].is_array());
  EXPECT_TRUE(d["msg"].is_string());
  EXPECT_TRUE(d["type"].is_string());
  EXPECT_FALSE(j["error"].contains("message"));
}

TEST(SimShapes, DetailShareSplitsFailedJobs) {
  SimOptions o = Sim::Fast();
  o.queued_for = absl::ZeroDuration();
  o.generating_for = absl::ZeroDuration();
  o.error_rate = 1;
  o.detail_error_share = 0.5;
  Sim sim(o);
  int detail = 0, named = 0;
  for (int i = 0; i < 40; ++i) {
    json j = sim.WaitDone(kNew, sim.Create(kNew));
    detail += j["error"].contains("detail");
    named += j["error"].contains("name");
  }
  EXPECT_EQ(detail + named, 40);
  EXPECT_GT(detail, 0);
  EXPECT_GT(named, 0);
}

TEST(SimShapes, UsageAsCredits) {
  SimOptions o = Sim::Fast();
  o.usage_as_credits = true;
  Sim sim(o);
  json j = sim.WaitDone(kNew, sim.Create(kNew));
  EXPECT_EQ(j["status"], "completed");
  EXPECT_EQ(j["meta"]["usage"]["credits_used"], 588000 * 5);
  EXPECT_FALSE(j["meta"]["usage"].contains("tokens_used"));
}

// ------------------------------------------------------------- usage log

httplib::Result Logs(Sim& sim, const std::string& query) {
  return sim.client().Get(absl::StrCat("/v2/logs?", query).c_str(),
                          Sim::Auth());
}

json LogsOk(Sim& sim, const std::string& query) {
  auto res = Logs(sim, query);
  EXPECT_TRUE(res);
  if (!res) return json();
  EXPECT_EQ(res->status, 200) << query << ": " << res->body;
  return json::parse(res->body, nullptr, false);
}

std::string Iso(absl::Time t) {
  return Encode(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone()));
}

UsageRow Row(absl::Time created, const std::string& inference_id,
             const std::string& model = "m",
             const std::string& status = "succeeded") {
  UsageRow row;
  row.created = created;
  row.inference_id = inference_id;
  row.request_id = absl::StrCat("req-", inference_id);
  row.model = model;
  row.status = status;
  return row;
}

std::vector<std::string> Ids(const json& page) {
  std::vector<std::string> ids;
  for (const json& row : page["data"]) ids.push_back(row["inference_id"]);
  return ids;
}

TEST(SimLogs, EveryJobHasARowNewestFirst) {
  Sim sim;
  const std::string a = sim.Create(kLegacy);
  absl::SleepFor(absl::Milliseconds(5));
  auto b_res = sim.Post(
      kNew, R"({"prompt":"x","model":"klingai/other"})",
      {{"Authorization", "Bearer sim-key"}, {"X-Client-Request-Id", "gen-b"}});
  ASSERT_TRUE(b_res);
  const std::string b = json::parse(b_res->body)["id"];

  auto res = Logs(sim, "period=24h");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_TRUE(res->has_header("x-inference-id"));
  json page = json::parse(res->body);
  EXPECT_EQ(Ids(page), (std::vector<std::string>{b, a}));
  EXPECT_EQ(
      page["pagination"],
      json({{"limit", 100}, {"offset", 0}, {"total", 2}, {"has_more", false}}));
  const json& rb = page["data"][0];
  const json& ra = page["data"][1];
  EXPECT_EQ(rb["client_request_id"], "gen-b");
  EXPECT_TRUE(ra.contains("client_request_id"));
  EXPECT_TRUE(ra["client_request_id"].is_null());  // null, not absent or ""
  EXPECT_EQ(ra["model"], "klingai/v2-master-text-to-video");
  EXPECT_EQ(rb["model"], "klingai/other");
  for (const json& r : page["data"]) {
    EXPECT_EQ(r["status"], "succeeded");
    EXPECT_EQ(r["origin"], "api");
    EXPECT_EQ(r["cost"]["credits"], 588000 * 5);
    EXPECT_DOUBLE_EQ(r["cost"]["usd"].get<double>(), 0.28 * 5);
    EXPECT_EQ(r["tokens"]["output"], 24000 * 5);
    EXPECT_EQ(r["tokens"]["total"], 24000 * 5);
    EXPECT_EQ(r["tokens"]["input"], 0);
    EXPECT_THAT(r["request_id"].get<std::string>(), MatchesRegex(kUuidRe));
    absl::Time created;
    std::string err;
    ASSERT_TRUE(absl::ParseTime(
        absl::RFC3339_full, r["created"].get<std::string>(), &created, &err))
        << r["created"];
    EXPECT_LT(absl::AbsDuration(absl::Now() - created), absl::Minutes(1));
  }
  EXPECT_GT(ra["created"].get<std::string>().size(), 0u);
  EXPECT_GE(rb["created"].get<std::string>(), ra["created"].get<std::string>());
  EXPECT_EQ(sim.server().Stats().logs_requests, 1);
}

TEST(SimLogs, FailedJobsAreLoggedFailedAndFree) {
  SimOptions o = Sim::Fast();
  o.error_rate = 1;
  Sim sim(o);
  sim.Create(kNew);
  json page = LogsOk(sim, "period=7d");
  ASSERT_EQ(page["data"].size(), 1u);
  EXPECT_EQ(page["data"][0]["status"], "failed");
  EXPECT_EQ(page["data"][0]["cost"]["credits"], 0);
  EXPECT_EQ(LogsOk(sim, "period=7d&status=succeeded")["data"].size(), 0u);
}

TEST(SimLogs, WindowsByPeriodAndByStartEnd) {
  Sim sim;
  const absl::Time now = absl::Now();
  sim.server().AddUsageRow(Row(now - absl::Hours(1), "h1"));
  sim.server().AddUsageRow(Row(now - absl::Hours(48), "d2"));
  sim.server().AddUsageRow(Row(now - absl::Hours(24 * 10), "d10"));
  sim.server().AddUsageRow(Row(now - absl::Hours(24 * 100), "d100"));

  EXPECT_EQ(Ids(LogsOk(sim, "period=24h")), (std::vector<std::string>{"h1"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=7d")),
            (std::vector<std::string>{"h1", "d2"}));
  const absl::Time end = now + absl::Minutes(1);
  EXPECT_EQ(
      Ids(LogsOk(sim, absl::StrCat("start=", Iso(end - absl::Hours(24 * 92)),
                                   "&end=", Iso(end)))),
      (std::vector<std::string>{"h1", "d2", "d10"}));
  // Both ends are inclusive, to the millisecond.
  const absl::Time d2 =
      absl::FromUnixMillis(absl::ToUnixMillis(now)) - absl::Hours(48);
  sim.server().AddUsageRow(Row(d2, "d2-exact"));
  EXPECT_EQ(Ids(LogsOk(sim, absl::StrCat("start=", Iso(d2), "&end=", Iso(d2)))),
            (std::vector<std::string>{"d2-exact"}));
  EXPECT_EQ(
      Ids(LogsOk(sim, absl::StrCat("start=", Iso(d2 + absl::Milliseconds(1)),
                                   "&end=", Iso(end)))),
      (std::vector<std::string>{"h1"}));
  // Offsets, zone-less times and bare dates are ISO 8601 too.
  absl::Time t = absl::FromCivil(absl::CivilSecond(2024, 3, 1, 12, 0, 0),
                                 absl::UTCTimeZone());
  sim.server().AddUsageRow(Row(t, "march"));
  EXPECT_EQ(Ids(LogsOk(sim,
                       "start=2024-03-01T13:00:00%2B02:00&end=2024-03-01"
                       "T12:00:00")),
            (std::vector<std::string>{"march"}));
  EXPECT_EQ(Ids(LogsOk(sim, "start=2024-03-01&end=2024-03-02")),
            (std::vector<std::string>{"march"}));
}

TEST(SimLogs, WindowOf92DaysAtMost) {
  Sim sim;
  const absl::Time end = absl::Now();
  EXPECT_EQ(Logs(sim, absl::StrCat("start=", Iso(end - absl::Hours(24 * 92)),
                                   "&end=", Iso(end)))
                ->status,
            200);
  ExpectErrorShape(
      Logs(sim, absl::StrCat("start=",
                             Iso(end - absl::Hours(24 * 92) - absl::Seconds(1)),
                             "&end=", Iso(end))),
      400, "Query validation error");
}

TEST(SimLogs, BadQueriesAre400WithTheUpstreamShape) {
  Sim sim;
  const std::string end = Iso(absl::Now());
  for (const std::string& q : std::vector<std::string>{
           "",                                              // no window
           absl::StrCat("end=", end),                       // start missing
           absl::StrCat("start=", end),                     // end missing
           absl::StrCat("period=24h&start=", end),          // both kinds
           "period=30d", "period=24",                       // unknown periods
           absl::StrCat("start=yesterday&end=", end),       // not ISO
           absl::StrCat("start=", end, "&end=2020-01-01"),  // end < start
           "period=24h&status=ok",                          // unknown status
           "period=24h&limit=0", "period=24h&limit=101", "period=24h&limit=ten",
           "period=24h&offset=-1"}) {
    SCOPED_TRACE(q);
    auto res = Logs(sim, q);
    ExpectErrorShape(res, 400, "Query validation error");
    ASSERT_TRUE(res);
    json j = json::parse(res->body);
    ASSERT_TRUE(j["errors"].is_array());
    EXPECT_FALSE(j["errors"][0].get<std::string>().empty());
  }
  ExpectErrorShape(sim.client().Get("/v2/logs?period=24h"), 401,
                   "Unauthorized");
}

TEST(SimLogs, RepeatedFiltersAndCommasInsideAValue) {
  Sim sim;
  const absl::Time now = absl::Now();
  sim.server().AddUsageRow(Row(now - absl::Seconds(4), "a", "a"));
  sim.server().AddUsageRow(Row(now - absl::Seconds(3), "b", "b", "failed"));
  sim.server().AddUsageRow(Row(now - absl::Seconds(2), "ab", "a,b"));
  sim.server().AddUsageRow(Row(now - absl::Seconds(1), "c", "c", "failed"));

  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&model=a&model=b")),
            (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&model=a%2Cb")),
            (std::vector<std::string>{"ab"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&model=a,b")),
            (std::vector<std::string>{"ab"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&status=failed")),
            (std::vector<std::string>{"c", "b"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&status=failed&status=succeeded")),
            (std::vector<std::string>{"c", "ab", "b", "a"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&status=failed&model=a&model=c")),
            (std::vector<std::string>{"c"}));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h&model=z")), std::vector<std::string>{});
  ExpectErrorShape(Logs(sim, "period=24h&status=failed,succeeded"), 400,
                   "Query validation error");
}

TEST(SimLogs, PagingWithLimitOffsetTotalAndHasMore) {
  Sim sim;
  const absl::Time now = absl::Now();
  for (int i = 0; i < 250; ++i) {
    sim.server().AddUsageRow(
        Row(now - absl::Seconds(1000 - i), absl::StrCat("r", i)));
  }
  std::vector<std::string> all;
  for (int offset : {0, 100, 200}) {
    json page = LogsOk(sim, absl::StrCat("period=24h&offset=", offset));
    std::vector<std::string> ids = Ids(page);
    EXPECT_EQ(ids.size(), offset == 200 ? 50u : 100u);
    EXPECT_EQ(page["pagination"]["total"], 250);
    EXPECT_EQ(page["pagination"]["limit"], 100);
    EXPECT_EQ(page["pagination"]["offset"], offset);
    EXPECT_EQ(page["pagination"]["has_more"], offset != 200);
    all.insert(all.end(), ids.begin(), ids.end());
  }
  ASSERT_EQ(all.size(), 250u);
  for (int i = 0; i < 250; ++i) EXPECT_EQ(all[i], absl::StrCat("r", 249 - i));

  json small = LogsOk(sim, "period=24h&limit=7&offset=240");
  EXPECT_EQ(Ids(small).size(), 7u);
  EXPECT_EQ(Ids(small).front(), "r9");
  EXPECT_EQ(small["pagination"]["limit"], 7);
  EXPECT_EQ(small["pagination"]["has_more"], true);
  json last = LogsOk(sim, "period=24h&limit=10&offset=240");
  EXPECT_EQ(Ids(last).back(), "r0");
  EXPECT_EQ(last["pagination"]["has_more"], false);
  json past = LogsOk(sim, "period=24h&offset=1000");
  EXPECT_TRUE(past["data"].empty());
  EXPECT_EQ(past["pagination"]["total"], 250);
  EXPECT_EQ(past["pagination"]["has_more"], false);
}

TEST(SimLogs, EqualTimesListTheLaterAddedRowFirst) {
  Sim sim;
  const absl::Time t = absl::Now() - absl::Minutes(1);
  for (const char* id : {"x", "y", "z"}) sim.server().AddUsageRow(Row(t, id));
  EXPECT_EQ(Ids(LogsOk(sim, "period=24h")),
            (std::vector<std::string>{"z", "y", "x"}));
}

TEST(SimLogs, RateLimitRefusesWithinTheWindowThenRecovers) {
  SimOptions o = Sim::Fast();
  o.logs_rate_limit = 5;
  o.logs_rate_window = absl::Milliseconds(800);
  Sim sim(o);
  const absl::Time start = absl::Now();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Logs(sim, i == 4 ? "bad=query" : "period=24h")->status,
              i == 4 ? 400 : 200);
  }
  auto refused = Logs(sim, "period=24h");
  // Only meaningful while the window has not passed yet.
  if (absl::Now() - start < o.logs_rate_window) {
    ExpectErrorShape(refused, 429, "Too many requests");
    ASSERT_TRUE(refused);
    EXPECT_TRUE(json::parse(refused->body)["statusCode"].is_string());
    EXPECT_EQ(sim.server().Stats().logs_rate_limited, 1);
  }
  // Refusals do not count: once the first five leave the window, it opens.
  absl::SleepFor(o.logs_rate_window - (absl::Now() - start) +
                 absl::Milliseconds(50));
  EXPECT_EQ(Logs(sim, "period=24h")->status, 200);
  SimStats s = sim.server().Stats();
  EXPECT_EQ(s.logs_requests, 7);
  EXPECT_EQ(s.requests_by_path["GET /v2/logs"], 7);
  // Creates and polls are not limited by it.
  EXPECT_FALSE(sim.Create(kNew).empty());
}

TEST(SimLogs, DefaultLimitIs200PerMinute) {
  Sim sim;
  int ok = 0, limited = 0;
  for (int i = 0; i < 205; ++i) {
    int status = Logs(sim, "period=24h")->status;
    ok += status == 200;
    limited += status == 429;
  }
  // 205 requests take far less than a minute on loopback.
  EXPECT_EQ(ok, 200);
  EXPECT_EQ(limited, 5);
}

TEST(SimLogs, LagHidesANewRowForAWhile) {
  SimOptions o = Sim::Fast();
  o.logs_lag = absl::Milliseconds(400);
  Sim sim(o);
  const absl::Time created = absl::Now();
  const std::string id = sim.Create(kNew);
  ASSERT_EQ(sim.server().UsageRows().size(), 1u);  // made, not yet visible
  json page;
  absl::Time seen;
  do {
    page = LogsOk(sim, "period=24h");
    seen = absl::Now();
    if (!page["data"].empty()) break;
    EXPECT_EQ(page["pagination"]["total"], 0);
    absl::SleepFor(absl::Milliseconds(20));
  } while (seen - created < absl::Seconds(10));
  EXPECT_EQ(Ids(page), (std::vector<std::string>{id}));
  EXPECT_GE(seen - created, absl::Milliseconds(400));
}

TEST(SimLogs, FaultsOnTheLogsEndpoint) {
  SimOptions o = WithFault(Endpoint::kLogs, FaultKind::k503, 2);
  Sim sim(o);
  EXPECT_EQ(Logs(sim, "period=24h")->status, 200);
  ExpectErrorShape(Logs(sim, "period=24h"), 503, "Service unavailable");
  sim.server().SetFaults({{Endpoint::kLogs, FaultKind::kReset, 0, 1}});
  EXPECT_FALSE(Logs(sim, "period=24h"));
}

}  // namespace
}  // namespace videogen::sim
