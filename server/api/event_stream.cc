#include "server/api/event_stream.h"

#include <array>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "server/api/metrics.h"
#include "server/api/status_map.h"
#include "server/util/thread_name.h"

namespace videogen::api {
namespace {

// Time from the server observing a change to handing it to this stream.
void RecordFanout(const v1::GenerationEvent& event) {
  if (!Metrics::Global().enabled()) return;  // once per write: stay cheap
  const absl::Time observed =
      absl::FromUnixSeconds(event.observe_time().seconds()) +
      absl::Nanoseconds(event.observe_time().nanos());
  Metrics::Global().Observe("videogen_fanout_latency_seconds", {},
                            absl::ToDoubleSeconds(absl::Now() - observed));
}

grpc::ByteBuffer Serialize(const v1::GenerationEvent& event) {
  grpc::ByteBuffer wire;
  bool own_buffer = false;
  grpc::SerializationTraits<v1::GenerationEvent>::Serialize(event, &wire,
                                                            &own_buffer);
  return wire;
}

// The wire form of the last few events handed out. The hub gives one event
// to every watcher of its generation in a row, so one serialization serves
// them all; a few slots keep streams that finish older writes on other
// threads from evicting the event being fanned out. A ByteBuffer copy only
// takes references to the same bytes. Thread-safe.
class WireCache {
 public:
  grpc::ByteBuffer Get(const core::EventPtr& event) {
    absl::MutexLock lock(&mu_);
    for (Slot& slot : slots_) {
      // The same object, still alive (an expired slot's control block cannot
      // be reused while the slot holds it, so the owner test is exact).
      if (slot.message == event.get() && !slot.event.owner_before(event) &&
          !event.owner_before(slot.event) && !slot.event.expired()) {
        return slot.wire;
      }
    }
    Slot& slot = slots_[next_++ % slots_.size()];
    slot.message = event.get();
    slot.event = event;
    slot.wire = Serialize(*event);
    return slot.wire;
  }

 private:
  struct Slot {
    const v1::GenerationEvent* message = nullptr;
    std::weak_ptr<const v1::GenerationEvent> event;
    grpc::ByteBuffer wire;
  };
  absl::Mutex mu_;
  std::array<Slot, 4> slots_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
};

grpc::ByteBuffer Wire(const core::EventPtr& event) {
  // Heartbeats are one per stream: nothing to share.
  if (event->type() == v1::GenerationEvent::TYPE_HEARTBEAT) {
    return Serialize(*event);
  }
  static auto* cache = new WireCache();
  return cache->Get(event);
}

}  // namespace

EventStream::EventStream(Reactor* reactor, Gateway* gateway,
                         bool ends_on_terminal, size_t max_backlog,
                         std::string method)
    : gateway_(gateway),
      ends_on_terminal_(ends_on_terminal),
      max_backlog_(max_backlog),
      method_(std::move(method)),
      reactor_(reactor),
      last_activity_ns_(absl::ToUnixNanos(absl::Now())) {}

void EventStream::OnEvent(core::EventPtr event) {
  Step step;
  {
    absl::MutexLock lock(&mu_);
    if (finish_.has_value() || done_) return;
    const v1::Generation& g = event->generation();
    const std::string& id = g.id();
    // Drop what is not newer than what this stream already has.
    auto newest = newest_.find(id);
    const int64_t have = ends_on_terminal_         ? last_revision_
                         : newest == newest_.end() ? 0
                                                   : newest->second;
    if (g.revision() <= have) return;
    if (ends_on_terminal_) {
      last_revision_ = g.revision();
    } else if (g.done()) {
      if (newest != newest_.end()) newest_.erase(newest);
    } else {
      newest_[id] = g.revision();
    }
    if (ends_on_terminal_) {
      // One generation: only its newest event waits (no map, no copy of
      // the id), and the terminal one ends the stream after it is written.
      if (g.done()) finish_ = grpc::Status::OK;
      next_ = types_.Type(std::move(event));  // g is not used below
    } else if (auto [it, inserted] = pending_.try_emplace(id, event);
               inserted) {
      order_.push_back(id);
    } else {
      it->second = std::move(event);  // coalesce to the newest
    }
    if (pending_.size() > max_backlog_) {
      ClearPendingLocked();
      newest_.clear();
      finish_ = grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("this stream fell more than ", max_backlog_,
                       " events behind because the client stopped reading; "
                       "open a new stream (it starts with fresh snapshots)"));
    }
    step = NextLocked();
  }
  Perform(step);
}

bool EventStream::HasPendingLocked() const {
  return next_ != nullptr || !order_.empty();
}

