#include "server/core/tracker.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/core/generation_record.h"
#include "server/core/poll_schedule.h"

namespace videogen::core {
namespace {

using google::protobuf::util::MessageDifferencer;

// Upper bound on one poller wait, so a clock that is moved by hand (tests)
// is noticed without a signal.
constexpr absl::Duration kMaxPollerWait = absl::Seconds(1);

std::string NewId() {
  thread_local absl::BitGen gen;  // seeded from the OS entropy source
  char bytes[16];
  for (char& b : bytes) b = static_cast<char>(absl::Uniform<uint8_t>(gen));
  std::string id =
      absl::WebSafeBase64Escape(absl::string_view(bytes, sizeof(bytes)));
  // Command-line parsers read a leading '-' as a flag; keep ids arg-safe.
  if (id[0] == '-') id[0] = 'A' + (static_cast<uint8_t>(bytes[1]) % 26);
  return id;
}

upstream::SubmitRequest ToSubmit(const v1::GenerateRequest& r,
                                 const std::string& id,
                                 const RequestContext& ctx) {
  upstream::SubmitRequest s;
  s.client_request_id = id;
  s.model = r.model();
  s.prompt = r.prompt();
  s.negative_prompt = r.negative_prompt();
  s.aspect_ratio = r.aspect_ratio();
  s.duration_seconds = r.duration_seconds();
  if (r.has_cfg_scale()) s.cfg_scale = r.cfg_scale();
  s.image_url = r.image_url();
  s.traceparent = ctx.traceparent;
  return s;
}

absl::Status AlreadyExists(const std::string& request_id,
                           const std::string& id) {
  return absl::AlreadyExistsError(absl::StrCat(
      "request_id \"", request_id,
      "\" was already used with different parameters (generation \"", id,
      "\"); send the same parameters to get that generation, or use a new "
      "request_id"));
}

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("generation \"", id, "\" not found"));
}

EventPtr MakeEvent(v1::GenerationEvent::Type type, const v1::Generation& g,
                   absl::Time observed) {
  auto event = std::make_shared<v1::GenerationEvent>();
  event->set_type(type);
  *event->mutable_generation() = g;
  *event->mutable_observe_time() = ToTimestamp(observed);
  return event;
}

}  // namespace

bool Filter::Matches(const v1::Generation& g) const {
  if (!states.empty() && states.count(g.state()) == 0) return false;
  for (const auto& [key, value] : labels) {
    auto it = g.labels().find(key);
    if (it == g.labels().end() || it->second != value) return false;
  }
  return true;
}

// All tracker state lives behind one mutex, mu_. Threads: RPC threads call
// Create/Get/Cancel/Subscribe; the upstream's thread runs Submit/Poll
// callbacks; the poller thread (or a test) runs RunDuePolls. Every result is
// applied where it arrives, under mu_, in this order: store write, in-memory
// record, event to the sinks (also under mu_, which keeps revision order per
// generation). The store is expected to be fast; sinks must not block.
// Upstream calls and Create's `done` run without mu_ held.
//
// Upstream callbacks reach the Impl through a Guard: ~Impl stops the poller,
// then closes the Guard, which waits for callbacks in progress; later ones
// do nothing. So the Upstream may outlive the Tracker and vice versa.
//
// Generations live in memory from creation until they become terminal; after
// that they are read from the store (Get, Subscribe, Cancel, request_id
// lookups), so memory stays bounded by the active set. CountByState reports
// active generations plus terminal transitions seen by this process.
//
// A failed store write: on Create the RPC gets the error and nothing is
// submitted; on Cancel the RPC gets the error and nothing changes; on a poll
// result the change is not applied and the poll is retried with backoff; on
// the submit answer (the upstream job exists and its id lives only here) the
// change is applied in memory anyway and the next write persists it.
class Tracker::Impl {
 public:
  Impl(TrackerOptions options, upstream::Upstream* upstream,
       store::Store* store, Clock* clock)
      : options_(options),
        upstream_(upstream),
        store_(store),
        clock_(clock),
        guard_(std::make_shared<Guard>(this)),
        jitter_rng_(options.seed != 0 ? options.seed : std::random_device{}()) {
  }

  ~Impl() {
    StopPoller();
    guard_->Close();
  }

