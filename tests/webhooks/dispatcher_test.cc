// The webhook Dispatcher against real HTTP receivers (cpp-httplib on
// loopback) and an in-test outbox (fake_outbox.h).
#include "server/webhooks/dispatcher.h"

#include <httplib.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/webhooks/signature.h"
#include "tests/webhooks/fake_outbox.h"

namespace videogen::webhooks {
namespace {

using test_support::FakeOutbox;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string& Secret() {
  static const std::string* s = new std::string(
      absl::StrCat("whsec_", absl::Base64Escape("SECRET-key-0123456789abcd")));
  return *s;
}

// A webhook receiver on a loopback address. `answer` decides each response;
// `n` counts the requests to the same path, from 1.
class Receiver {
 public:
  struct Seen {
    std::string path, id, timestamp, signature, content_type, user_agent, body;
    absl::Time at;
  };
  using Answer =
      std::function<void(const httplib::Request&, httplib::Response&, int n)>;

  explicit Receiver(Answer answer, const std::string& address = "127.0.0.1")
      : address_(address), answer_(std::move(answer)) {
    server_.Post(".*", [this](const httplib::Request& req,
                              httplib::Response& res) { Serve(req, res); });
    port_ = server_.bind_to_any_port(address_);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~Receiver() {
    Release();
    server_.stop();
    thread_.join();
  }

  std::string Url(const std::string& path) const {
    return absl::StrCat("http://", address_, ":", port_, path);
  }
  int port() const { return port_; }

  std::vector<Seen> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  int Count(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const Seen& s : seen_) n += s.path == path;
    return n;
  }

  // Gating: while closed, requests wait inside the handler (a slow
  // receiver) and the current and highest concurrency are tracked.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    changed_.notify_all();
  }
  int inside() {
    std::lock_guard<std::mutex> lock(mu_);
    return inside_;
  }
  int max_inside() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_inside_;
  }
  bool WaitInside(int n, absl::Duration timeout = absl::Seconds(20)) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, absl::ToChronoSeconds(timeout),
                             [&] { return inside_ >= n; });
  }

 private:
  void Serve(const httplib::Request& req, httplib::Response& res) {
    int n = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      seen_.push_back({req.path, req.get_header_value("webhook-id"),
                       req.get_header_value("webhook-timestamp"),
                       req.get_header_value("webhook-signature"),
                       req.get_header_value("Content-Type"),
                       req.get_header_value("User-Agent"), req.body,
                       absl::Now()});
      for (const Seen& s : seen_) n += s.path == req.path;
      ++inside_;
      max_inside_ = std::max(max_inside_, inside_);
      changed_.notify_all();
      changed_.wait(lock, [this] { return open_; });
      --inside_;
    }
    answer_(req, res, n);
  }

  const std::string address_;
  const Answer answer_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  // std::mutex rather than absl::Mutex: ThreadSanitizer sees inside it, and
  // waits on conditions need no Abseil shim.
  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<Seen> seen_;  // guarded by mu_, as are the three below
  bool open_ = true;
  int inside_ = 0;
  int max_inside_ = 0;
};

void Status(httplib::Response& res, int code) {
  res.status = code;
  res.set_content("", "text/plain");
}

// Hook calls, recorded for assertions.
struct HookLog {
  absl::Mutex mu;
  std::vector<std::string> attempts ABSL_GUARDED_BY(mu);  // reasons
  std::vector<std::string> settled ABSL_GUARDED_BY(mu);   // outcomes
  std::vector<std::string> store_errors ABSL_GUARDED_BY(mu);

  std::vector<std::string> Attempts() {
    absl::MutexLock lock(&mu);
    return attempts;
  }
  std::vector<std::string> Settled() {
    absl::MutexLock lock(&mu);
    return settled;
  }
  std::vector<std::string> StoreErrors() {
    absl::MutexLock lock(&mu);
    return store_errors;
  }
};

