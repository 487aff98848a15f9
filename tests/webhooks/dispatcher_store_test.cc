// The whole delivery path against the real stores: a change written with
// Store::Update and its DeliveriesFor outbox, delivered by the Dispatcher to
// a loopback receiver, the outcome visible through Store::Get. Runs against
// MemoryStore and SqliteStore; SQLite also across a reopen.
#include <httplib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "server/store/memory_store.h"
#include "server/store/sqlite_store.h"
#include "server/util/proto_time.h"
#include "server/webhooks/deliveries.h"
#include "server/webhooks/dispatcher.h"
#include "server/webhooks/signature.h"

namespace videogen::webhooks {
namespace {

const std::string& Secret() {
  static const std::string* s = new std::string(
      absl::StrCat("whsec_", absl::Base64Escape("store-test-key-0123456789")));
  return *s;
}

// Answers each request with the next status of `statuses` (the last one
// repeats) and keeps what it received.
class Receiver {
 public:
  struct Seen {
    std::string id, timestamp, signature, body;
  };

  explicit Receiver(std::vector<int> statuses)
      : statuses_(std::move(statuses)) {
    server_.Post("/hook", [this](const httplib::Request& req,
                                 httplib::Response& res) {
      absl::MutexLock lock(&mu_);
      seen_.push_back({req.get_header_value("webhook-id"),
                       req.get_header_value("webhook-timestamp"),
                       req.get_header_value("webhook-signature"), req.body});
      const size_t i = std::min(seen_.size(), statuses_.size()) - 1;
      res.status = statuses_[i];
      res.set_content("", "text/plain");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~Receiver() {
    server_.stop();
    thread_.join();
  }
  std::string Url() const {
    return absl::StrCat("http://127.0.0.1:", port_, "/hook");
  }
  std::vector<Seen> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  const std::vector<int> statuses_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
};

class DispatcherStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/webhooks_store_",
                        ::testing::UnitTest::GetInstance()
                            ->current_test_info()
                            ->test_case_name(),
                        "_", getpid(), "_", counter_++);
    std::filesystem::remove_all(dir_);
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Open() {
    if (GetParam() == "memory") {
      store_ = std::make_unique<store::MemoryStore>();
      return;
    }
    absl::StatusOr<std::unique_ptr<store::SqliteStore>> s =
        store::SqliteStore::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }

  std::unique_ptr<Dispatcher> Start() {
    DispatcherOptions o;
    o.owner = "replica-1";
    o.allow_insecure = true;
    o.secret_for = [](const std::string&) -> absl::StatusOr<std::string> {
      return Secret();
    };
    o.retry_schedule = {absl::Milliseconds(50), absl::Milliseconds(50)};
    o.jitter = 0;
    o.poll_interval = absl::Milliseconds(50);
    o.hooks.on_store_error = [](std::string_view op, const absl::Status& s) {
      ADD_FAILURE() << op << ": " << s;
    };
    absl::StatusOr<std::unique_ptr<Dispatcher>> d =
        Dispatcher::Create(store_.get(), std::move(o));
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *std::move(d) : nullptr;
  }

  // Inserts a QUEUED generation that wants `states` delivered to `url`.
  store::Record Insert(const std::string& id, const std::string& url,
                       std::vector<v1::Generation::State> states = {}) {
    store::Record r;
    v1::Generation& g = r.generation;
    g.set_id(id);
    g.set_tenant("acme");
    g.set_state(v1::Generation::STATE_QUEUED);
    g.set_revision(1);
    g.mutable_request()->set_prompt("a fox in the snow");
    g.mutable_request()->set_webhook_url(url);
    for (auto s : states) g.mutable_request()->add_webhook_states(s);
    *g.mutable_create_time() = util::ToTimestamp(absl::Now());
    *g.mutable_update_time() = g.create_time();
    EXPECT_TRUE(store_->Insert(r, store::Admission{}, nullptr).ok());
    r.version = 1;
    return r;
  }

  // Moves it to `state` (next revision) and writes its outbox with it.
  void Advance(store::Record& r, v1::Generation::State state) {
    v1::Generation& g = r.generation;
    g.set_state(state);
    g.set_revision(g.revision() + 1);
    g.set_done(state >= v1::Generation::STATE_COMPLETED);
    *g.mutable_update_time() = util::ToTimestamp(absl::Now());
    v1::GenerationEvent event;
    event.set_type(v1::GenerationEvent::TYPE_UPDATE);
    *event.mutable_generation() = g;
    *event.mutable_observe_time() = g.update_time();
    ++r.version;
    ASSERT_TRUE(store_->Update(r, DeliveriesFor(g, event)).ok());
  }

  v1::WebhookStatus StatusOf(const std::string& id) {
    absl::StatusOr<std::optional<store::Record>> r = store_->Get(id);
    if (!r.ok() || !r->has_value()) return {};
    return (*r)->generation.webhook_status();
  }

  bool WaitSettled(const std::string& id) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      if (StatusOf(id).settled()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  int64_t Pending() {
    absl::StatusOr<std::pair<int64_t, absl::Time>> stats =
        store_->OutboxStats();
    return stats.ok() ? stats->first : -1;
  }

  static inline int counter_ = 0;
  std::string dir_;
  std::unique_ptr<store::Store> store_;
};

TEST_P(DispatcherStoreTest, TerminalEventIsDeliveredSignedAfterARetry) {
  Receiver receiver({503, 200});
  store::Record r = Insert("gen-e2e", receiver.Url());
  Advance(r, v1::Generation::STATE_GENERATING);  // not wanted: no delivery
  EXPECT_EQ(Pending(), 0);
  Advance(r, v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(Pending(), 1);
  auto dispatcher = Start();
  ASSERT_TRUE(WaitSettled("gen-e2e"));

  const std::vector<Receiver::Seen> seen = receiver.seen();
  ASSERT_EQ(seen.size(), 2u);
  for (const Receiver::Seen& s : seen) {
    EXPECT_EQ(s.id, "gen-e2e.3");
    EXPECT_TRUE(
        Verify(Secret(), s.id, s.timestamp, s.body, s.signature, absl::Now())
            .ok());
    v1::GenerationEvent event;
    ASSERT_TRUE(
        google::protobuf::util::JsonStringToMessage(s.body, &event).ok());
    EXPECT_EQ(event.generation().state(), v1::Generation::STATE_COMPLETED);
    EXPECT_EQ(event.generation().revision(), 3);
  }
  const v1::WebhookStatus status = StatusOf("gen-e2e");
  EXPECT_EQ(status.attempts(), 2);
  EXPECT_EQ(status.last_http_status(), 200);
  EXPECT_EQ(status.last_result(), "delivered");
  EXPECT_EQ(Pending(), 0);
}

TEST_P(DispatcherStoreTest, GoneDropsTheGenerationsLaterEvents) {
  Receiver receiver({410});
  store::Record r = Insert(
      "gen-410", receiver.Url(),
      {v1::Generation::STATE_GENERATING, v1::Generation::STATE_COMPLETED});
  Advance(r, v1::Generation::STATE_GENERATING);
  Advance(r, v1::Generation::STATE_COMPLETED);
  EXPECT_EQ(Pending(), 2);
  auto dispatcher = Start();
  ASSERT_TRUE(WaitSettled("gen-410"));
  EXPECT_EQ(receiver.seen().size(), 1u);
  EXPECT_EQ(receiver.seen()[0].id, "gen-410.2");
  EXPECT_EQ(Pending(), 0);
  EXPECT_EQ(StatusOf("gen-410").last_result(),
            "gone (410): deliveries stopped");
}

// MemoryStore forgets everything by design; only SQLite is reopened.
class DispatcherSqliteTest : public DispatcherStoreTest {};

TEST_P(DispatcherSqliteTest, OutboxSurvivesAReopen) {
  Receiver receiver({200});
  store::Record r = Insert("gen-durable", receiver.Url());
  Advance(r, v1::Generation::STATE_FAILED);
  store_.reset();  // the process is gone before any attempt
  Open();
  EXPECT_EQ(Pending(), 1);
  auto dispatcher = Start();
  ASSERT_TRUE(WaitSettled("gen-durable"));
  ASSERT_EQ(receiver.seen().size(), 1u);
  EXPECT_EQ(receiver.seen()[0].id, "gen-durable.2");
  EXPECT_EQ(Pending(), 0);
}

INSTANTIATE_TEST_SUITE_P(Stores, DispatcherStoreTest,
                         ::testing::Values("memory", "sqlite"),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Stores, DispatcherSqliteTest,
                         ::testing::Values("sqlite"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace videogen::webhooks