  absl::Status Recover();
  void Create(const v1::GenerateRequest& request, const RequestContext& ctx,
              CreateCallback done);
  absl::StatusOr<GenerationPtr> Get(const std::string& id);
  absl::StatusOr<store::ListPage> List(const store::ListQuery& query) {
    return store_->List(query);
  }
  absl::StatusOr<GenerationPtr> Cancel(const std::string& id);
  absl::StatusOr<Subscription> Subscribe(const std::string& id,
                                         int64_t after_revision,
                                         std::shared_ptr<EventSink> sink);
  Subscription SubscribeAll(const Filter& filter,
                            std::shared_ptr<EventSink> sink);
  void Unsubscribe(uint64_t subscription_id);
  absl::Time RunDuePolls();
  void StartPoller();
  void StopPoller();
  std::map<v1::Generation::State, int64_t> CountByState();

 private:
  // Lets upstream callbacks outlive the Impl safely (see class comment).
  struct Guard {
    explicit Guard(Impl* i) : impl(i) {}
    // Runs f(impl) unless the Impl is gone. Not a lock held across f, so a
    // callback may re-enter the tracker.
    template <typename F>
    static void Call(const std::shared_ptr<Guard>& guard, F f) {
      Impl* impl;
      {
        absl::MutexLock lock(&guard->mu);
        impl = guard->impl;
        if (impl == nullptr) return;
        ++guard->running;
      }
      f(impl);
      absl::MutexLock lock(&guard->mu);
      --guard->running;
    }
    // Stops new calls and waits for running ones.
    void Close() {
      absl::MutexLock lock(&mu);
      impl = nullptr;
      mu.Await(absl::Condition(
          +[](int* running) { return *running == 0; }, &running));
    }
    absl::Mutex mu;
    Impl* impl ABSL_GUARDED_BY(mu);
    int running ABSL_GUARDED_BY(mu) = 0;
  };

  // One generation that is not terminal yet. Guarded by mu_.
  struct Entry {
    store::Record record;   // as last written to the store
    GenerationPtr current;  // immutable copy of record.generation
    std::string traceparent;
    bool submitting = false;              // upstream Submit in flight
    std::vector<CreateCallback> waiters;  // Creates waiting for that submit
    bool poll_in_flight = false;
    uint64_t poll_token = 0;  // matches the callback of the poll in flight
    absl::Time due = absl::InfinitePast();  // when the next poll should run
    absl::Duration backoff = absl::ZeroDuration();
    std::map<uint64_t, std::shared_ptr<EventSink>> sinks;
  };
  using Entries = absl::node_hash_map<std::string, Entry>;

  struct FirehoseSub {
    Filter filter;
    std::shared_ptr<EventSink> sink;
  };

  struct Waiters {
    std::vector<CreateCallback> callbacks;
    absl::StatusOr<GenerationPtr> result = absl::UnknownError("unset");
    void Run() {
      for (CreateCallback& done : callbacks) done(result);
    }
  };

