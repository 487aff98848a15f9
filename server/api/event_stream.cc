#include "server/api/event_stream.h"

#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "server/api/metrics.h"
#include "server/api/status_map.h"

namespace videogen::api {
namespace {

// Time from the server observing a change to handing it to this stream.
void RecordFanout(const v1::GenerationEvent& event) {
  const absl::Time observed =
      absl::FromUnixSeconds(event.observe_time().seconds()) +
      absl::Nanoseconds(event.observe_time().nanos());
  Metrics::Global().Observe("videogen_fanout_latency_seconds", {},
                            absl::ToDoubleSeconds(absl::Now() - observed));
}

}  // namespace

EventStream::EventStream(Reactor* reactor, core::Tracker* tracker,
                         bool ends_on_terminal)
    : tracker_(tracker),
      ends_on_terminal_(ends_on_terminal),
      reactor_(reactor),
      last_activity_(absl::Now()) {}

void EventStream::OnEvent(core::EventPtr event) {
  {
    absl::MutexLock lock(&mu_);
    if (finish_.has_value() || done_) return;
    const std::string& id = event->generation().id();
    auto [it, inserted] = pending_.try_emplace(id, event);
    if (inserted) {
      order_.push_back(id);
    } else if (!it->second->generation().done()) {
      it->second = event;  // coalesce to the newest; keep a terminal one
    }
    if (ends_on_terminal_ && event->generation().done()) {
      finish_ = grpc::Status::OK;  // written after the terminal event
    }
  }
  Pump();
}

void EventStream::WatchOne(const std::string& id, int64_t after_revision) {
  {
    absl::MutexLock lock(&mu_);
    generation_id_ = id;
    last_revision_ = after_revision;
  }
  absl::StatusOr<core::Subscription> sub =
      tracker_->Subscribe(id, after_revision, shared_from_this());
  if (!sub.ok()) {
    Abort(ToGrpcStatus(sub.status()));
    return;
  }
  if (sub->finished) {
    // Terminal already: the snapshot (if newer) was queued; then end OK.
    {
      absl::MutexLock lock(&mu_);
      if (!finish_.has_value()) finish_ = grpc::Status::OK;
    }
    Pump();
    return;
  }
  SetSubscription(sub->id);
}

void EventStream::WatchAll(const core::Filter& filter) {
  core::Subscription sub = tracker_->SubscribeAll(filter, shared_from_this());
  SetSubscription(sub.id);
}

void EventStream::SetSubscription(uint64_t id) {
  bool already_done;
  {
    absl::MutexLock lock(&mu_);
    already_done = done_;
    if (!already_done) subscription_ = id;
  }
  // The RPC ended while we subscribed: nobody else will unsubscribe.
  if (already_done) tracker_->Unsubscribe(id);
}

void EventStream::MaybeHeartbeat(absl::Time now, absl::Duration interval) {
  {
    absl::MutexLock lock(&mu_);
    if (done_ || finish_.has_value() || in_flight_ != nullptr ||
        !pending_.empty() || now - last_activity_ < interval) {
      return;
    }
    auto beat = std::make_shared<v1::GenerationEvent>();
    beat->set_type(v1::GenerationEvent::TYPE_HEARTBEAT);
    beat->mutable_generation()->set_id(generation_id_);
    beat->mutable_generation()->set_revision(last_revision_);
    beat->mutable_observe_time()->set_seconds(absl::ToUnixSeconds(now));
    pending_.emplace("", std::move(beat));
    order_.push_back("");
  }
  Pump();
}

void EventStream::Abort(const grpc::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (finish_called_) return;
    pending_.clear();
    order_.clear();
    finish_ = status;
  }
  Pump();
}

void EventStream::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    in_flight_ = nullptr;
    last_activity_ = absl::Now();
    if (!ok && !finish_called_) {
      // The client is gone; nothing more can be written.
      pending_.clear();
      order_.clear();
      finish_ = grpc::Status(grpc::StatusCode::CANCELLED, "stream broken");
    }
  }
  Pump();
}

void EventStream::OnDone() {
  uint64_t subscription;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    reactor_ = nullptr;
    pending_.clear();
    order_.clear();
    subscription = subscription_;
    subscription_ = 0;
  }
  if (subscription != 0) tracker_->Unsubscribe(subscription);
}

