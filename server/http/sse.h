#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/core/events.h"
#include "server/core/tracker.h"

namespace videogen::http {

// One Server-Sent Events frame: "id: 3\nevent: update\ndata: {...}\n\n".
std::string SseFrame(int64_t id, std::string_view event, std::string_view data);
// `event: error` with the AIP-193 JSON error as data and no id (so the
// client's Last-Event-ID stays at the last real revision).
std::string SseErrorFrame(const absl::Status& status);
// The heartbeat: a comment line, ignored by every SSE parser.
inline constexpr std::string_view kSseHeartbeat = ": heartbeat\n\n";

// Renders each event once for all the streams that carry it (1,000 streams
// on one generation share one JSON encoding). Keeps the last `capacity`
// events alive so that their addresses cannot be reused while cached.
// Thread-safe; encodes outside its lock.
class FrameCache {
 public:
  explicit FrameCache(size_t capacity = 128) : capacity_(capacity) {}
  std::shared_ptr<const std::string> Frame(const core::EventPtr& event);

 private:
  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<std::pair<core::EventPtr, std::shared_ptr<const std::string>>>
      ring_ ABSL_GUARDED_BY(mu_);
};

// The event sink of one SSE stream: the bounded backlog between the
// tracker's threads (OnEvent, never blocks: a lock, a push and at most one
// post to the stream's strand) and the stream's strand (Take). Drops what
// the client already has (revision at or below the last one queued, per
// generation). The stream takes the whole backlog at every write, so the
// backlog is what piled up while one write was in flight; past
// `max_backlog` events the client is not reading: the backlog is freed, the
// sink stops taking events and overflowed() tells the stream to end with an
// error that asks the client to resume. Events delivered before Start (the
// subscription's initial SNAPSHOTs, bounded by the live generations) do not
// count. Holds no executor or socket once closed, so the tracker may keep it
// for as long as it likes. Thread-safe.
class StreamSink : public core::EventSink {
 public:
  // `single`: one generation's stream, which ends after the terminal event.
  // `after_revision`: what the client has already seen (single streams).
  StreamSink(bool single, int64_t after_revision, size_t max_backlog);

  void OnEvent(core::EventPtr event) override;

  // Installs the wake-up (posts a pump to the stream's strand) and fires it
  // once if events are waiting. Called when the response headers are out.
  void Start(std::function<void()> wake);
  // The gateway said the generation is terminal already: end once drained.
  void MarkFinished();

  struct Batch {
    std::vector<core::EventPtr> events;
    bool overflowed = false;  // events were lost: end with an error
    bool done = false;        // nothing more will ever come: end cleanly
  };
  // Takes up to `max_events` queued events; re-arms the wake-up.
  Batch Take(size_t max_events);
  // True once events were lost to a full backlog.
  bool overflowed();

  // Stops taking events and drops the backlog and the wake-up. Idempotent.
  void Close();
  bool closed();

  // The gateway's subscription, once Watch has returned (which also ends the
  // subscribing window, see core::SnapshotFirst). Attach returns false when
  // the sink was closed already, and the caller must then Unwatch itself.
  // TakeSubscription hands the id out exactly once (0 when none or taken).
  bool AttachSubscription(uint64_t id);
  uint64_t TakeSubscription();

  // The largest backlog this sink ever held (for tests and metrics).
  size_t high_water();

 private:
  bool IsDuplicateLocked(const v1::Generation& g)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberLocked(const v1::Generation& g)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const bool single_;
  const size_t max_backlog_;

  absl::Mutex mu_;
  std::deque<core::EventPtr> backlog_ ABSL_GUARDED_BY(mu_);
  std::function<void()> wake_ ABSL_GUARDED_BY(mu_);
  bool wake_armed_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // terminal queued or known
  // Unbounded until Start (the initial SNAPSHOTs), then max_backlog_ more
  // than what Start found, then max_backlog_ after each Take.
  size_t limit_ ABSL_GUARDED_BY(mu_) = SIZE_MAX;
  uint64_t subscription_ ABSL_GUARDED_BY(mu_) = 0;
  // Single streams: SNAPSHOT first, UPDATEs after (events.h).
  core::SnapshotFirst types_ ABSL_GUARDED_BY(mu_);
  size_t high_water_ ABSL_GUARDED_BY(mu_) = 0;
  // Last revision queued per live generation. Terminal generations move to a
  // bounded FIFO of ids (they never change again), so a firehose that runs
  // for months does not grow without bound.
  std::unordered_map<std::string, int64_t> last_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> ended_order_ ABSL_GUARDED_BY(mu_);
  std::unordered_set<std::string> ended_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::http