  enum class Join { kNew, kQueued, kAnswered };
  // Looks `request.request_id` up. kQueued: `done` now waits for the submit
  // in flight. kAnswered: `*answer` is set.
  Join JoinLocked(const v1::GenerateRequest& request, CreateCallback& done,
                  absl::StatusOr<GenerationPtr>* answer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records the intent and registers `done` as the first waiter.
  absl::Status StartLocked(const v1::GenerateRequest& request,
                           const RequestContext& ctx, CreateCallback& done,
                           std::string* id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnSubmitted(const std::string& id,
                   absl::StatusOr<upstream::SubmitResult> result);
  void OnPolled(const std::string& id, uint64_t token,
                absl::StatusOr<upstream::Snapshot> result);

  // Writes `next` to the store; on success makes it current and announces
  // it. The caller has already bumped the revision.
  absl::Status CommitLocked(Entry& e, v1::Generation next, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnnounceLocked(Entry& e, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails the generation; returns false when the store write failed.
  bool FailLocked(Entry& e, int code, std::string reason, std::string message,
                  absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailDeadlineLocked(Entry& e, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a terminal generation from memory with its subscriptions.
  void EvictLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleLocked(const std::string& id, Entry& e, absl::Time due)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BackoffLocked(const std::string& id, Entry& e, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration JitteredLocked(absl::Duration d)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PollerLoop();

  const TrackerOptions options_;
  upstream::Upstream* const upstream_;
  store::Store* const store_;
  Clock* const clock_;
  const std::shared_ptr<Guard> guard_;

  absl::Mutex mu_;
  Entries entries_ ABSL_GUARDED_BY(mu_);
  // request_id -> id, for generations in entries_.
  absl::flat_hash_map<std::string, std::string> by_request_
      ABSL_GUARDED_BY(mu_);
  // subscription id -> generation id ("" for a firehose subscription).
  absl::flat_hash_map<uint64_t, std::string> subs_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, FirehoseSub> firehose_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sub_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_poll_token_ ABSL_GUARDED_BY(mu_) = 1;
  PollSchedule schedule_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 jitter_rng_ ABSL_GUARDED_BY(mu_);
  std::map<v1::Generation::State, int64_t> terminal_counts_
      ABSL_GUARDED_BY(mu_);
  // Clock time the poller sleeps until; InfinitePast when it is not asleep.
  absl::Time poller_wake_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stop_poller_ ABSL_GUARDED_BY(mu_) = false;
  absl::CondVar poller_cv_;

  absl::Mutex control_mu_;  // serializes StartPoller / StopPoller
  std::thread poller_ ABSL_GUARDED_BY(control_mu_);
};

// ---- Create ----------------------------------------------------------------

Tracker::Impl::Join Tracker::Impl::JoinLocked(
    const v1::GenerateRequest& request, CreateCallback& done,
    absl::StatusOr<GenerationPtr>* answer) {
  const std::string& rid = request.request_id();
  if (rid.empty()) return Join::kNew;
  if (auto idx = by_request_.find(rid); idx != by_request_.end()) {
    Entry& e = entries_.at(idx->second);
    if (!MessageDifferencer::Equals(e.record.generation.request(), request)) {
      *answer = AlreadyExists(rid, idx->second);
    } else if (e.submitting) {
      e.waiters.push_back(std::move(done));
      return Join::kQueued;
    } else {
      *answer = e.current;
    }
    return Join::kAnswered;
  }
  // Not in memory: terminal, or from before a restart.
  absl::StatusOr<std::optional<store::Record>> stored =
      store_->GetByRequestId(rid);
  if (!stored.ok()) {
    *answer = stored.status();
    return Join::kAnswered;
  }
  if (!stored->has_value()) return Join::kNew;
  const v1::Generation& g = (*stored)->generation;
  if (!MessageDifferencer::Equals(g.request(), request)) {
    *answer = AlreadyExists(rid, g.id());
  } else {
    *answer = std::make_shared<const v1::Generation>(g);
  }
  return Join::kAnswered;
}

void Tracker::Impl::Create(const v1::GenerateRequest& request,
                           const RequestContext& ctx, CreateCallback done) {
  absl::StatusOr<GenerationPtr> answer = absl::UnknownError("unset");
  bool answered = true;  // false: submit `id` upstream
  std::string id;
  {
    absl::MutexLock lock(&mu_);
    switch (JoinLocked(request, done, &answer)) {
      case Join::kQueued:
        return;
      case Join::kAnswered:
        break;
      case Join::kNew:
        if (absl::Status s = StartLocked(request, ctx, done, &id); s.ok()) {
          answered = false;
        } else {
          answer = s;
        }
        break;
    }
  }
  if (answered) {
    done(std::move(answer));
    return;
  }
  upstream_->Submit(
      ToSubmit(request, id, ctx),
      [guard = guard_, id](absl::StatusOr<upstream::SubmitResult> r) {
        Guard::Call(guard,
                    [&](Impl* impl) { impl->OnSubmitted(id, std::move(r)); });
      });
}

absl::Status Tracker::Impl::StartLocked(const v1::GenerateRequest& request,
                                        const RequestContext& ctx,
                                        CreateCallback& done, std::string* id) {
  const absl::Time now = clock_->Now();
  *id = NewId();
  store::Record record;
  v1::Generation& g = record.generation;
  g.set_id(*id);
  g.set_state(v1::Generation::STATE_QUEUED);
  *g.mutable_request() = request;
  *g.mutable_labels() = request.labels();
  *g.mutable_create_time() = ToTimestamp(now);
  *g.mutable_update_time() = ToTimestamp(now);
  record.deadline = now + options_.generation_deadline;
  // The intent is durable before the submit, so a crash never leads to a
  // blind resubmit (Recover fails it instead).
  if (absl::Status s = store_->Put(record); !s.ok()) return s;
  Entry& e = entries_[*id];
  e.current = std::make_shared<const v1::Generation>(g);
  e.record = std::move(record);
  e.traceparent = ctx.traceparent;
  e.submitting = true;
  e.waiters.push_back(std::move(done));
  if (!request.request_id().empty()) by_request_[request.request_id()] = *id;
  return absl::OkStatus();
}

void Tracker::Impl::OnSubmitted(const std::string& id,
                                absl::StatusOr<upstream::SubmitResult> r) {
  Waiters waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second.submitting) return;  // cancelled
    Entry& e = it->second;
    e.submitting = false;
    waiters.callbacks.swap(e.waiters);
    if (!r.ok()) {
      if (r.status().code() == absl::StatusCode::kCancelled) {
        // The upstream shut down mid-submit: the job may exist. Keep the
        // intent record; Recover fails it as SUBMIT_INTERRUPTED.
        waiters.result = absl::UnavailableError(
            "the server is shutting down; the submit was interrupted");
      } else {
        // Nothing exists upstream: forget it so the client may retry with
        // the same request_id.
        if (absl::Status s = store_->Delete(id); !s.ok()) {
          std::fprintf(stderr, "tracker: deleting rejected %s: %s\n",
                       id.c_str(), s.ToString().c_str());
        }
        waiters.result = r.status();
      }
      EvictLocked(id);
    } else {
      const absl::Time now = clock_->Now();
      v1::Generation next = e.record.generation;
      next.set_upstream_id(r->upstream_id);
      next.set_upstream_status(r->status);
      Bump(now, &next);
      if (absl::Status s = CommitLocked(e, next, now); !s.ok()) {
        // The upstream job exists and its id lives only here now: keep it in
        // memory; the next successful write persists the whole record.
        std::fprintf(stderr, "tracker: store write for %s failed: %s\n",
                     id.c_str(), s.ToString().c_str());
        e.record.generation = std::move(next);
        AnnounceLocked(e, now);
      }
      ScheduleLocked(id, e, now + options_.poll_initial_delay);
      waiters.result = e.current;
    }
  }
  waiters.Run();
}

// ---- Changes ---------------------------------------------------------------

absl::Status Tracker::Impl::CommitLocked(Entry& e, v1::Generation next,
                                         absl::Time now) {
  store::Record record{std::move(next), e.record.deadline};
  if (absl::Status s = store_->Put(record); !s.ok()) return s;
  e.record = std::move(record);
  AnnounceLocked(e, now);
  return absl::OkStatus();
}

void Tracker::Impl::AnnounceLocked(Entry& e, absl::Time now) {
  const v1::Generation& g = e.record.generation;
  EventPtr event = MakeEvent(v1::GenerationEvent::TYPE_UPDATE, g, now);
  e.current = GenerationPtr(event, &event->generation());
  for (const auto& [sub, sink] : e.sinks) sink->OnEvent(event);
  for (const auto& [sub, fh] : firehose_) {
    if (fh.filter.Matches(g)) fh.sink->OnEvent(event);
  }
  if (g.done()) ++terminal_counts_[g.state()];
}

bool Tracker::Impl::FailLocked(Entry& e, int code, std::string reason,
                               std::string message, absl::Time now) {
  v1::Generation next = e.record.generation;
  if (!MarkFailed(code, std::move(reason), std::move(message), &next)) {
    return true;
  }
  Bump(now, &next);
  absl::Status s = CommitLocked(e, std::move(next), now);
  if (!s.ok()) {
    std::fprintf(stderr, "tracker: store write for %s failed: %s\n",
                 e.record.generation.id().c_str(), s.ToString().c_str());
  }
  return s.ok();
}

void Tracker::Impl::FailDeadlineLocked(Entry& e, absl::Time now) {
  const std::string id = e.record.generation.id();
  const absl::Duration limit =
      e.record.deadline - FromTimestamp(e.record.generation.create_time());
  if (FailLocked(e, 4, "DEADLINE_EXCEEDED",
                 absl::StrCat("the generation did not finish within ",
                              absl::FormatDuration(limit)),
                 now)) {
    EvictLocked(id);
  } else {
    BackoffLocked(id, e, now);  // retry the write later
  }
}

void Tracker::Impl::EvictLocked(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  for (const auto& [sub, sink] : it->second.sinks) subs_.erase(sub);
  const std::string& rid = it->second.record.generation.request().request_id();
  if (auto idx = by_request_.find(rid);
      idx != by_request_.end() && idx->second == id) {
    by_request_.erase(idx);
  }
  schedule_.Remove(id);
  entries_.erase(it);
}

absl::StatusOr<GenerationPtr> Tracker::Impl::Cancel(const std::string& id) {
  Waiters waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      Entry& e = it->second;
      const absl::Time now = clock_->Now();
      v1::Generation next = e.record.generation;
      MarkCancelled(&next);
      Bump(now, &next);
      if (absl::Status s = CommitLocked(e, std::move(next), now); !s.ok()) {
        return s;
      }
      // Creates still waiting on the submit get the cancelled generation.
      waiters.callbacks.swap(e.waiters);
      waiters.result = e.current;
      EvictLocked(id);
    }
  }
  if (waiters.result.ok()) {
    waiters.Run();
    return waiters.result;
  }
  // Terminal generations are only in the store; they never change.
  return Get(id);
}

// ---- Reads -----------------------------------------------------------------

absl::StatusOr<GenerationPtr> Tracker::Impl::Get(const std::string& id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) return it->second.current;
  }
  absl::StatusOr<std::optional<store::Record>> stored = store_->Get(id);
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) return NotFound(id);
  return std::make_shared<const v1::Generation>((*stored)->generation);
}

