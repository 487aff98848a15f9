#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/clock.h"
#include "server/core/events.h"
#include "server/store/store.h"

namespace videogen::core {

// Fan-out driven by the store's change feed (design.md §3, §6): the store
// announces each committed revision, the hub queues it, and its own
// dispatch thread hands one shared event to every matching sink. Nothing
// here runs under a tracker lock, and no write path waits for a sink.
//
// Subscribe registers the sink first and then reads the current state from
// the store, so no committed change can fall between the read and the
// registration; a change that races the read may reach the sink before the
// SNAPSHOT, and the sink drops whichever is older (EventSink's contract).
//
// Thread-safe. The dispatch thread owns delivery; `mu_` guards only the
// subscription tables and the queue, and is never held while calling a sink
// or the store.
class FanoutHub {
 public:
  // Becomes `store->feed()`'s listener until destruction.
  FanoutHub(store::Store* store, Clock* clock);
  ~FanoutHub();
  FanoutHub(const FanoutHub&) = delete;
  FanoutHub& operator=(const FanoutHub&) = delete;

  // One generation. `tenant` "" sees every tenant's; another tenant's
  // generation, or one whose submit is not answered yet (revision 0), is
  // NOT_FOUND. OUT_OF_RANGE when `after_revision` is above the current
  // revision (the client holds a revision this server never made).
  absl::StatusOr<Subscription> Subscribe(const std::string& id,
                                         const std::string& tenant,
                                         int64_t after_revision,
                                         std::shared_ptr<EventSink> sink);
  // Firehose: a SNAPSHOT of each matching non-terminal generation (oldest
  // first), then every matching change.
  absl::StatusOr<Subscription> SubscribeAll(const Filter& filter,
                                            std::shared_ptr<EventSink> sink);
  void Unsubscribe(uint64_t subscription_id);

  // The feed listener; also callable directly (tests). Never blocks.
  void Publish(const store::Change& change);
  // Waits until every change published so far was delivered. For tests and
  // drain.
  void Flush();

  int64_t subscriptions();

 private:
  struct Sub {
    std::string id;  // "" for a firehose subscription
    Filter filter;
    std::shared_ptr<EventSink> sink;
  };

  void DispatchLoop();
  void Deliver(const store::Change& change);

  store::Store* const store_;
  Clock* const clock_;

  absl::Mutex mu_;
  std::deque<store::Change> queue_ ABSL_GUARDED_BY(mu_);
  int64_t published_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t delivered_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_sub_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Sub> subs_ ABSL_GUARDED_BY(mu_);
  // generation id -> subscription ids watching it.
  absl::flat_hash_map<std::string,
                      std::map<uint64_t, std::shared_ptr<EventSink>>>
      by_id_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Sub> firehose_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace videogen::core