class DispatcherTest : public ::testing::Test {
 protected:
  DispatcherOptions Options() {
    DispatcherOptions o;
    o.owner = "replica-a";
    o.allow_insecure = true;
    o.secret_for = [](const std::string&) -> absl::StatusOr<std::string> {
      return Secret();
    };
    o.retry_schedule = {absl::Milliseconds(50), absl::Milliseconds(50)};
    o.jitter = 0;
    o.poll_interval = absl::Milliseconds(50);
    o.timeout = absl::Seconds(5);
    o.host_busy_defer = absl::Milliseconds(100);
    o.hooks.on_attempt = [this](const AttemptReport& r) {
      absl::MutexLock lock(&hooks_.mu);
      hooks_.attempts.push_back(r.reason);
    };
    o.hooks.on_settled = [this](std::string_view outcome, absl::Duration) {
      absl::MutexLock lock(&hooks_.mu);
      hooks_.settled.emplace_back(outcome);
    };
    o.hooks.on_store_error = [this](std::string_view op,
                                    const absl::Status& s) {
      absl::MutexLock lock(&hooks_.mu);
      hooks_.store_errors.push_back(
          absl::StrCat(std::string(op), ": ", s.ToString()));
    };
    return o;
  }

  std::unique_ptr<Dispatcher> Start(DispatcherOptions o) {
    absl::StatusOr<std::unique_ptr<Dispatcher>> d =
        Dispatcher::Create(&outbox_, std::move(o));
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *std::move(d) : nullptr;
  }

  int64_t Enqueue(const std::string& generation, int64_t revision,
                  const std::string& url) {
    store::Delivery d;
    d.generation_id = generation;
    d.revision = revision;
    d.tenant = "acme";
    d.url = url;
    d.body = absl::StrCat(R"({"type":"TYPE_UPDATE","generation":{"id":")",
                          generation, R"(","revision":")", revision, R"("}})");
    return outbox_.Enqueue(d);
  }

  bool Settled(const std::string& generation) {
    return outbox_.WaitFor([&](FakeOutbox& o) {
      std::optional<v1::WebhookStatus> s = o.Status(generation);
      return s.has_value() && s->settled();
    });
  }

  void TearDown() override {
    EXPECT_THAT(hooks_.StoreErrors(), ::testing::IsEmpty());
  }

  FakeOutbox outbox_;
  HookLog hooks_;
};

