#include "server/http/sse.h"

#include "absl/strings/str_cat.h"
#include "server/http/json.h"
#include "server/http/status_http.h"
#include "server/http/strings.h"

namespace videogen::http {
namespace {

// Terminal ids remembered per firehose, to drop late duplicates.
constexpr size_t kEndedMemory = 1024;

std::string_view EventName(v1::GenerationEvent::Type type) {
  return type == v1::GenerationEvent::TYPE_SNAPSHOT ? "snapshot" : "update";
}

}  // namespace

std::string SseFrame(int64_t id, std::string_view event,
                     std::string_view data) {
  return absl::StrCat("id: ", id, "\nevent: ", Av(event), "\ndata: ", Av(data),
                      "\n\n");
}

std::string SseErrorFrame(const absl::Status& status) {
  return absl::StrCat("event: error\ndata: ", ErrorJson(status), "\n\n");
}

std::shared_ptr<const std::string> FrameCache::Frame(
    const core::EventPtr& event) {
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [e, frame] : ring_) {
      if (e == event) return frame;
    }
  }
  auto frame = std::make_shared<const std::string>(
      SseFrame(event->generation().revision(), EventName(event->type()),
               ToJson(*event)));
  absl::MutexLock lock(&mu_);
  ring_.emplace_back(event, frame);
  while (ring_.size() > capacity_) ring_.pop_front();
  return frame;
}

StreamSink::StreamSink(bool single, int64_t after_revision, size_t max_backlog)
    : single_(single), max_backlog_(max_backlog == 0 ? 1 : max_backlog) {
  // For a single stream the id is not known here; an empty key stands for
  // "the one generation".
  if (single_) last_[""] = after_revision;
}

bool StreamSink::IsDuplicateLocked(const v1::Generation& g) {
  if (single_) return g.revision() <= last_[""];
  if (ended_.count(g.id()) > 0) return true;
  auto it = last_.find(g.id());
  return it != last_.end() && g.revision() <= it->second;
}

void StreamSink::RememberLocked(const v1::Generation& g) {
  if (single_) {
    last_[""] = g.revision();
    if (g.done()) finished_ = true;
    return;
  }
  if (!g.done()) {
    last_[g.id()] = g.revision();
    return;
  }
  last_.erase(g.id());
  ended_.insert(g.id());
  ended_order_.push_back(g.id());
  if (ended_order_.size() > kEndedMemory) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

void StreamSink::WakeLocked() {
  // wake_ only posts to an executor: no callbacks into the tracker, no
  // blocking, so calling it under mu_ (and the tracker's locks) is safe.
  if (wake_ && !wake_armed_) {
    wake_armed_ = true;
    wake_();
  }
}

void StreamSink::OnEvent(core::EventPtr event) {
  if (event == nullptr ||
      event->type() == v1::GenerationEvent::TYPE_HEARTBEAT) {
    return;  // the stream sends its own heartbeats
  }
  absl::MutexLock lock(&mu_);
  if (closed_ || overflowed_ || (single_ && finished_)) return;
  const v1::Generation& g = event->generation();
  if (IsDuplicateLocked(g)) return;
  if (backlog_.size() >= limit_) {
    // The client stopped reading: free the backlog now, end the stream.
    overflowed_ = true;
    backlog_.clear();
    // Wake even if a wake-up is pending: that one may have run already and
    // found a write stuck in flight, and the stream must learn of the
    // overflow now to unsubscribe (not when the stuck write ends).
    wake_armed_ = false;
    WakeLocked();
    return;
  }
  RememberLocked(g);
  if (single_) event = types_.Type(std::move(event));  // g is not used below
  backlog_.push_back(std::move(event));
  if (backlog_.size() > high_water_) high_water_ = backlog_.size();
  WakeLocked();
}

void StreamSink::Start(std::function<void()> wake) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  wake_ = std::move(wake);
  wake_armed_ = false;
  limit_ = backlog_.size() + max_backlog_;
  if (!backlog_.empty() || overflowed_ || finished_) WakeLocked();
}

void StreamSink::MarkFinished() {
  absl::MutexLock lock(&mu_);
  finished_ = true;
  WakeLocked();
}

StreamSink::Batch StreamSink::Take(size_t max_events) {
  Batch batch;
  absl::MutexLock lock(&mu_);
  wake_armed_ = false;
  if (overflowed_) {
    batch.overflowed = true;
    return batch;
  }
  while (!backlog_.empty() && batch.events.size() < max_events) {
    batch.events.push_back(std::move(backlog_.front()));
    backlog_.pop_front();
  }
  if (wake_) limit_ = max_backlog_;
  batch.done = finished_ && backlog_.empty();
  return batch;
}

bool StreamSink::overflowed() {
  absl::MutexLock lock(&mu_);
  return overflowed_;
}

void StreamSink::Close() {
  std::function<void()> wake;  // destroyed outside the lock
  std::deque<core::EventPtr> backlog;
  absl::MutexLock lock(&mu_);
  closed_ = true;
  wake.swap(wake_);
  backlog.swap(backlog_);
}

bool StreamSink::closed() {
  absl::MutexLock lock(&mu_);
  return closed_;
}

bool StreamSink::AttachSubscription(uint64_t id) {
  absl::MutexLock lock(&mu_);
  types_.Subscribed();
  if (closed_) return false;
  subscription_ = id;
  return true;
}

uint64_t StreamSink::TakeSubscription() {
  absl::MutexLock lock(&mu_);
  uint64_t id = subscription_;
  subscription_ = 0;
  return id;
}

size_t StreamSink::high_water() {
  absl::MutexLock lock(&mu_);
  return high_water_;
}

}  // namespace videogen::http
