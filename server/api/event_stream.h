#pragma once

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
#include "server/core/tracker.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::api {

class StreamRegistry;

// One server-streaming RPC's outbox. The tracker pushes events from its
// threads (OnEvent); gRPC callback threads report finished writes. Holds at
// most one write in flight and, per generation, only the newest pending
// event, so a slow client costs bounded memory. A terminal event is never
// replaced (nothing follows it). Thread-safe; never calls the reactor after
// Finish, and never calls the tracker while holding its own lock.
class EventStream : public core::EventSink,
                    public std::enable_shared_from_this<EventStream> {
 public:
  using Reactor = grpc::ServerWriteReactor<v1::GenerationEvent>;

  // `ends_on_terminal`: finish with OK right after a terminal event (single
  // generation streams); the firehose never ends on its own.
  EventStream(Reactor* reactor, core::Tracker* tracker, bool ends_on_terminal);

  void OnEvent(core::EventPtr event) override;

  // Subscribes to one generation; on error finishes the RPC with it.
  void WatchOne(const std::string& id, int64_t after_revision);
  void WatchAll(const core::Filter& filter);

  // Sends a heartbeat if the stream has been idle for `interval`.
  void MaybeHeartbeat(absl::Time now, absl::Duration interval);
  // Drops pending events and finishes with `status` after any write in
  // flight. Used for errors, client cancel and drain.
  void Abort(const grpc::Status& status);

  // Reactor callbacks.
  void OnWriteDone(bool ok);
  void OnDone();

 private:
  enum class Action { kNone, kWrite, kFinish };
  // Decides the next step under the lock; Perform runs it unlocked.
  Action NextLocked(const v1::GenerationEvent** msg, grpc::Status* status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pump();
  void SetSubscription(uint64_t id);

  core::Tracker* const tracker_;
  const bool ends_on_terminal_;

  absl::Mutex mu_;
  Reactor* reactor_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, core::EventPtr> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);
  core::EventPtr in_flight_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> finish_ ABSL_GUARDED_BY(mu_);
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t subscription_ ABSL_GUARDED_BY(mu_) = 0;
  std::string generation_id_ ABSL_GUARDED_BY(mu_);
  int64_t last_revision_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_activity_ ABSL_GUARDED_BY(mu_);
};

// The reactor gRPC drives: a thin shell that forwards to its EventStream and
// deletes itself in OnDone. Owned by gRPC between creation and OnDone.
class StreamReactor : public grpc::ServerWriteReactor<v1::GenerationEvent> {
 public:
  StreamReactor(core::Tracker* tracker, StreamRegistry* registry,
                bool ends_on_terminal);
  const std::shared_ptr<EventStream>& stream() const { return stream_; }
  // False when the server is draining; the RPC is then finished UNAVAILABLE.
  bool registered() const { return registered_; }

  void OnWriteDone(bool ok) override { stream_->OnWriteDone(ok); }
  void OnCancel() override;
  void OnDone() override;

 private:
  std::shared_ptr<EventStream> stream_;
  StreamRegistry* const registry_;
  bool registered_ = false;
};

// Every live stream, for heartbeats and drain. Runs one heartbeat thread for
// all streams (no thread per stream). Thread-safe.
class StreamRegistry {
 public:
  explicit StreamRegistry(absl::Duration heartbeat_interval);
  ~StreamRegistry();

  bool Add(const std::shared_ptr<EventStream>& stream);
  void Remove(EventStream* stream);
  int64_t size();

  // Refuses new streams and finishes every live one with UNAVAILABLE.
  void Drain();
  // Waits up to `timeout` for every stream to be done.
  bool AwaitEmpty(absl::Duration timeout);

 private:
  void HeartbeatLoop();

  const absl::Duration interval_;
  absl::Mutex mu_;
  std::unordered_map<EventStream*, std::weak_ptr<EventStream>> streams_
      ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread heartbeat_thread_;
};

}  // namespace videogen::api