TEST_F(DispatcherTest, FailsTwiceThenTheThirdAttemptIsDelivered) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int n) {
    Status(res, n <= 2 ? 503 : 204);
  });
  auto dispatcher = Start(Options());
  Enqueue("gen-1", 3, receiver.Url("/hook"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-1"));

  const std::vector<Receiver::Seen> seen = receiver.seen();
  ASSERT_EQ(seen.size(), 3u);
  for (const Receiver::Seen& s : seen) {
    // The same webhook-id every time, so the receiver can de-duplicate.
    EXPECT_EQ(s.id, "gen-1.3");
    EXPECT_EQ(s.content_type, "application/json");
    EXPECT_EQ(s.user_agent, "videogen");
    EXPECT_THAT(s.body, HasSubstr(R"("id":"gen-1")"));
    // Each attempt is signed afresh and verifies like a receiver would.
    EXPECT_TRUE(
        Verify(Secret(), s.id, s.timestamp, s.body, s.signature, absl::Now())
            .ok())
        << s.signature;
  }
  const v1::WebhookStatus status = *outbox_.Status("gen-1");
  EXPECT_EQ(status.attempts(), 3);
  EXPECT_EQ(status.last_http_status(), 204);
  EXPECT_EQ(status.last_result(), "delivered");
  EXPECT_TRUE(status.settled());
  EXPECT_GT(status.last_attempt_time().seconds(), 0);
  EXPECT_TRUE(outbox_.Pending().empty());
  // Two retries, scheduled with the attempts made so far.
  const std::vector<FakeOutbox::RetryCall> retries = outbox_.Retries();
  ASSERT_EQ(retries.size(), 2u);
  EXPECT_EQ(retries[0].attempts, 1);
  EXPECT_EQ(retries[1].attempts, 2);
  EXPECT_THAT(hooks_.Attempts(),
              ElementsAre("http_5xx", "http_5xx", "delivered"));
  EXPECT_THAT(hooks_.Settled(), ElementsAre("delivered"));
}

TEST_F(DispatcherTest, GoneStopsTheGenerationsOtherDeliveries) {
  Receiver receiver([](const httplib::Request& req, httplib::Response& res,
                       int) { Status(res, req.path == "/gone" ? 410 : 200); });
  DispatcherOptions o = Options();
  o.poll_interval = absl::Hours(1);  // one claim sees all three
  Enqueue("gen-a", 3, receiver.Url("/gone"));
  Enqueue("gen-a", 4, receiver.Url("/gone"));
  Enqueue("gen-b", 3, receiver.Url("/fine"));
  auto dispatcher = Start(std::move(o));
  ASSERT_TRUE(Settled("gen-a"));
  ASSERT_TRUE(Settled("gen-b"));
  ASSERT_TRUE(
      outbox_.WaitFor([](FakeOutbox& o) { return o.Pending().empty(); }));

  EXPECT_EQ(receiver.Count("/gone"), 1);  // revision 4 was never sent
  EXPECT_EQ(receiver.Count("/fine"), 1);
  const v1::WebhookStatus a = *outbox_.Status("gen-a");
  EXPECT_EQ(a.last_http_status(), 410);
  EXPECT_EQ(a.last_result(), "gone (410): deliveries stopped");
  EXPECT_EQ(a.attempts(), 1);
  EXPECT_EQ(outbox_.Status("gen-b")->last_result(), "delivered");
  EXPECT_TRUE(outbox_.Retries().empty());
}

TEST_F(DispatcherTest, DeliveryClaimedBeforeA410ElsewhereIsNotSent) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  DispatcherOptions o = Options();
  o.poll_interval = absl::Hours(1);  // one claim sees both
  Enqueue("gen-a", 4, receiver.Url("/late"));
  Enqueue("gen-b", 3, receiver.Url("/fine"));
  // Another replica records a 410 for gen-a's revision 3 right after this
  // one claimed revision 4.
  outbox_.DropAfterClaim("gen-a");
  auto dispatcher = Start(std::move(o));
  ASSERT_TRUE(Settled("gen-b"));
  ASSERT_TRUE(outbox_.WaitFor([&](FakeOutbox& o) {
    const DispatcherStats st = dispatcher->stats();
    return o.Pending().empty() && st.in_flight == 0 && st.waiting == 0;
  }));

  EXPECT_EQ(receiver.Count("/late"), 0) << "sent after the 410";
  EXPECT_EQ(receiver.Count("/fine"), 1);
  EXPECT_FALSE(outbox_.Status("gen-a").has_value()) << "no attempt made";
  EXPECT_THAT(hooks_.Attempts(), ElementsAre("delivered"));
  EXPECT_TRUE(outbox_.Retries().empty());
}

