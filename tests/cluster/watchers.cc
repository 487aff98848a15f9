#include "tests/cluster/watchers.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "tests/cluster/harness.h"

namespace videogen::cluster {

using v1::GenerationEvent;

std::string CheckRevisions(const WatchRecord& r, int64_t first) {
  if (!r.finished) {
    return absl::StrCat(r.id, ": no terminal event after ", r.streams,
                        " streams");
  }
  if (r.revisions.empty() || r.revisions.front() != first) {
    return absl::StrCat(r.id, ": first revision ",
                        r.revisions.empty() ? -1 : r.revisions.front(),
                        ", want ", first);
  }
  for (size_t i = 1; i < r.revisions.size(); ++i) {
    if (r.revisions[i] != r.revisions[i - 1] + 1) {
      return absl::StrCat(r.id, ": revision ", r.revisions[i], " after ",
                          r.revisions[i - 1], " (event ", i, ")");
    }
  }
  return "";
}

// One logical watcher: a generation id and what it saw. `mu_` guards the
// record; at most one Stream of it is open at a time.
class WatcherSet::Watcher {
 public:
  Watcher(WatcherSet* set, std::string id, int index)
      : set_(set), index_(index) {
    record_.id = std::move(id);
  }

  void Open() {
    int64_t after;
    int stream;
    {
      absl::MutexLock lock(&mu_);
      after = record_.revisions.empty() ? 0 : record_.revisions.back();
      stream = record_.streams++;
    }
    set_->OpenStream(this, after, (index_ + stream) % set_->stubs_.size());
  }

  void OnEvent(const GenerationEvent& e, absl::Time now) {
    if (e.type() == GenerationEvent::TYPE_HEARTBEAT) return;
    bool first = false;
    {
      absl::MutexLock lock(&mu_);
      first = record_.revisions.empty();
      record_.revisions.push_back(e.generation().revision());
      if (e.type() == GenerationEvent::TYPE_UPDATE && e.has_observe_time()) {
        const absl::Time observed = absl::FromUnixNanos(
            google::protobuf::util::TimeUtil::TimestampToNanoseconds(
                e.observe_time()));
        record_.latency_us.push_back(absl::ToInt64Microseconds(now - observed));
      }
      if (e.generation().done()) record_.final_state = e.generation().state();
    }
    if (first) set_->attached_.fetch_add(1);
  }

  // The stream ended: finished, resumed later, or given up.
  void OnStreamDone(const grpc::Status& status, bool saw_terminal) {
    bool resume = false;
    {
      absl::MutexLock lock(&mu_);
      if (saw_terminal && status.ok()) {
        record_.finished = true;
      } else {
        record_.breaks.push_back(status.ok()
                                     ? "OK before a terminal event"
                                     : absl::StrCat(status.error_code(), ": ",
                                                    status.error_message()));
        resume = record_.streams < set_->max_streams_ && !saw_terminal;
      }
    }
    if (resume) {
      set_->resumes_.fetch_add(1);
      set_->ScheduleResume(this);
    } else {
      set_->finished_.fetch_add(1);
    }
  }

  WatchRecord record() {
    absl::MutexLock lock(&mu_);
    return record_;
  }

 private:
  WatcherSet* const set_;
  const int index_;
  absl::Mutex mu_;
  WatchRecord record_ ABSL_GUARDED_BY(mu_);
};

// One WatchGeneration call. gRPC serialises its reactions; it deletes
// itself after OnDone.
class WatcherSet::Stream : public grpc::ClientReadReactor<v1::GenerationEvent> {
 public:
  Stream(WatcherSet* set, Watcher* watcher, v1::VideoGeneration::Stub* stub,
         const std::string& id, int64_t after_revision)
      : set_(set), watcher_(watcher) {
    Authorize(&context_, set->api_key_);
    request_.set_id(id);
    request_.set_after_revision(after_revision);
    stub->async()->WatchGeneration(&context_, &request_, this);
  }

  // Separate from the constructor: the set registers the stream first.
  void Go() {
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    watcher_->OnEvent(event_, absl::Now());
    if (event_.generation().done() &&
        event_.type() != GenerationEvent::TYPE_HEARTBEAT) {
      terminal_ = true;
    }
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    watcher_->OnStreamDone(status, terminal_);
    set_->StreamClosed(this);
    delete this;
  }

  void Cancel() { context_.TryCancel(); }

 private:
  WatcherSet* const set_;
  Watcher* const watcher_;
  grpc::ClientContext context_;
  v1::WatchGenerationRequest request_;
  GenerationEvent event_;
  bool terminal_ = false;
};

WatcherSet::WatcherSet(std::vector<std::shared_ptr<grpc::Channel>> channels,
                       std::string api_key, absl::Duration backoff,
                       int max_streams_per_watcher)
    : channels_(std::move(channels)),
      api_key_(std::move(api_key)),
      backoff_(backoff),
      max_streams_(max_streams_per_watcher) {
  for (const auto& c : channels_) {
    stubs_.push_back(v1::VideoGeneration::NewStub(c));
  }
  resumer_ = std::thread([this] { ResumeLoop(); });
}

WatcherSet::~WatcherSet() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    for (Stream* s : live_) s->Cancel();
    auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return live_.empty();
    };
    mu_.AwaitWithTimeout(absl::Condition(&drained), absl::Seconds(30));
  }
  resumer_.join();
}

void WatcherSet::Add(const std::string& generation_id) {
  watchers_.push_back(std::make_unique<Watcher>(
      this, generation_id, static_cast<int>(watchers_.size())));
  watchers_.back()->Open();
}

void WatcherSet::OpenStream(Watcher* w, int64_t after_revision, size_t stub) {
  const std::string id = w->record().id;
  Stream* s = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) {
      finished_.fetch_add(1);
      return;
    }
    // Registered before it starts, so the destructor sees every stream;
    // started outside the lock, which its reactions take.
    s = new Stream(this, w, stubs_[stub].get(), id, after_revision);
    live_.insert(s);
  }
  s->Go();
}

void WatcherSet::StreamClosed(Stream* s) {
  absl::MutexLock lock(&mu_);
  live_.erase(s);
}

void WatcherSet::ScheduleResume(Watcher* w) {
  absl::MutexLock lock(&mu_);
  resume_.emplace_back(absl::Now() + backoff_, w);
}

void WatcherSet::ResumeLoop() {
  while (true) {
    std::vector<Watcher*> due;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      const absl::Time now = absl::Now();
      while (!resume_.empty() && resume_.front().first <= now) {
        due.push_back(resume_.front().second);
        resume_.pop_front();
      }
    }
    for (Watcher* w : due) w->Open();
    absl::SleepFor(absl::Milliseconds(10));
  }
}

bool WatcherSet::WaitAttached(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int64_t n = static_cast<int64_t>(watchers_.size());
  while (attached_.load() < n && finished_.load() < n) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return attached_.load() == n;
}

bool WatcherSet::WaitFinished(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int64_t n = static_cast<int64_t>(watchers_.size());
  while (finished_.load() < n) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

std::vector<WatchRecord> WatcherSet::Records() {
  std::vector<WatchRecord> out;
  for (auto& w : watchers_) out.push_back(w->record());
  return out;
}

}  // namespace videogen::cluster