std::map<v1::Generation::State, int64_t> Tracker::Impl::CountByState() {
  absl::MutexLock lock(&mu_);
  std::map<v1::Generation::State, int64_t> counts = terminal_counts_;
  for (const auto& [id, e] : entries_) ++counts[e.record.generation.state()];
  return counts;
}

// ---- Subscriptions ---------------------------------------------------------

absl::StatusOr<Subscription> Tracker::Impl::Subscribe(
    const std::string& id, int64_t after_revision,
    std::shared_ptr<EventSink> sink) {
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      Entry& e = it->second;
      if (e.current->revision() > after_revision) {
        sink->OnEvent(MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, *e.current,
                                clock_->Now()));
      }
      const uint64_t sub = next_sub_++;
      e.sinks.emplace(sub, std::move(sink));
      subs_.emplace(sub, id);
      return Subscription{sub, false};
    }
  }
  // Not in memory: terminal (it never changes again) or unknown.
  absl::StatusOr<std::optional<store::Record>> stored = store_->Get(id);
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) return NotFound(id);
  const v1::Generation& g = (*stored)->generation;
  if (!g.done()) {
    return absl::UnavailableError(
        absl::StrCat("generation \"", id, "\" is not tracked by this server"));
  }
  if (g.revision() > after_revision) {
    sink->OnEvent(
        MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, g, clock_->Now()));
  }
  return Subscription{0, true};
}

