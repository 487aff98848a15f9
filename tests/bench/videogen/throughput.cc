#include "tests/bench/videogen/throughput.h"

#include <curl/curl.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "tests/bench/videogen/bare_server.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::bench {
namespace {

std::atomic<int64_t> request_counter{0};

v1::GenerateRequest BenchRequest() {
  v1::GenerateRequest r;
  // Unique keys, as well-behaved clients send them.
  r.set_request_id(absl::StrCat("bench-", getpid(), "-", ++request_counter));
  r.set_prompt(kPrompt);
  r.set_duration_seconds(5);
  return r;
}

// Shared tally of a load run. Thread-safe. Calls that record from gRPC
// threads share ownership of it (shared_ptr): Wait returns as soon as the
// last call has recorded, while that call's thread may still be unlocking
// mu_, so the waiter must not destroy the tally under it.
class Tally {
 public:
  Tally(int slots, absl::Time deadline) : live_(slots), deadline_(deadline) {}

  // Records one call; returns whether the slot should start another.
  bool Record(const grpc::Status& status, absl::Duration took) {
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      ++result_.ok;
      result_.latency_us.push_back(absl::ToInt64Microseconds(took));
    } else {
      ++result_.errors;
      if (result_.first_error.empty()) {
        result_.first_error = absl::StrCat("code ", status.error_code(), ": ",
                                           status.error_message());
      }
    }
    if (absl::Now() < deadline_) return true;
    --live_;
    return false;
  }

  LoadResult Wait(absl::Time start) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* live) { return *live == 0; }, &live_));
    result_.elapsed = absl::Now() - start;
    return std::move(result_);
  }

 private:
  absl::Mutex mu_;
  int live_ ABSL_GUARDED_BY(mu_);
  const absl::Time deadline_;
  LoadResult result_ ABSL_GUARDED_BY(mu_);
};

// Ends one call of a load: deletes it (its context and channel reference
// with it), then records its result and starts the next call of the slot.
// Takes copies: nothing of `call` is used after it is deleted.
template <typename Call>
void Finish(Call* call, v1::VideoGeneration::Stub* stub,
            std::shared_ptr<Tally> tally, const grpc::Status& status,
            absl::Duration took) {
  delete call;
  if (tally->Record(status, took)) new Call(stub, std::move(tally));
}

// One CreateGeneration call; on its end deletes itself (a reactor may be
// deleted in OnDone, a context in its own unary callback may not), then
// records and starts the next one. Deleting first matters: the last record
// lets the load's caller return and drop its channel, and a context deleted
// after that held the last reference, so the channel was destroyed on
// gRPC's own callback thread (the bench crashed at the end of the
// throughput scenario in 2 of 4 suites). gRPC calls OnDone once, on one of
// its threads.
class CreateCall : public grpc::ClientUnaryReactor {
 public:
  CreateCall(v1::VideoGeneration::Stub* stub, std::shared_ptr<Tally> tally)
      : stub_(stub), tally_(std::move(tally)), request_(BenchRequest()) {
    started_ = absl::Now();
    stub_->async()->CreateGeneration(&context_, &request_, &response_, this);
    StartCall();
  }

  void OnDone(const grpc::Status& status) override {
    const grpc::Status s = status;
    const absl::Duration took = absl::Now() - started_;
    Finish(this, stub_, tally_, s, took);
  }

 private:
  v1::VideoGeneration::Stub* const stub_;
  const std::shared_ptr<Tally> tally_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::Generation response_;
  absl::Time started_;
};

// One Generate stream; on its end deletes itself, then records and starts
// the next one (in that order, as CreateCall). gRPC serialises its
// callbacks, so its fields need no lock.
class GenerateCall : public grpc::ClientReadReactor<v1::GenerationEvent> {
 public:
  GenerateCall(v1::VideoGeneration::Stub* stub, std::shared_ptr<Tally> tally)
      : stub_(stub), tally_(std::move(tally)), request_(BenchRequest()) {
    started_ = absl::Now();
    stub_->async()->Generate(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    terminal_ = event_.generation().done();
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    grpc::Status s = status;
    if (s.ok() && !terminal_) {
      s = grpc::Status(grpc::StatusCode::INTERNAL, "no terminal event");
    }
    Finish(this, stub_, tally_, s, absl::Now() - started_);
  }

 private:
  v1::VideoGeneration::Stub* const stub_;
  const std::shared_ptr<Tally> tally_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerationEvent event_;
  absl::Time started_;
  bool terminal_ = false;
};

size_t Discard(char*, size_t size, size_t n, void*) { return size * n; }

}  // namespace

LoadResult RunCreateLoad(const std::shared_ptr<grpc::Channel>& channel,
                         int concurrency, absl::Duration duration) {
  auto stub = v1::VideoGeneration::NewStub(channel);
  absl::Time start = absl::Now();
  auto tally = std::make_shared<Tally>(concurrency, start + duration);
  for (int i = 0; i < concurrency; ++i) new CreateCall(stub.get(), tally);
  return tally->Wait(start);
}

LoadResult RunGenerateLoad(const std::shared_ptr<grpc::Channel>& channel,
                           int concurrency, absl::Duration duration) {
  auto stub = v1::VideoGeneration::NewStub(channel);
  absl::Time start = absl::Now();
  auto tally = std::make_shared<Tally>(concurrency, start + duration);
  for (int i = 0; i < concurrency; ++i) new GenerateCall(stub.get(), tally);
  return tally->Wait(start);
}

LoadResult RunDirectHttpLoad(const std::string& base_url,
                             const std::string& key, int concurrency,
                             absl::Duration duration) {
  const std::string url =
      absl::StrCat(base_url, "/v2/generate/video/kling/generation");
  // The body videogen sends for BenchRequest().
  const std::string body = nlohmann::json{
      {"model", "klingai/v2-master-text-to-video"},
      {"prompt", kPrompt},
      {"aspect_ratio", "16:9"},
      {"duration", "5"}}.dump();
  absl::Time start = absl::Now();
  Tally tally(concurrency, start + duration);
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      CURL* curl = curl_easy_init();
      curl_slist* headers = nullptr;
      headers = curl_slist_append(
          headers, absl::StrCat("Authorization: Bearer ", key).c_str());
      headers = curl_slist_append(headers, "Content-Type: application/json");
      curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
      curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
      curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Discard);
      curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
      bool more = true;
      for (int64_t i = 0; more; ++i) {
        std::string id =
            absl::StrCat("X-Client-Request-Id: direct-", t, "-", i);
        curl_slist* with_id = curl_slist_append(nullptr, id.c_str());
        for (curl_slist* h = headers; h != nullptr; h = h->next) {
          with_id = curl_slist_append(with_id, h->data);
        }
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, with_id);
        absl::Time begin = absl::Now();
        CURLcode rc = curl_easy_perform(curl);
        long code = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
        grpc::Status status =
            rc == CURLE_OK && code / 100 == 2
                ? grpc::Status::OK
                : grpc::Status(grpc::StatusCode::UNKNOWN,
                               absl::StrCat("curl ", rc, " http ", code));
        more = tally.Record(status, absl::Now() - begin);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_slist_free_all(with_id);
      }
      curl_slist_free_all(headers);
      curl_easy_cleanup(curl);
    });
  }
  LoadResult r = tally.Wait(start);
  for (auto& t : threads) t.join();
  return r;
}

}  // namespace videogen::bench
