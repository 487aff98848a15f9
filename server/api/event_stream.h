#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "server/api/gateway.h"
#include "server/auth/principal.h"
#include "server/core/events.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::api {

class StreamRegistry;

// One server-streaming RPC's outbox. The fan-out hub pushes events from its
// thread (OnEvent); gRPC callback threads report finished writes. Holds at
// most one write in flight and, per generation, only the newest pending
// event; an event at or below the revision already queued or sent for its
// generation is dropped (the hub and the SNAPSHOT may race). A terminal
// event is never replaced (nothing follows it). A firehose whose client
// stops reading can still pile up one event per generation, so past
// `max_backlog` pending events the stream ends RESOURCE_EXHAUSTED and the
// client resumes with fresh snapshots: memory stays bounded. Events go out
// pre-serialized (the reactor writes bytes): one event reaches every watcher
// of a generation, and it is serialized once for all of them. Thread-safe;
// never calls the reactor after Finish, and never calls the gateway while
// holding its own lock.
class EventStream : public core::EventSink,
                    public std::enable_shared_from_this<EventStream> {
 public:
  using Reactor = grpc::ServerWriteReactor<grpc::ByteBuffer>;

  // `ends_on_terminal`: finish with OK right after a terminal event (single
  // generation streams); the firehose never ends on its own. `method` is the
  // RPC's full name, for videogen_grpc_requests_total.
  EventStream(Reactor* reactor, Gateway* gateway, bool ends_on_terminal,
              size_t max_backlog, std::string method);

  void OnEvent(core::EventPtr event) override;

  // Subscribes to one generation; on error finishes the RPC with it.
  void WatchOne(const auth::Principal& who, const std::string& id,
                int64_t after_revision);
  void WatchAll(const auth::Principal& who,
                const v1::WatchGenerationsRequest& request);

  // Sends a heartbeat if the stream has been idle for `interval`.
  void MaybeHeartbeat(absl::Time now, absl::Duration interval);
  // Whether nothing was written since `cutoff` (a cheap hint, no lock).
  bool IdleSince(int64_t cutoff_unix_ns) const {
    return last_activity_ns_.load(std::memory_order_relaxed) <= cutoff_unix_ns;
  }
  // Drops pending events and finishes with `status` after any write in
  // flight. Used for errors, client cancel and drain.
  void Abort(const grpc::Status& status);

  // Reactor callbacks.
  void OnWriteDone(bool ok);
  void OnDone();

 private:
  // What to do next with the reactor, decided under the lock and done
  // outside it (gRPC may call back inline).
  struct Step {
    enum class Action {
      kNone,
      kWrite,
      kFinish,
      // The last event and the status in one batch: a watcher's terminal
      // round costs one gRPC operation per stream instead of two.
      kWriteAndFinish,
    } action = Action::kNone;
    Reactor* reactor = nullptr;
    const v1::GenerationEvent* event = nullptr;  // kWrite, kWriteAndFinish
    const grpc::ByteBuffer* wire = nullptr;      // kWrite, kWriteAndFinish
    grpc::Status status;                         // kFinish, kWriteAndFinish
  };
  Step NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Perform(const Step& step);
  bool HasPendingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearPendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pump();
  void SetSubscription(uint64_t id);

  Gateway* const gateway_;
  const bool ends_on_terminal_;
  const size_t max_backlog_;
  const std::string method_;

  absl::Mutex mu_;
  Reactor* reactor_ ABSL_GUARDED_BY(mu_);
  // The next event of a single-generation stream (newest wins).
  core::EventPtr next_ ABSL_GUARDED_BY(mu_);
  // The firehose's pending events, newest per generation, in arrival order.
  std::map<std::string, core::EventPtr> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);
  core::EventPtr in_flight_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer in_flight_wire_ ABSL_GUARDED_BY(mu_);  // in_flight_'s bytes
  std::optional<grpc::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t subscription_ ABSL_GUARDED_BY(mu_) = 0;
  std::string generation_id_ ABSL_GUARDED_BY(mu_);
  int64_t last_revision_ ABSL_GUARDED_BY(mu_) = 0;
  // Single-generation streams: SNAPSHOT first, UPDATEs after (events.h).
  core::SnapshotFirst types_ ABSL_GUARDED_BY(mu_);
  // Newest revision queued or sent per generation (firehose); terminal
  // generations leave it once their event is queued, as nothing follows.
  std::unordered_map<std::string, int64_t> newest_ ABSL_GUARDED_BY(mu_);
  // When the last write completed (or the stream began), in Unix
  // nanoseconds. Atomic so the heartbeat scan can skip busy streams without
  // taking every stream's lock each tick.
  std::atomic<int64_t> last_activity_ns_;
};

// The reactor gRPC drives: a thin shell that forwards to its EventStream and
// deletes itself in OnDone. Owned by gRPC between creation and OnDone.
class StreamReactor : public EventStream::Reactor {
 public:
  StreamReactor(Gateway* gateway, StreamRegistry* registry,
                const std::string& tenant, bool ends_on_terminal,
                std::string method);
  const std::shared_ptr<EventStream>& stream() const { return stream_; }
  // False when the server is draining; the RPC is then finished UNAVAILABLE.
  bool registered() const { return registered_; }

  void OnWriteDone(bool ok) override { stream_->OnWriteDone(ok); }
  void OnCancel() override;
  void OnDone() override;

 private:
  std::shared_ptr<EventStream> stream_;
  StreamRegistry* const registry_;
  const std::string tenant_;
  bool registered_ = false;
};

struct StreamLimits {
  int64_t max_streams = 100000;            // all tenants together
  int64_t max_streams_per_tenant = 10000;  // one tenant's share
  size_t max_backlog = 1024;               // pending events per stream
};

// Every live stream, for heartbeats, limits and drain. Runs one heartbeat
// thread for all streams (no thread per stream). Thread-safe.
class StreamRegistry {
 public:
  StreamRegistry(absl::Duration heartbeat_interval, StreamLimits limits = {});
  ~StreamRegistry();

  // UNAVAILABLE while draining; RESOURCE_EXHAUSTED past a limit.
  absl::Status Add(const std::shared_ptr<EventStream>& stream,
                   const std::string& tenant);
  void Remove(EventStream* stream, const std::string& tenant);
  int64_t size();
  const StreamLimits& limits() const { return limits_; }

  // Refuses new streams and finishes every live one with UNAVAILABLE.
  void Drain();
  // Waits up to `timeout` for every stream to be done.
  bool AwaitEmpty(absl::Duration timeout);

 private:
  void HeartbeatLoop();

  const absl::Duration interval_;
  const StreamLimits limits_;
  absl::Mutex mu_;
  std::unordered_map<EventStream*, std::weak_ptr<EventStream>> streams_
      ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, int64_t> per_tenant_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread heartbeat_thread_;
};

}  // namespace videogen::api
