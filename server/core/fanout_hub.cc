#include "server/core/fanout_hub.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/generation_record.h"
#include "server/util/thread_name.h"

namespace videogen::core {
namespace {

// Takes `g` by value: a caller that owns its copy moves it in (a snapshot's
// record was read for this one event), saving a deep copy per watcher.
EventPtr MakeEvent(v1::GenerationEvent::Type type, v1::Generation g,
                   absl::Time observed) {
  auto event = std::make_shared<v1::GenerationEvent>();
  event->set_type(type);
  *event->mutable_generation() = std::move(g);
  *event->mutable_observe_time() = ToTimestamp(observed);
  return event;
}

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("generation \"", id, "\" not found"));
}

// Revision 0 is a submit whose answer is not in yet: nobody outside the
// creating call has seen the generation, so it does not exist for them.
bool VisibleTo(const v1::Generation& g, const std::string& tenant) {
  return g.revision() > 0 && (tenant.empty() || g.tenant() == tenant);
}

}  // namespace

bool Filter::Matches(const v1::Generation& g) const {
  if (!tenant.empty() && g.tenant() != tenant) return false;
  if (!states.empty() && states.count(g.state()) == 0) return false;
  for (const auto& [key, value] : labels) {
    auto it = g.labels().find(key);
    if (it == g.labels().end() || it->second != value) return false;
  }
  return true;
}

FanoutHub::FanoutHub(store::Store* store, Clock* clock)
    : store_(store), clock_(clock) {
  thread_ = std::thread([this] { DispatchLoop(); });
  store_->feed()->SetListener(
      [this](const store::Change& change) { Publish(change); });
}

FanoutHub::~FanoutHub() {
  store_->feed()->SetListener(nullptr);
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void FanoutHub::Publish(const store::Change& change) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(change);
  ++published_;
}

void FanoutHub::Flush() {
  absl::MutexLock lock(&mu_);
  const int64_t target = published_;
  auto caught_up = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return delivered_ >= target || stop_;
  };
  mu_.Await(absl::Condition(&caught_up));
}

int64_t FanoutHub::subscriptions() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(subs_.size());
}

void FanoutHub::DispatchLoop() {
  util::NameThisThread("vg-fanout");
  while (true) {
    std::deque<store::Change> batch;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || stop_;
      };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      batch.swap(queue_);
    }
    for (const store::Change& change : batch) Deliver(change);
    absl::MutexLock lock(&mu_);
    delivered_ += static_cast<int64_t>(batch.size());
  }
}

void FanoutHub::Deliver(const store::Change& change) {
  GenerationPtr g = change.generation;
  if (g == nullptr) {
    // A shared store's feed carries only id and revision: re-read.
    absl::StatusOr<std::optional<store::Record>> r = store_->Get(change.id);
    if (!r.ok() || !r->has_value()) return;
    g = std::make_shared<const v1::Generation>((*r)->generation);
  }
  if (g->revision() <= 0) return;
  std::vector<std::shared_ptr<EventSink>> sinks;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = by_id_.find(g->id()); it != by_id_.end()) {
      sinks.reserve(it->second.size() + firehose_.size());
      for (const auto& [sub, sink] : it->second) sinks.push_back(sink);
      if (g->done()) {
        // Nothing follows a terminal event: these subscriptions are over.
        for (const auto& [sub, sink] : it->second) subs_.erase(sub);
        by_id_.erase(it);
      }
    }
    for (const auto& [sub, fh] : firehose_) {
      if (fh.filter.Matches(*g)) sinks.push_back(fh.sink);
    }
  }
  if (sinks.empty()) return;
  // observe_time is when the change was seen (the poll or the RPC), so the
  // fan-out latency metric covers the store write and this queue too.
  EventPtr event = MakeEvent(v1::GenerationEvent::TYPE_UPDATE, *g,
                             FromTimestamp(g->update_time()));
  for (const auto& sink : sinks) sink->OnEvent(event);
}

absl::StatusOr<Subscription> FanoutHub::Subscribe(
    const std::string& id, const std::string& tenant, int64_t after_revision,
    std::shared_ptr<EventSink> sink) {
  uint64_t sub;
  {
    absl::MutexLock lock(&mu_);
    sub = next_sub_++;
    subs_.emplace(sub, Sub{id, Filter{}, sink});
    by_id_[id].emplace(sub, sink);
  }
  absl::StatusOr<std::optional<store::Record>> r = store_->Get(id);
  absl::Status error;
  if (!r.ok()) {
    error = r.status();
  } else if (!r->has_value() || !VisibleTo((*r)->generation, tenant)) {
    error = NotFound(id);
  } else if ((*r)->generation.revision() < after_revision) {
    error = absl::OutOfRangeError(absl::StrCat(
        "after_revision ", after_revision, " is above generation \"", id,
        "\"'s current revision ", (*r)->generation.revision(),
        "; resume with the last revision this server sent you, or 0"));
  }
  if (!error.ok()) {
    Unsubscribe(sub);
    return error;
  }
  v1::Generation& g = (*r)->generation;
  const bool done = g.done();
  if (g.revision() > after_revision) {
    sink->OnEvent(MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, std::move(g),
                            clock_->Now()));
  }
  if (done) {
    Unsubscribe(sub);
    return Subscription{0, true};
  }
  return Subscription{sub, false};
}

absl::StatusOr<Subscription> FanoutHub::SubscribeAll(
    const Filter& filter, std::shared_ptr<EventSink> sink) {
  uint64_t sub;
  {
    absl::MutexLock lock(&mu_);
    sub = next_sub_++;
    subs_.emplace(sub, Sub{"", filter, sink});
    firehose_.emplace(sub, Sub{"", filter, sink});
  }
  // Snapshots of what is running now, read page by page from the store.
  store::ListQuery query;
  query.tenant = filter.tenant;
  query.labels = filter.labels;
  for (auto s :
       {v1::Generation::STATE_QUEUED, v1::Generation::STATE_GENERATING}) {
    if (filter.states.empty() || filter.states.count(s) > 0) {
      query.states.push_back(s);
    }
  }
  std::vector<v1::Generation> running;
  if (!query.states.empty()) {
    query.page_size = 1000;
    while (true) {
      absl::StatusOr<store::ListPage> page = store_->List(query);
      if (!page.ok()) {
        Unsubscribe(sub);
        return page.status();
      }
      for (v1::Generation& g : page->generations) {
        if (g.revision() > 0) running.push_back(std::move(g));
      }
      if (!page->next.has_value()) break;
      query.after = page->next;
    }
  }
  const absl::Time now = clock_->Now();
  for (auto it = running.rbegin(); it != running.rend(); ++it) {
    sink->OnEvent(
        MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, std::move(*it), now));
  }
  return Subscription{sub, false};
}

void FanoutHub::Unsubscribe(uint64_t subscription_id) {
  std::shared_ptr<EventSink> released;  // dropped outside the lock
  absl::MutexLock lock(&mu_);
  auto it = subs_.find(subscription_id);
  if (it == subs_.end()) return;
  released = std::move(it->second.sink);
  if (it->second.id.empty()) {
    firehose_.erase(subscription_id);
  } else if (auto w = by_id_.find(it->second.id); w != by_id_.end()) {
    w->second.erase(subscription_id);
    if (w->second.empty()) by_id_.erase(w);
  }
  subs_.erase(it);
}

}  // namespace videogen::core