Subscription Tracker::Impl::SubscribeAll(const Filter& filter,
                                         std::shared_ptr<EventSink> sink) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  std::vector<GenerationPtr> matching;
  for (const auto& [id, e] : entries_) {
    // Revision 0 is a submit in flight: not visible until it is accepted.
    if (e.current->revision() > 0 && filter.Matches(*e.current)) {
      matching.push_back(e.current);
    }
  }
  std::sort(matching.begin(), matching.end(),
            [](const GenerationPtr& a, const GenerationPtr& b) {
              return FromTimestamp(a->create_time()) <
                     FromTimestamp(b->create_time());
            });
  for (const GenerationPtr& g : matching) {
    sink->OnEvent(MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, *g, now));
  }
  const uint64_t sub = next_sub_++;
  firehose_.emplace(sub, FirehoseSub{filter, std::move(sink)});
  subs_.emplace(sub, "");
  return Subscription{sub, false};
}

void Tracker::Impl::Unsubscribe(uint64_t subscription_id) {
  absl::MutexLock lock(&mu_);
  auto it = subs_.find(subscription_id);
  if (it == subs_.end()) return;
  if (it->second.empty()) {
    firehose_.erase(subscription_id);
  } else if (auto e = entries_.find(it->second); e != entries_.end()) {
    e->second.sinks.erase(subscription_id);
  }
  subs_.erase(it);
}

