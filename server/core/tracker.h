#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/core/clock.h"
#include "server/store/store.h"
#include "server/upstream/upstream.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::core {

// Immutable snapshot shared by every reader and every sink.
using GenerationPtr = std::shared_ptr<const v1::Generation>;
// Immutable event, built once per change and shared by every sink.
using EventPtr = std::shared_ptr<const v1::GenerationEvent>;

// Receives events for one subscription, in revision order. Called from the
// tracker's threads (the poller, or the thread of the RPC that made the
// change) with tracker locks held: it must not block and must not call back
// into the Tracker. Slow consumers coalesce on their own side.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnEvent(EventPtr event) = 0;
};

struct TrackerOptions {
  absl::Duration poll_initial_delay = absl::Seconds(2);
  absl::Duration poll_interval = absl::Seconds(5);
  double poll_jitter = 0.2;  // +/- share of poll_interval
  absl::Duration error_backoff_initial = absl::Seconds(1);
  absl::Duration error_backoff_max = absl::Seconds(60);
  absl::Duration generation_deadline = absl::Minutes(30);
  uint64_t seed = 0;  // 0 = random
  // Called from the poller with how late each poll starts against its
  // schedule (for metrics). Must be cheap and thread-safe.
  std::function<void(absl::Duration)> on_poll_lag;
};

// Filter for firehose subscriptions and listings.
struct Filter {
  std::set<v1::Generation::State> states;     // empty = all
  std::map<std::string, std::string> labels;  // all must match
  bool Matches(const v1::Generation& g) const;
};

// Per-request context passed through to the upstream.
struct RequestContext {
  std::string traceparent;  // W3C trace context, may be empty
};

struct Subscription {
  uint64_t id = 0;  // 0 when nothing was registered
  // True when the generation is already terminal: any SNAPSHOT due was
  // delivered during Subscribe and nothing more will come.
  bool finished = false;
};

using CreateCallback = std::function<void(absl::StatusOr<GenerationPtr>)>;

// Owns every generation's state machine, revisions, idempotency index, poll
// schedule and fan-out. Thread-safe: RPC callback threads create, read,
// cancel and subscribe; upstream callbacks arrive on the curl loop thread;
// the poller thread (StartPoller) or a test (RunDuePolls) drives polls.
class Tracker {
 public:
  Tracker(TrackerOptions options, upstream::Upstream* upstream,
          store::Store* store, Clock* clock);
  ~Tracker();
  Tracker(const Tracker&) = delete;
  Tracker& operator=(const Tracker&) = delete;

  // Loads non-terminal generations from the store and schedules their polls.
  // Generations whose submit was in flight at a crash are marked FAILED
  // (reason SUBMIT_INTERRUPTED), never resubmitted.
  absl::Status Recover();

  // Creates a generation and submits it upstream; `done` runs once the
  // upstream accepted it (state QUEUED, revision 1) or rejected it (the
  // upstream's error; the record is removed). A repeated request_id with
  // the same parameters joins the existing generation (no second submit);
  // with different parameters it is ALREADY_EXISTS. `request` must be
  // validated and defaulted already. `done` may run on any thread.
  void Create(const v1::GenerateRequest& request, const RequestContext& ctx,
              CreateCallback done);

  absl::StatusOr<GenerationPtr> Get(std::string_view id);
  absl::StatusOr<store::ListPage> List(const store::ListQuery& query);
  // Moves a non-terminal generation to CANCELLED; terminal ones unchanged.
  absl::StatusOr<GenerationPtr> Cancel(std::string_view id);

  // Registers `sink` and reads the current state under one lock. Sends a
  // SNAPSHOT first if the revision is above `after_revision`. NOT_FOUND for
  // an unknown id.
  absl::StatusOr<Subscription> Subscribe(std::string_view id,
                                         int64_t after_revision,
                                         std::shared_ptr<EventSink> sink);
  // Firehose: a SNAPSHOT of each matching non-terminal generation, then every
  // matching UPDATE.
  Subscription SubscribeAll(const Filter& filter,
                            std::shared_ptr<EventSink> sink);
  void Unsubscribe(uint64_t subscription_id);

  // Starts polls that are due at clock->Now(). Returns the next due time
  // (InfiniteFuture when nothing is scheduled). Tests call this directly.
  absl::Time RunDuePolls();

  // Runs RunDuePolls on a dedicated thread (real time), until StopPoller.
  void StartPoller();
  void StopPoller();

  // Counts for metrics.
  std::map<v1::Generation::State, int64_t> CountByState();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace videogen::core
