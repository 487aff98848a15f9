#pragma once

// Private to tracker*.cc: the Tracker's loop-thread state. See tracker.h for
// the threading model.

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/core/poll_schedule.h"
#include "server/core/reconciler.h"
#include "server/core/tracker.h"

namespace videogen::core {

// Work handed to the loop thread from any thread. Thread-safe. Shared with
// upstream and mirror callbacks, which may outlive the Tracker: once closed,
// posts are refused and dropped.
class Inbox {
 public:
  using Task = std::function<void()>;
  // False (task dropped) once closed.
  bool Post(Task task);
  // Takes every queued task.
  std::deque<Task> TakeAll();
  // Waits until a task is queued, `deadline` passes or Wake is called.
  void Wait(absl::Time deadline);
  void Wake();
  void Close();
  bool closed();

 private:
  absl::Mutex mu_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
};

class Tracker::Impl {
 public:
  Impl(TrackerOptions options, upstream::Upstream* upstream,
       store::Store* store, Clock* clock);
  ~Impl();

  absl::Status Recover();
  void Create(CreateRequest request, CreateCallback done);
  absl::StatusOr<GenerationPtr> Cancel(const std::string& id,
                                       const std::string& tenant);
  absl::Time RunUntilIdle();
  void Start();
  void Stop();
  std::map<v1::Generation::State, int64_t> CountByState();

 private:
  // Where a held generation stands. Loop thread only.
  enum class Phase {
    kWaitingToSubmit,  // in a tenant queue; nothing sent
    kSubmitting,       // handed to the upstream (gate may be open)
    kReconciling,      // submit unconfirmed; the reconciler looks for it
    kPolling,
    kMirroring,  // upstream completed; copying the video before COMPLETED
    kRejected,   // upstream refused; deleting the record failed, retrying
  };

  struct Entry {
    store::Record record;  // as last written
    Phase phase = Phase::kPolling;
    std::string traceparent;
    std::vector<CreateCallback> waiters;  // Creates waiting for the submit
    absl::Status rejection;               // kRejected: what waiters get
    bool poll_in_flight = false;
    uint64_t poll_token = 0;
    absl::Time due = absl::InfinitePast();
    absl::Duration backoff = absl::ZeroDuration();
  };

  // ---- loop machinery (tracker.cc) ----
  void Post(std::function<void(Impl*)> task);
  void PostAfter(absl::Time when, std::function<void()> task);
  absl::Time NextDue();
  void RunTasks();
  void RunTimers();
  void LoopThread();
  void FailWaiters(Entry& e, const absl::Status& status);

  // ---- create and submit (tracker.cc) ----
  void StartCreate(CreateRequest request, CreateCallback done);
  void JoinExisting(const store::Record& existing,
                    const v1::GenerateRequest& request, CreateCallback done,
                    int attempt);
  void QueueSubmit(const std::string& id, const std::string& tenant);
  // Hands `tenant`'s queued submits to the upstream, up to
  // max_outstanding_submits of that tenant at once.
  void PumpSubmits(const std::string& tenant);
  void OnGateOpen(const std::string& id,
                  std::shared_ptr<upstream::SubmitGate> gate);
  void OnSubmitted(const std::string& id, const std::string& tenant,
                   absl::StatusOr<upstream::SubmitResult> result);
  void OnAccepted(Entry& e, const upstream::SubmitResult& result);
  void OnRejected(Entry& e, absl::Status status);
  void OnUnconfirmed(Entry& e, const absl::Status& why);
  void RetryDelete(const std::string& id);

  // ---- changes (tracker_poll.cc) ----
  // Applies `change` to a copy of the entry's record and writes it
  // (compare-and-set on the version). `bump`: a client-visible change
  // (revision + 1, update_time, estimate, webhook outbox). On a conflict the
  // entry is reloaded and `change` applied again to the fresh record.
  // `*evicted` is set when the entry is gone (terminal elsewhere, deleted or
  // leased away): the caller must not touch it then.
  absl::Status Write(Entry& e,
                     const std::function<void(store::Record&)>& change,
                     bool bump, bool* evicted);
  // Re-reads the entry after a conflict; evicts it when it is terminal, gone
  // or leased away. Returns false when evicted.
  bool Reload(Entry& e);
  void Evict(const std::string& id);
  // Fails the generation. Returns false when it was evicted meanwhile.
  bool Fail(Entry& e, absl::StatusCode code, const std::string& reason,
            const std::string& message);
  void SetEstimate(v1::Generation& g);

  // ---- polls, mirror, leases, recovery (tracker_poll.cc) ----
  void Adopt(store::Record record);
  void Schedule(Entry& e, absl::Time due);
  void Backoff(Entry& e);
  absl::Duration Jittered(absl::Duration d);
  void RunDuePolls();
  void OnPolled(const std::string& id, uint64_t token,
                absl::StatusOr<upstream::Snapshot> result);
  void StartMirror(Entry& e, v1::Generation completed);
  void OnMirrored(const std::string& id, v1::Generation completed,
                  absl::StatusOr<media::MirrorResult> result);
  void LeaseTick();
  // At Stop: hands this replica's poll leases back (shared stores).
  void ReleaseLeases();
  void ReconcileTick();
  void OnFoundInLog(const std::string& id, const upstream::LogRow& row);
  void OnNotFoundInLog(const std::string& id);

  const TrackerOptions options_;
  upstream::Upstream* const upstream_;
  store::Store* const store_;
  Clock* const clock_;
  const std::shared_ptr<Inbox> inbox_;

  // Loop-thread state: touched only by the thread running the loop (the
  // loop thread, or a test in RunUntilIdle).
  absl::node_hash_map<std::string, Entry> entries_;
  // tenant + '\n' + request_id -> id, for submits not answered yet.
  absl::flat_hash_map<std::string, std::string> by_request_;
  // Submits not yet handed to the upstream: tenant -> ids, oldest first.
  // No empty queues.
  std::map<std::string, std::deque<std::string>> submit_queues_;
  // Submits handed to the upstream and not answered yet, per tenant. No
  // zero counts.
  std::map<std::string, int> outstanding_submits_;
  PollSchedule schedule_;
  std::multimap<absl::Time, std::function<void()>> timers_;
  uint64_t next_poll_token_ = 1;
  std::mt19937_64 rng_;
  Reconciler reconciler_;
  absl::Time reconcile_due_ = absl::InfiniteFuture();
  bool reconcile_timer_set_ = false;
  bool stopping_ = false;

  // Read by the metrics thread.
  absl::Mutex counts_mu_;
  std::map<v1::Generation::State, int64_t> active_counts_
      ABSL_GUARDED_BY(counts_mu_);
  std::map<v1::Generation::State, int64_t> terminal_counts_
      ABSL_GUARDED_BY(counts_mu_);

  absl::Mutex control_mu_;  // serializes Start / Stop
  std::thread thread_ ABSL_GUARDED_BY(control_mu_);
  std::atomic<bool> stop_thread_{false};
};

}  // namespace videogen::core
