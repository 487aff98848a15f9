#include "tests/bench/videogen/watchers.h"

#include <algorithm>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"

namespace videogen::bench {

using v1::Generation;
using v1::GenerationEvent;

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, int id) {
  grpc::ChannelArguments args;
  // Distinct args and a local subchannel pool: one connection per channel.
  args.SetInt("grpc.channel_id", id);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   args);
}

// One WatchGeneration stream. gRPC serialises its callbacks, so its fields
// need no lock; the pool reads them only after OnDone.
class WatcherPool::Watcher : public grpc::ClientReadReactor<GenerationEvent> {
 public:
  Watcher(WatcherPool* pool, v1::VideoGeneration::Stub* stub, std::string id)
      : pool_(pool) {
    request_.set_id(std::move(id));
    stub->async()->WatchGeneration(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    const absl::Time now = absl::Now();
    if (events_++ == 0) {
      late_ = event_.generation().state() != Generation::STATE_QUEUED;
      if (pool_->attached_.fetch_add(1) + 1 ==
          static_cast<int64_t>(pool_->watchers_.size())) {
        pool_->all_attached_ns_.store(absl::ToUnixNanos(now));
      }
    }
    if (event_.type() == GenerationEvent::TYPE_UPDATE) {
      absl::Time observed = absl::FromUnixNanos(
          google::protobuf::util::TimeUtil::TimestampToNanoseconds(
              event_.observe_time()));
      latency_us_.push_back(absl::ToInt64Microseconds(now - observed));
      if (changes_.size() < kChangesPerStream) {
        changes_.push_back(Change{event_.generation().id(),
                                  absl::ToUnixNanos(observed),
                                  event_.generation().done()});
      }
      update_bytes_ += static_cast<int64_t>(event_.ByteSizeLong());
    }
    terminal_ = event_.generation().done();
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    status_ = status;
    pool_->done_.fetch_add(1);
  }

  void Cancel() { context_.TryCancel(); }

  WatcherPool* const pool_;
  grpc::ClientContext context_;
  v1::WatchGenerationRequest request_;
  GenerationEvent event_;
  grpc::Status status_;
  int64_t events_ = 0;
  int64_t update_bytes_ = 0;
  bool late_ = false;
  bool terminal_ = false;
  std::vector<int64_t> latency_us_;
  std::vector<Change> changes_;  // the first few UPDATEs, for the replay
};

WatcherPool::WatcherPool(std::string target, int streams_per_channel)
    : target_(std::move(target)),
      streams_per_channel_(std::max(1, streams_per_channel)) {}

WatcherPool::~WatcherPool() {
  if (done_.load() < static_cast<int64_t>(watchers_.size())) {
    WaitDone(absl::Seconds(10));
  }
}

void WatcherPool::Start(const std::vector<std::string>& ids, int n) {
  int channels = (n + streams_per_channel_ - 1) / streams_per_channel_;
  for (int c = 0; c < channels; ++c) {
    channels_.push_back(NewChannel(target_, c));
    stubs_.push_back(v1::VideoGeneration::NewStub(channels_.back()));
  }
  watchers_.reserve(n);
  start_ = absl::Now();
  // Reactors read watchers_.size() to spot the last attach, so the vector
  // is filled before any call starts.
  for (int i = 0; i < n; ++i) watchers_.push_back(nullptr);
  for (int i = 0; i < n; ++i) {
    watchers_[i] = std::make_unique<Watcher>(this, stubs_[i % channels].get(),
                                             ids[i % ids.size()]);
  }
}

bool WatcherPool::WaitAttached(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  const int64_t n = static_cast<int64_t>(watchers_.size());
  while (attached_.load() < n && done_.load() < n && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  return attached_.load() == n;
}

bool WatcherPool::WaitDone(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  const int64_t n = static_cast<int64_t>(watchers_.size());
  while (done_.load() < n && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (done_.load() == n) return true;
  for (auto& w : watchers_) w->Cancel();
  while (done_.load() < n) absl::SleepFor(absl::Milliseconds(10));
  return false;
}

WatchResult WatcherPool::Collect() {
  WatchResult r;
  r.streams = static_cast<int64_t>(watchers_.size());
  r.channels = static_cast<int64_t>(channels_.size());
  r.attached = attached_.load();
  r.attach_time = r.attached == r.streams
                      ? absl::FromUnixNanos(all_attached_ns_.load()) - start_
                      : absl::InfiniteDuration();
  r.min_updates = INT64_MAX;
  std::map<std::pair<std::string, int64_t>, Change> changes;
  for (auto& w : watchers_) {
    for (size_t i = 0; i < w->changes_.size(); ++i) {
      const Change& c = w->changes_[i];
      const int64_t us = w->latency_us_[i];
      auto [it, inserted] = changes.try_emplace({c.id, c.observe_ns}, c);
      Change& agg = it->second;
      agg.min_us = inserted ? us : std::min(agg.min_us, us);
      agg.max_us = std::max(agg.max_us, us);
      ++agg.receivers;
    }
    if (w->late_) ++r.late;
    if (w->status_.ok() && w->terminal_) {
      ++r.finished_ok;
    } else {
      ++r.errors;
      if (r.first_error.empty()) {
        r.first_error = w->status_.ok()
                            ? "stream ended OK before a terminal event"
                            : absl::StrCat("code ", w->status_.error_code(),
                                           ": ", w->status_.error_message());
      }
    }
    int64_t updates = static_cast<int64_t>(w->latency_us_.size());
    r.updates += updates;
    r.min_updates = std::min(r.min_updates, updates);
    r.update_bytes += w->update_bytes_;
    r.latency_us.insert(r.latency_us.end(), w->latency_us_.begin(),
                        w->latency_us_.end());
  }
  if (watchers_.empty()) r.min_updates = 0;
  for (auto& [key, c] : changes) r.changes.push_back(c);
  std::sort(r.changes.begin(), r.changes.end(),
            [](const Change& a, const Change& b) {
              return a.observe_ns < b.observe_ns;
            });
  return r;
}

}  // namespace videogen::bench