// ---- Polling ---------------------------------------------------------------

absl::Duration Tracker::Impl::JitteredLocked(absl::Duration d) {
  const double j = std::clamp(options_.poll_jitter, 0.0, 1.0);
  if (j == 0) return d;
  std::uniform_real_distribution<double> dist(1.0 - j, 1.0 + j);
  return d * dist(jitter_rng_);
}

void Tracker::Impl::ScheduleLocked(const std::string& id, Entry& e,
                                   absl::Time due) {
  // Never sleep past the deadline: the deadline check runs at poll time.
  due = std::min(due, e.record.deadline);
  e.due = due;
  schedule_.Schedule(id, due);
  if (due < poller_wake_) poller_cv_.Signal();
}

void Tracker::Impl::BackoffLocked(const std::string& id, Entry& e,
                                  absl::Time now) {
  e.backoff = e.backoff == absl::ZeroDuration()
                  ? options_.error_backoff_initial
                  : std::min(e.backoff * 2, options_.error_backoff_max);
  ScheduleLocked(id, e, now + JitteredLocked(e.backoff));
}

absl::Time Tracker::Impl::RunDuePolls() {
  struct Due {
    upstream::PollRequest request;
    std::string id;
    uint64_t token;
  };
  std::vector<Due> due;
  std::vector<absl::Duration> lags;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    for (const std::string& id : schedule_.PopDue(now)) {
      auto it = entries_.find(id);
      if (it == entries_.end()) continue;
      Entry& e = it->second;
      if (e.poll_in_flight || e.submitting) continue;
      if (now >= e.record.deadline) {
        FailDeadlineLocked(e, now);
        continue;
      }
      e.poll_in_flight = true;
      e.poll_token = next_poll_token_++;
      lags.push_back(now - e.due);
      due.push_back(Due{{e.record.generation.upstream_id(), id, e.traceparent},
                        id,
                        e.poll_token});
    }
  }
  if (options_.on_poll_lag) {
    for (absl::Duration lag : lags) options_.on_poll_lag(lag);
  }
  for (Due& d : due) {
    upstream_->Poll(std::move(d.request),
                    [guard = guard_, id = std::move(d.id),
                     token = d.token](absl::StatusOr<upstream::Snapshot> r) {
                      Guard::Call(guard, [&](Impl* impl) {
                        impl->OnPolled(id, token, std::move(r));
                      });
                    });
  }
  // Read after the calls: a poll that answered at once may have rescheduled.
  absl::MutexLock lock(&mu_);
  return schedule_.NextDue();
}

void Tracker::Impl::OnPolled(const std::string& id, uint64_t token,
                             absl::StatusOr<upstream::Snapshot> r) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;  // terminal or cancelled meanwhile
  Entry& e = it->second;
  if (!e.poll_in_flight || e.poll_token != token) return;
  e.poll_in_flight = false;
  const absl::Time now = clock_->Now();
  if (!r.ok()) {
    if (r.status().code() == absl::StatusCode::kNotFound) {
      if (FailLocked(e, 5, "UPSTREAM_NOT_FOUND",
                     absl::StrCat("the upstream lost job \"",
                                  e.record.generation.upstream_id(),
                                  "\": ", r.status().message()),
                     now)) {
        EvictLocked(id);
        return;
      }
    }
    BackoffLocked(id, e, now);
    return;
  }
  v1::Generation next = e.record.generation;
  if (ApplySnapshot(*r, &next)) {
    Bump(now, &next);
    if (absl::Status s = CommitLocked(e, std::move(next), now); !s.ok()) {
      // Not applied; the next poll sees the same answer and tries again.
      std::fprintf(stderr, "tracker: store write for %s failed: %s\n",
                   id.c_str(), s.ToString().c_str());
      BackoffLocked(id, e, now);
      return;
    }
    if (e.record.generation.done()) {
      EvictLocked(id);
      return;
    }
  }
  e.backoff = absl::ZeroDuration();
  if (now >= e.record.deadline) {
    FailDeadlineLocked(e, now);
    return;
  }
  ScheduleLocked(id, e, now + JitteredLocked(options_.poll_interval));
}