void EventStream::ClearPendingLocked() {
  next_ = nullptr;
  pending_.clear();
  order_.clear();
}

void EventStream::WatchOne(const auth::Principal& who, const std::string& id,
                           int64_t after_revision) {
  {
    absl::MutexLock lock(&mu_);
    generation_id_ = id;
    last_revision_ = after_revision;
  }
  absl::StatusOr<core::Subscription> sub =
      gateway_->Watch(who, id, after_revision, shared_from_this());
  if (!sub.ok()) {
    Abort(ToGrpcStatus(sub.status()));
    return;
  }
  if (sub->finished) {
    // Terminal already: the snapshot (if newer) was queued; then end OK.
    {
      absl::MutexLock lock(&mu_);
      types_.Subscribed();
      if (!finish_.has_value()) finish_ = grpc::Status::OK;
    }
    Pump();
    return;
  }
  SetSubscription(sub->id);
}

void EventStream::WatchAll(const auth::Principal& who,
                           const v1::WatchGenerationsRequest& request) {
  absl::StatusOr<core::Subscription> sub =
      gateway_->WatchAll(who, request, shared_from_this());
  if (!sub.ok()) {
    Abort(ToGrpcStatus(sub.status()));
    return;
  }
  SetSubscription(sub->id);
}

void EventStream::SetSubscription(uint64_t id) {
  bool already_done;
  {
    absl::MutexLock lock(&mu_);
    types_.Subscribed();
    already_done = done_;
    if (!already_done) subscription_ = id;
  }
  // The RPC ended while we subscribed: nobody else will unsubscribe.
  if (already_done) gateway_->Unwatch(id);
}

void EventStream::MaybeHeartbeat(absl::Time now, absl::Duration interval) {
  {
    absl::MutexLock lock(&mu_);
    if (done_ || finish_.has_value() || in_flight_ != nullptr ||
        HasPendingLocked() || !IdleSince(absl::ToUnixNanos(now - interval))) {
      return;
    }
    auto beat = std::make_shared<v1::GenerationEvent>();
    beat->set_type(v1::GenerationEvent::TYPE_HEARTBEAT);
    beat->mutable_generation()->set_id(generation_id_);
    beat->mutable_generation()->set_revision(last_revision_);
    beat->mutable_observe_time()->set_seconds(absl::ToUnixSeconds(now));
    if (ends_on_terminal_) {
      next_ = std::move(beat);
    } else {
      pending_.emplace("", std::move(beat));
      order_.push_back("");
    }
  }
  Pump();
}

void EventStream::Abort(const grpc::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (finish_called_) return;
    ClearPendingLocked();
    finish_ = status;
  }
  Pump();
}

void EventStream::OnWriteDone(bool ok) {
  Step step;
  {
    absl::MutexLock lock(&mu_);
    in_flight_ = nullptr;
    in_flight_wire_.Clear();
    last_activity_ns_.store(absl::ToUnixNanos(absl::Now()),
                            std::memory_order_relaxed);
    if (!ok && !finish_called_) {
      // The client is gone; nothing more can be written.
      ClearPendingLocked();
      finish_ = grpc::Status(grpc::StatusCode::CANCELLED, "stream broken");
    }
    step = NextLocked();
  }
  Perform(step);
}

void EventStream::OnDone() {
  uint64_t subscription;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    reactor_ = nullptr;
    ClearPendingLocked();
    subscription = subscription_;
    subscription_ = 0;
  }
  if (subscription != 0) gateway_->Unwatch(subscription);
}

EventStream::Step EventStream::NextLocked() {
  Step step;
  step.reactor = reactor_;
  if (done_ || finish_called_ || in_flight_ != nullptr) return step;
  if (next_ != nullptr) {
    in_flight_ = std::move(next_);
    next_ = nullptr;
  } else if (!order_.empty()) {
    auto it = pending_.find(order_.front());
    order_.pop_front();
    in_flight_ = std::move(it->second);
    pending_.erase(it);
  }
  if (in_flight_ != nullptr) {
    in_flight_wire_ = Wire(in_flight_);
    step.action = Step::Action::kWrite;
    step.event = in_flight_.get();
    step.wire = &in_flight_wire_;
    if (finish_.has_value() && !HasPendingLocked()) {
      // Nothing follows this event. gRPC reports no OnWriteDone for it;
      // in_flight_ and its bytes live until OnDone.
      finish_called_ = true;
      step.action = Step::Action::kWriteAndFinish;
      step.status = *finish_;
    }
  } else if (finish_.has_value()) {
    finish_called_ = true;
    step.action = Step::Action::kFinish;
    step.status = *finish_;
  }
  return step;
}