TEST_F(DispatcherTest, RedirectIsAFailureAndIsNotFollowed) {
  Receiver receiver(
      [](const httplib::Request& req, httplib::Response& res, int) {
        if (req.path == "/moved") {
          res.set_redirect("/elsewhere", 301);
        } else {
          Status(res, 200);
        }
      });
  DispatcherOptions o = Options();
  o.retry_schedule = {};  // one attempt
  auto dispatcher = Start(std::move(o));
  Enqueue("gen-r", 5, receiver.Url("/moved"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-r"));

  EXPECT_EQ(receiver.Count("/moved"), 1);
  EXPECT_EQ(receiver.Count("/elsewhere"), 0);
  const v1::WebhookStatus s = *outbox_.Status("gen-r");
  EXPECT_EQ(s.last_http_status(), 301);
  EXPECT_EQ(s.last_result(),
            "redirect not followed (http 301); gave up after 1 attempt");
  EXPECT_TRUE(outbox_.Pending().empty());
  EXPECT_THAT(hooks_.Attempts(), ElementsAre("redirect"));
  EXPECT_THAT(hooks_.Settled(), ElementsAre("gave_up"));
}

TEST_F(DispatcherTest, GivesUpAfterTheLastScheduledAttempt) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 500);
  });
  auto dispatcher = Start(Options());  // 50ms, 50ms: three attempts
  Enqueue("gen-x", 2, receiver.Url("/down"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-x"));
  EXPECT_EQ(receiver.Count("/down"), 3);
  const v1::WebhookStatus s = *outbox_.Status("gen-x");
  EXPECT_EQ(s.attempts(), 3);
  EXPECT_EQ(s.last_result(), "http 500; gave up after 3 attempts");
  EXPECT_TRUE(outbox_.Pending().empty());
  EXPECT_THAT(hooks_.Settled(), ElementsAre("gave_up"));
}

TEST_F(DispatcherTest, StatusIsNotSettledWhileRetrying) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 503);
  });
  DispatcherOptions o = Options();
  o.retry_schedule = {absl::Hours(1)};
  auto dispatcher = Start(std::move(o));
  Enqueue("gen-w", 1, receiver.Url("/busy"));
  dispatcher->Kick();
  ASSERT_TRUE(outbox_.WaitFor(
      [](FakeOutbox& o) { return o.Status("gen-w").has_value(); }));
  const v1::WebhookStatus s = *outbox_.Status("gen-w");
  EXPECT_EQ(s.attempts(), 1);
  EXPECT_EQ(s.last_http_status(), 503);
  EXPECT_EQ(s.last_result(), "http 503, retrying in 1h");
  EXPECT_FALSE(s.settled());
  ASSERT_EQ(outbox_.Pending().size(), 1u);
  EXPECT_EQ(outbox_.Pending()[0].attempts, 1);
  EXPECT_TRUE(hooks_.Settled().empty());
}

TEST_F(DispatcherTest, RetryAfterIsHonouredWhenLonger) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int n) {
    Status(res, n == 1 ? 503 : 200);
    if (n == 1) res.set_header("Retry-After", "2");
  });
  auto dispatcher = Start(Options());  // the schedule says 50ms
  Enqueue("gen-ra", 1, receiver.Url("/slow-down"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-ra"));
  const std::vector<FakeOutbox::RetryCall> retries = outbox_.Retries();
  ASSERT_EQ(retries.size(), 1u);
  EXPECT_GE(retries[0].next_attempt - retries[0].called,
            absl::Seconds(2) - absl::Milliseconds(50));
  const std::vector<Receiver::Seen> seen = receiver.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_GE(seen[1].at - seen[0].at, absl::Seconds(2) - absl::Milliseconds(50));
}

TEST_F(DispatcherTest, RetryAfterAsAnHttpDate) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int n) {
    Status(res, n == 1 ? 429 : 200);
    if (n == 1) {
      res.set_header("Retry-After",
                     absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT",
                                      absl::Now() + absl::Seconds(4),
                                      absl::UTCTimeZone()));
    }
  });
  auto dispatcher = Start(Options());
  Enqueue("gen-rd", 1, receiver.Url("/later"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-rd"));
  const std::vector<FakeOutbox::RetryCall> retries = outbox_.Retries();
  ASSERT_EQ(retries.size(), 1u);
  // Whole seconds on the wire: at least 3 of the 4.
  EXPECT_GE(retries[0].next_attempt - retries[0].called, absl::Seconds(2));
  EXPECT_THAT(hooks_.Attempts(), ElementsAre("http_4xx", "delivered"));
}

TEST_F(DispatcherTest, AShorterRetryAfterDoesNotShortenTheSchedule) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 503);
    res.set_header("Retry-After", "1");
  });
  DispatcherOptions o = Options();
  o.retry_schedule = {absl::Minutes(10)};
  auto dispatcher = Start(std::move(o));
  Enqueue("gen-rs", 1, receiver.Url("/x"));
  dispatcher->Kick();
  ASSERT_TRUE(
      outbox_.WaitFor([](FakeOutbox& o) { return !o.Retries().empty(); }));
  const FakeOutbox::RetryCall r = outbox_.Retries()[0];
  EXPECT_GE(r.next_attempt - r.called, absl::Minutes(10) - absl::Seconds(1));
}