EventStream::Action EventStream::NextLocked(const v1::GenerationEvent** msg,
                                            grpc::Status* status) {
  if (done_ || finish_called_ || in_flight_ != nullptr) return Action::kNone;
  if (!order_.empty()) {
    auto it = pending_.find(order_.front());
    order_.pop_front();
    in_flight_ = std::move(it->second);
    pending_.erase(it);
    if (in_flight_->type() != v1::GenerationEvent::TYPE_HEARTBEAT) {
      last_revision_ = in_flight_->generation().revision();
    }
    *msg = in_flight_.get();
    return Action::kWrite;
  }
  if (finish_.has_value()) {
    finish_called_ = true;
    *status = *finish_;
    return Action::kFinish;
  }
  return Action::kNone;
}

void EventStream::Pump() {
  const v1::GenerationEvent* msg = nullptr;
  grpc::Status status;
  Reactor* reactor;
  Action action;
  {
    absl::MutexLock lock(&mu_);
    action = NextLocked(&msg, &status);
    reactor = reactor_;
  }
  // Unlocked: gRPC may run OnWriteDone inline. The reactor stays alive: it
  // is freed only in OnDone, which cannot come before Finish.
  if (action == Action::kWrite) {
    if (msg->type() != v1::GenerationEvent::TYPE_HEARTBEAT) RecordFanout(*msg);
    reactor->StartWrite(msg);
  }
  if (action == Action::kFinish) reactor->Finish(status);
}

StreamReactor::StreamReactor(core::Tracker* tracker, StreamRegistry* registry,
                             bool ends_on_terminal)
    : stream_(std::make_shared<EventStream>(this, tracker, ends_on_terminal)),
      registry_(registry) {
  registered_ = registry_->Add(stream_);
  if (!registered_) {
    stream_->Abort(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "server is shutting down; retry on another "
                                "replica or after restart"));
  }
}

void StreamReactor::OnCancel() {
  stream_->Abort(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
}

void StreamReactor::OnDone() {
  if (registered_) registry_->Remove(stream_.get());
  stream_->OnDone();
  delete this;
}

StreamRegistry::StreamRegistry(absl::Duration heartbeat_interval)
    : interval_(heartbeat_interval),
      heartbeat_thread_([this] { HeartbeatLoop(); }) {}

StreamRegistry::~StreamRegistry() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  heartbeat_thread_.join();
}

bool StreamRegistry::Add(const std::shared_ptr<EventStream>& stream) {
  absl::MutexLock lock(&mu_);
  if (draining_) return false;
  streams_.emplace(stream.get(), stream);
  return true;
}

void StreamRegistry::Remove(EventStream* stream) {
  absl::MutexLock lock(&mu_);
  streams_.erase(stream);
}

int64_t StreamRegistry::size() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(streams_.size());
}

void StreamRegistry::Drain() {
  std::vector<std::shared_ptr<EventStream>> live;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    for (auto& [ptr, weak] : streams_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) {
    s->Abort(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "server is shutting down; resume with "
                          "after_revision set to the last revision seen"));
  }
}

bool StreamRegistry::AwaitEmpty(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto empty = [this]()
                   ABSL_SHARED_LOCKS_REQUIRED(mu_) { return streams_.empty(); };
  return mu_.AwaitWithTimeout(absl::Condition(&empty), timeout);
}

void StreamRegistry::HeartbeatLoop() {
  // Ticks at a quarter of the interval, so an idle stream beats within
  // 1.25 intervals.
  const absl::Duration tick = std::max(
      absl::Milliseconds(10), std::min(interval_ / 4, absl::Seconds(1)));
  while (true) {
    std::vector<std::shared_ptr<EventStream>> live;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]()
                          ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), tick)) return;
      live.reserve(streams_.size());
      for (auto& [ptr, weak] : streams_) {
        if (auto s = weak.lock()) live.push_back(std::move(s));
      }
    }
    const absl::Time now = absl::Now();
    for (auto& s : live) s->MaybeHeartbeat(now, interval_);
  }
}

}  // namespace videogen::api