void EventStream::Pump() {
  Step step;
  {
    absl::MutexLock lock(&mu_);
    step = NextLocked();
  }
  Perform(step);
}

void EventStream::Perform(const Step& step) {
  // Unlocked: gRPC may run OnWriteDone inline. The reactor stays alive: it
  // is freed only in OnDone, which cannot come before Finish. The event and
  // its bytes stay too: OnWriteDone lets go of them after a kWrite, and
  // OnDone after a kWriteAndFinish (which gets no OnWriteDone).
  if (step.event != nullptr &&
      step.event->type() != v1::GenerationEvent::TYPE_HEARTBEAT) {
    RecordFanout(*step.event);
  }
  if (step.action == Step::Action::kFinish ||
      step.action == Step::Action::kWriteAndFinish) {
    CountGrpcRequest(method_, step.status.error_code());
  }
  switch (step.action) {
    case Step::Action::kWrite:
      step.reactor->StartWrite(step.wire);
      break;
    case Step::Action::kFinish:
      step.reactor->Finish(step.status);
      break;
    case Step::Action::kWriteAndFinish:
      step.reactor->StartWriteAndFinish(step.wire, grpc::WriteOptions(),
                                        step.status);
      break;
    case Step::Action::kNone:
      break;
  }
}

StreamReactor::StreamReactor(Gateway* gateway, StreamRegistry* registry,
                             const std::string& tenant, bool ends_on_terminal,
                             std::string method)
    : stream_(std::make_shared<EventStream>(this, gateway, ends_on_terminal,
                                            registry->limits().max_backlog,
                                            std::move(method))),
      registry_(registry),
      tenant_(tenant) {
  absl::Status added = registry_->Add(stream_, tenant_);
  registered_ = added.ok();
  if (!registered_) stream_->Abort(ToGrpcStatus(added));
}

void StreamReactor::OnCancel() {
  stream_->Abort(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
}

void StreamReactor::OnDone() {
  if (registered_) registry_->Remove(stream_.get(), tenant_);
  stream_->OnDone();
  delete this;
}

StreamRegistry::StreamRegistry(absl::Duration heartbeat_interval,
                               StreamLimits limits)
    : interval_(heartbeat_interval),
      limits_(limits),
      heartbeat_thread_([this] { HeartbeatLoop(); }) {}

StreamRegistry::~StreamRegistry() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  heartbeat_thread_.join();
}

absl::Status StreamRegistry::Add(const std::shared_ptr<EventStream>& stream,
                                 const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError(
        "server is shutting down; retry on another replica or after restart");
  }
  if (static_cast<int64_t>(streams_.size()) >= limits_.max_streams) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this server holds its limit of ", limits_.max_streams,
                     " open streams; retry later or on another replica"));
  }
  int64_t& mine = per_tenant_[tenant];
  if (mine >= limits_.max_streams_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant \"", tenant, "\" holds its limit of ",
        limits_.max_streams_per_tenant,
        " open streams on this server; close some (a WatchGenerations "
        "stream covers many generations)"));
  }
  ++mine;
  streams_.emplace(stream.get(), stream);
  return absl::OkStatus();
}

void StreamRegistry::Remove(EventStream* stream, const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  streams_.erase(stream);
  auto it = per_tenant_.find(tenant);
  if (it != per_tenant_.end() && --it->second <= 0) per_tenant_.erase(it);
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
  util::NameThisThread("vg-heartbeat");
  // Ticks at a quarter of the interval, so an idle stream beats within
  // 1.25 intervals. (Not more often: each tick reads every stream, a cache
  // miss each, about 2 ms per 1,000 streams on the 2-core CI machine.)
  const absl::Duration tick = std::max(absl::Milliseconds(10), interval_ / 4);
  while (true) {
    std::vector<std::shared_ptr<EventStream>> live;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]()
                          ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), tick)) return;
      // Only streams idle for a whole interval: at 10k streams, copying and
      // locking every one each tick cost a third of the server's CPU in the
      // fan-out benchmark. An entry's stream is alive while it is here (its
      // reactor removes it before letting go of it).
      const int64_t cutoff = absl::ToUnixNanos(absl::Now() - interval_);
      for (auto& [ptr, weak] : streams_) {
        if (!ptr->IdleSince(cutoff)) continue;
        if (auto s = weak.lock()) live.push_back(std::move(s));
      }
    }
    const absl::Time now = absl::Now();
    for (auto& s : live) s->MaybeHeartbeat(now, interval_);
  }
}

}  // namespace videogen::api