// ---- Recovery --------------------------------------------------------------

absl::Status Tracker::Impl::Recover() {
  absl::StatusOr<std::vector<store::Record>> active = store_->LoadActive();
  if (!active.ok()) return active.status();
  absl::Status first_error;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  for (store::Record& record : *active) {
    const std::string id = record.generation.id();
    if (entries_.contains(id) || record.generation.done()) continue;
    Entry& e = entries_[id];
    e.current = std::make_shared<const v1::Generation>(record.generation);
    e.record = std::move(record);
    const std::string& rid = e.record.generation.request().request_id();
    if (!rid.empty()) by_request_[rid] = id;
    if (e.record.generation.upstream_id().empty()) {
      if (FailLocked(e, 2, "SUBMIT_INTERRUPTED",
                     "the server stopped while submitting this generation; "
                     "the upstream job may or may not exist, and it was not "
                     "resubmitted to avoid paying twice; retry with a new "
                     "request_id",
                     now)) {
        EvictLocked(id);
      } else {
        first_error.Update(absl::UnavailableError(
            absl::StrCat("cannot mark ", id, " SUBMIT_INTERRUPTED")));
      }
      continue;
    }
    if (now >= e.record.deadline) {
      FailDeadlineLocked(e, now);
    } else {
      ScheduleLocked(id, e, now);
    }
  }
  return first_error;
}

// ---- Poller thread ---------------------------------------------------------

void Tracker::Impl::StartPoller() {
  absl::MutexLock control(&control_mu_);
  if (poller_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_poller_ = false;
  }
  poller_ = std::thread([this] { PollerLoop(); });
}

void Tracker::Impl::StopPoller() {
  absl::MutexLock control(&control_mu_);
  if (!poller_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_poller_ = true;
    poller_cv_.Signal();
  }
  poller_.join();
}

void Tracker::Impl::PollerLoop() {
  while (true) {
    RunDuePolls();
    absl::MutexLock lock(&mu_);
    if (stop_poller_) return;
    const absl::Time now = clock_->Now();
    const absl::Time due = schedule_.NextDue();
    if (due <= now) continue;
    const absl::Duration wait = std::min(due - now, kMaxPollerWait);
    poller_wake_ = now + wait;
    poller_cv_.WaitWithTimeout(&mu_, wait);
    poller_wake_ = absl::InfinitePast();
    if (stop_poller_) return;
  }
}

// ---- Tracker ---------------------------------------------------------------

Tracker::Tracker(TrackerOptions options, upstream::Upstream* upstream,
                 store::Store* store, Clock* clock)
    : impl_(std::make_unique<Impl>(options, upstream, store, clock)) {}

Tracker::~Tracker() = default;

absl::Status Tracker::Recover() { return impl_->Recover(); }

void Tracker::Create(const v1::GenerateRequest& request,
                     const RequestContext& ctx, CreateCallback done) {
  impl_->Create(request, ctx, std::move(done));
}

absl::StatusOr<GenerationPtr> Tracker::Get(std::string_view id) {
  return impl_->Get(std::string(id));
}

absl::StatusOr<store::ListPage> Tracker::List(const store::ListQuery& query) {
  return impl_->List(query);
}

absl::StatusOr<GenerationPtr> Tracker::Cancel(std::string_view id) {
  return impl_->Cancel(std::string(id));
}

absl::StatusOr<Subscription> Tracker::Subscribe(
    std::string_view id, int64_t after_revision,
    std::shared_ptr<EventSink> sink) {
  return impl_->Subscribe(std::string(id), after_revision, std::move(sink));
}

Subscription Tracker::SubscribeAll(const Filter& filter,
                                   std::shared_ptr<EventSink> sink) {
  return impl_->SubscribeAll(filter, std::move(sink));
}

void Tracker::Unsubscribe(uint64_t subscription_id) {
  impl_->Unsubscribe(subscription_id);
}

absl::Time Tracker::RunDuePolls() { return impl_->RunDuePolls(); }
void Tracker::StartPoller() { impl_->StartPoller(); }
void Tracker::StopPoller() { impl_->StopPoller(); }

std::map<v1::Generation::State, int64_t> Tracker::CountByState() {
  return impl_->CountByState();
}

}  // namespace videogen::core
