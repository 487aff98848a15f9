// Issue 14's "Done when": a WatchGenerations client that stops reading
// while 100k events pass holds < 20 MB of server memory (before the fix:
// 325 MB), and its stream ends RESOURCE_EXHAUSTED. Minutes long: label
// `slow` (ctest -L slow). Set E2E_FIREHOSE_EVENTS to change the count.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/e2e/harness.h"

namespace videogen::e2e {
namespace {

using v1::Generation;
using v1::GenerationEvent;

int64_t EventTarget() {
  const char* env = std::getenv("E2E_FIREHOSE_EVENTS");
  return env != nullptr ? std::atoll(env) : 100000;
}

// Runs generations to completion (Generate) from `threads` threads until
// `stop`, so the server holds only a few in flight: what grows is the
// stalled stream, not the tracker's work.
class Load {
 public:
  Load(v1::VideoGeneration::Stub* stub, int threads) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, stub, t] {
        for (int i = 0; !stop_; ++i) {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::seconds(60));
          // A realistic prompt: events carry the request.
          v1::GenerateRequest req = SimpleRequest(
              absl::StrCat("load ", t, " ", i, " ", std::string(300, 'p')));
          auto reader = stub->Generate(&ctx, req);
          StreamResult r = ReadAll(reader.get());
          if (r.status.ok() && !r.events.empty() &&
              r.events.back().generation().done()) {
            ++created_;
          } else {
            ++failed_;
          }
        }
      });
    }
  }
  ~Load() { Stop(); }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  int64_t created() const { return created_; }
  int64_t failed() const { return failed_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> created_{0};
  std::atomic<int64_t> failed_{0};
  std::vector<std::thread> threads_;
};

// Reads a firehose on its own thread, counting non-heartbeat events.
class Counter {
 public:
  explicit Counter(v1::VideoGeneration::Stub* stub)
      : reader_(stub->WatchGenerations(&ctx_, v1::WatchGenerationsRequest())),
        thread_([this] {
          GenerationEvent e;
          while (reader_->Read(&e)) {
            if (e.type() != GenerationEvent::TYPE_HEARTBEAT) ++events_;
          }
        }) {}
  ~Counter() {
    ctx_.TryCancel();
    thread_.join();
    reader_->Finish();
  }
  int64_t events() const { return events_; }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<GenerationEvent>> reader_;
  std::atomic<int64_t> events_{0};
  std::thread thread_;
};

TEST(FirehoseSlowE2eTest, StalledFirehoseHoldsUnder20MbWhile100kEventsPass) {
  const int64_t target = EventTarget();
  Sim sim = StartSim({"--queued_for=10ms", "--generating_for=10ms"});
  Server server = StartServer(
      sim.url, {"--poll_initial_delay=10ms", "--poll_interval=10ms",
                "--upstream_rate_limit=0", "--max_outstanding_submits=32",
                "--heartbeat_interval=5s"});
  Counter counter(server.stub.get());

  // Warm up: allocator arenas, SQLite's page cache, gRPC buffers.
  {
    Load warmup(server.stub.get(), 8);
    while (counter.events() < 5000) absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Seconds(1));
  const int64_t baseline = server.process->RssBytes();
  const int64_t events_at_start = counter.events();

  // The stalled client: opened, never read until the end.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto stalled_stub = v1::VideoGeneration::NewStub(
      ChannelWithKey(server.address, server.admin_key, args));
  grpc::ClientContext stalled_ctx;
  auto stalled = stalled_stub->WatchGenerations(&stalled_ctx,
                                                v1::WatchGenerationsRequest());

  const absl::Time start = absl::Now();
  int64_t peak = baseline;
  {
    Load load(server.stub.get(), 16);
    while (counter.events() - events_at_start < target) {
      absl::SleepFor(absl::Milliseconds(250));
      peak = std::max(peak, server.process->RssBytes());
      ASSERT_LT(absl::Now() - start, absl::Minutes(12))
          << "only " << counter.events() - events_at_start << " events";
    }
    load.Stop();
    EXPECT_EQ(load.failed(), 0);
    std::cout << "[ info ] " << counter.events() - events_at_start
              << " events from " << load.created() << " generations in "
              << absl::FormatDuration(absl::Now() - start) << "\n";
  }
  peak = std::max(peak, server.process->RssBytes());
  std::cout << "[ info ] server RSS baseline " << baseline / 1024
            << " KiB, peak " << peak / 1024 << " KiB (+"
            << (peak - baseline) / 1024 << " KiB)\n";
  EXPECT_LT(peak - baseline, 20 << 20);

  int read = 0;
  GenerationEvent e;
  while (stalled->Read(&e)) ++read;
  grpc::Status status = stalled->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "open a new stream"))
      << status.error_message();
  EXPECT_LT(read, target);
}

}  // namespace
}  // namespace videogen::e2e
