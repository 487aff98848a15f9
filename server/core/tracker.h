#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/core/clock.h"
#include "server/core/estimator.h"
#include "server/core/events.h"
#include "server/media/mirror.h"
#include "server/store/store.h"
#include "server/upstream/upstream.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::core {

struct TrackerOptions {
  absl::Duration poll_initial_delay = absl::Seconds(2);
  absl::Duration poll_interval = absl::Seconds(5);
  double poll_jitter = 0.2;  // +/- share of poll_interval
  absl::Duration error_backoff_initial = absl::Seconds(1);
  absl::Duration error_backoff_max = absl::Seconds(60);
  absl::Duration generation_deadline = absl::Minutes(30);
  uint64_t seed = 0;  // 0 = random

  // Leases (design.md §6). `owner` names this replica; single-process
  // stores keep a fixed owner so a restart takes its leases back at once.
  std::string owner = "local";
  absl::Duration lease_duration = absl::Seconds(30);
  int claim_batch = 1000;
  // True for a store that several replicas share (PostgreSQL): leases are
  // renewed and orphaned generations claimed every lease_duration / 3.
  bool shared_store = false;

  // Submits of one tenant handed to the upstream at once; the rest wait
  // here, in one queue per tenant. The upstream client lets tenants take
  // turns and sends each tenant's polls before its submits, so a tenant
  // whose burst waits there (behind its own polls) holds back neither
  // another tenant's creates nor anyone's polls.
  int max_outstanding_submits = 4;

  // Reconciliation of unanswered submits through the usage log (§5).
  absl::Duration reconcile_window = absl::Minutes(15);
  double reconcile_rate_per_minute = 60;
  absl::Duration reconcile_interval = absl::Seconds(20);

  // Called on the tracker's thread with how late each poll starts against
  // its schedule (for metrics). Must be cheap.
  std::function<void(absl::Duration)> on_poll_lag;
  // Webhook deliveries to write in the same transaction as a change (§8);
  // empty = none. `on_outbox` runs after such a write (wakes the
  // dispatcher). Both run on the tracker's thread and must not block.
  std::function<std::vector<store::Delivery>(const v1::Generation&)> outbox_for;
  std::function<void()> on_outbox;
  // Optional: estimates (§10) and result mirroring (§11). Not owned.
  Estimator* estimator = nullptr;
  media::Mirror* mirror = nullptr;
};

// Per-request context passed through to the upstream.
struct RequestContext {
  std::string traceparent;  // W3C trace context, may be empty

  // The trace id in `traceparent` (32 hex digits), or "" without one: the
  // `trace_id` of log lines.
  std::string TraceId() const {
    return traceparent.size() >= 35 ? traceparent.substr(3, 32) : "";
  }
};

// A validated, defaulted create from the edge.
struct CreateRequest {
  v1::GenerateRequest request;
  std::string tenant;  // "" with --auth=none
  store::Admission admission;
  RequestContext ctx;
};

using CreateCallback = std::function<void(absl::StatusOr<GenerationPtr>)>;

// Owns the generations this replica holds leases on: their state machine,
// the one upstream submit (design.md §5), the poll schedule, reconciliation
// and mirroring. Reads and fan-out are elsewhere (the store and the
// FanoutHub), so nothing here waits on a watcher.
//
// Threads: one loop thread (Start) owns every piece of state; the public
// methods post work to it and return. Upstream and mirror callbacks also
// only post (Envoy's dispatcher pattern), so the curl loop never waits on a
// store write. Tests leave the loop thread off and call RunUntilIdle on
// their own thread instead. Cancel is the exception: it is a
// compare-and-set on the store from the caller's thread, exactly as a
// Cancel on another replica would be, and the loop learns of it when its
// next write conflicts (or sooner, through Forget).
class Tracker {
 public:
  Tracker(TrackerOptions options, upstream::Upstream* upstream,
          store::Store* store, Clock* clock);
  ~Tracker();  // Stop()s first
  Tracker(const Tracker&) = delete;
  Tracker& operator=(const Tracker&) = delete;

  // Claims this replica's generations (at startup the fixed owner of a
  // single-process store takes back all of them) and resumes each: polls
  // scheduled; a submit that never left is sent now; one that was in flight
  // goes to reconciliation. Runs on the caller's thread before Start.
  absl::Status Recover();

  // Creates a generation, or joins the one `request_id` names for this
  // tenant (never a second submit). `done` runs on the tracker's thread
  // once the submit is answered: the generation (QUEUED, revision 1, maybe
  // `submit_unconfirmed`), or the upstream's refusal, a quota error,
  // ALREADY_EXISTS for other parameters, UNAVAILABLE when stopping.
  void Create(CreateRequest request, CreateCallback done);

  // Moves a non-terminal generation to CANCELLED (terminal ones come back
  // unchanged). NOT_FOUND for unknown ids, revision 0 and other tenants'
  // (`tenant` "" = any). Runs on the caller's thread.
  absl::StatusOr<GenerationPtr> Cancel(const std::string& id,
                                       const std::string& tenant);

  // Runs posted work and due timers on the calling thread until nothing is
  // due at clock->Now(). Returns the next due time. Tests only (with the
  // loop thread off).
  absl::Time RunUntilIdle();

  void Start();
  // Stops the loop thread. Creates still waiting get UNAVAILABLE; submits
  // in flight stay recorded as sent and are reconciled after a restart.
  void Stop();

  // Generations held here by state, plus terminal transitions made here.
  std::map<v1::Generation::State, int64_t> CountByState();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace videogen::core