TEST_F(DispatcherTest, PerHostBoundAndASlowHostDoesNotHoldUpOthers) {
  Receiver slow([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  Receiver fast([](const httplib::Request&, httplib::Response& res,
                   int) { Status(res, 200); },
                "127.0.0.2");
  slow.Close();
  DispatcherOptions o = Options();
  o.max_per_host = 2;
  o.max_in_flight = 4;
  o.timeout = absl::Seconds(60);  // the slow host never times out here
  auto dispatcher = Start(std::move(o));
  // The slow host's backlog is older than the fast host's deliveries and
  // larger than what one host may keep waiting here (a quarter of 8 per
  // slot).
  constexpr int kSlow = 40;
  for (int i = 0; i < kSlow; ++i) {
    Enqueue(absl::StrCat("slow-", i), 1, slow.Url("/s"));
  }
  for (int i = 0; i < 3; ++i) {
    Enqueue(absl::StrCat("fast-", i), 1, fast.Url("/f"));
  }
  dispatcher->Kick();
  ASSERT_TRUE(slow.WaitInside(2));
  // The fast host gets all its deliveries while the slow one is stuck.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Settled(absl::StrCat("fast-", i))) << i;
  }
  EXPECT_EQ(fast.Count("/f"), 3);
  EXPECT_EQ(slow.inside(), 2);
  EXPECT_EQ(dispatcher->stats().in_flight, 2);
  // Part of the slow backlog went back to the outbox, no attempt counted.
  bool handed_back = false;
  for (const FakeOutbox::RetryCall& r : outbox_.Retries()) {
    EXPECT_EQ(r.attempts, 0);
    handed_back = true;
  }
  EXPECT_TRUE(handed_back);
  slow.Release();
  for (int i = 0; i < kSlow; ++i) {
    ASSERT_TRUE(Settled(absl::StrCat("slow-", i))) << i;
  }
  EXPECT_EQ(slow.Count("/s"), kSlow);
  EXPECT_EQ(slow.max_inside(), 2);
  EXPECT_LE(fast.max_inside(), 2);
  for (int i = 0; i < kSlow; ++i) {
    EXPECT_EQ(outbox_.Status(absl::StrCat("slow-", i))->attempts(), 1) << i;
  }
}

TEST_F(DispatcherTest, AddressIsCheckedAtDeliveryTime) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  DispatcherOptions o = Options();
  o.allow_insecure = false;
  o.retry_schedule = {};
  auto dispatcher = Start(std::move(o));
  // As if the edge check had passed and DNS then changed its answer.
  Enqueue("gen-ip", 1, absl::StrCat("https://127.0.0.1:", receiver.port()));
  Enqueue("gen-name", 1, absl::StrCat("https://localhost:", receiver.port()));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-ip"));
  ASSERT_TRUE(Settled("gen-name"));
  EXPECT_TRUE(receiver.seen().empty());
  const v1::WebhookStatus ip = *outbox_.Status("gen-ip");
  EXPECT_EQ(ip.last_http_status(), 0);
  EXPECT_THAT(ip.last_result(),
              HasSubstr("address refused: 127.0.0.1 is a loopback address"));
  EXPECT_THAT(outbox_.Status("gen-name")->last_result(),
              HasSubstr("address refused"));
  EXPECT_THAT(hooks_.Attempts(),
              ElementsAre("address_refused", "address_refused"));
}

TEST_F(DispatcherTest, PlainHttpIsRefusedUnlessInsecure) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  DispatcherOptions o = Options();
  o.allow_insecure = false;
  auto dispatcher = Start(std::move(o));
  Enqueue("gen-http", 1, receiver.Url("/h"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-http"));
  EXPECT_TRUE(receiver.seen().empty());
  // A URL that can never be valid is not retried.
  EXPECT_EQ(outbox_.Status("gen-http")->attempts(), 1);
  EXPECT_THAT(outbox_.Status("gen-http")->last_result(), HasSubstr("https"));
  EXPECT_THAT(hooks_.Attempts(), ElementsAre("invalid_url"));
}

TEST_F(DispatcherTest, KickStartsADeliveryWithoutWaitingForThePoll) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  DispatcherOptions o = Options();
  o.poll_interval = absl::Hours(1);
  auto dispatcher = Start(std::move(o));
  absl::SleepFor(absl::Milliseconds(100));  // the first (empty) claim is done
  Enqueue("gen-k", 1, receiver.Url("/k"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-k"));
  EXPECT_EQ(receiver.Count("/k"), 1);
}

TEST_F(DispatcherTest, SecretLookupFailureIsRetriedAndNeverShown) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  DispatcherOptions o = Options();
  auto calls = std::make_shared<std::atomic<int>>(0);
  o.secret_for =
      [calls](const std::string& tenant) -> absl::StatusOr<std::string> {
    if (++*calls == 1) {
      return absl::NotFoundError(absl::StrCat("no key of tenant ", tenant));
    }
    return Secret();
  };
  auto dispatcher = Start(std::move(o));
  Enqueue("gen-s", 1, receiver.Url("/s"));
  dispatcher->Kick();
  ASSERT_TRUE(Settled("gen-s"));
  EXPECT_EQ(receiver.Count("/s"), 1);
  EXPECT_THAT(hooks_.Attempts(), ElementsAre("no_secret", "delivered"));
  EXPECT_EQ(outbox_.Status("gen-s")->attempts(), 2);
  EXPECT_THAT(outbox_.Status("gen-s")->last_result(), Not(HasSubstr("SECRET")));
}

TEST_F(DispatcherTest, StopAbandonsInFlightAndTheLeaseBringsItBack) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  receiver.Close();
  auto first = Start(Options());
  Enqueue("gen-z", 9, receiver.Url("/z"));
  first->Kick();
  ASSERT_TRUE(receiver.WaitInside(1));
  first->Stop();  // returns while the receiver still holds the request
  EXPECT_EQ(receiver.inside(), 1);
  std::vector<store::Delivery> pending = outbox_.Pending();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].attempts, 0);
  EXPECT_EQ(pending[0].owner, "replica-a");
  EXPECT_GT(pending[0].lease_until, absl::Now());
  receiver.Release();

  // The lease runs out; another replica delivers it, with the same id.
  outbox_.ExpireLeases();
  DispatcherOptions o = Options();
  o.owner = "replica-b";
  auto second = Start(std::move(o));
  ASSERT_TRUE(Settled("gen-z"));
  const std::vector<Receiver::Seen> seen = receiver.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].id, "gen-z.9");
  EXPECT_EQ(seen[1].id, "gen-z.9");
  EXPECT_TRUE(outbox_.Pending().empty());
}

TEST_F(DispatcherTest, StopHandsBackDeliveriesThatNeverStarted) {
  Receiver receiver([](const httplib::Request&, httplib::Response& res, int) {
    Status(res, 200);
  });
  receiver.Close();
  DispatcherOptions o = Options();
  o.max_per_host = 1;
  auto dispatcher = Start(std::move(o));
  Enqueue("gen-1", 1, receiver.Url("/q"));
  Enqueue("gen-2", 1, receiver.Url("/q"));
  dispatcher->Kick();
  ASSERT_TRUE(receiver.WaitInside(1));
  ASSERT_TRUE(outbox_.WaitFor(
      [&](FakeOutbox&) { return dispatcher->stats().waiting == 1; }));
  dispatcher->Stop();
  receiver.Release();
  int handed_back = 0;
  for (const store::Delivery& d : outbox_.Pending()) {
    if (d.lease_until <= absl::Now()) ++handed_back;
    EXPECT_EQ(d.attempts, 0);
  }
  EXPECT_EQ(handed_back, 1);  // the waiting one; the in-flight one keeps its
                              // lease until it expires
}

TEST(DispatcherCreateTest, RefusesIncompleteOptions) {
  FakeOutbox outbox;
  DispatcherOptions o;
  o.secret_for = [](const std::string&) -> absl::StatusOr<std::string> {
    return Secret();
  };
  EXPECT_EQ(Dispatcher::Create(&outbox, o).status().code(),
            absl::StatusCode::kInvalidArgument);  // no owner
  o.owner = "r";
  o.max_per_host = 0;
  EXPECT_EQ(Dispatcher::Create(&outbox, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.max_per_host = 1;
  o.secret_for = nullptr;
  EXPECT_EQ(Dispatcher::Create(&outbox, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace videogen::webhooks
