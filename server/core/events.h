#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "videogen/v1/video_generation.pb.h"

namespace videogen::core {

// Immutable snapshot shared by every reader and every sink.
using GenerationPtr = std::shared_ptr<const v1::Generation>;
// Immutable event, built once per change and shared by every sink.
using EventPtr = std::shared_ptr<const v1::GenerationEvent>;

// Receives events for one subscription. Called from the fan-out hub's
// dispatch thread, and once from the subscribing thread (the SNAPSHOT),
// with no core lock held; it must not block. Events of one generation can
// arrive out of order across those two threads (a SNAPSHOT racing an
// UPDATE), and a revision may arrive twice: a sink drops anything at or
// below the revision it already holds for that generation. A
// single-generation sink types what it sends with SnapshotFirst (below).
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnEvent(EventPtr event) = 0;
};

// Types a single-generation stream's events: its first event is the
// SNAPSHOT and every later one an UPDATE (design.md §2), whichever path each
// came by. A change that races Subscribe reaches the sink from the hub as an
// UPDATE, before Subscribe's SNAPSHOT of the same revision (which the sink
// then drops as a duplicate) or before a newer SNAPSHOT (which then follows
// it). Subscribe is taken as one instant after every change that raced it:
// while it runs, the first event the sink accepts is the SNAPSHOT; once it
// has returned with no SNAPSHOT due, each change is a real UPDATE. Only a
// retyped event is copied (the race), so watchers keep sharing the hub's.
// Header-only (server/http uses no core library). Not thread-safe: the
// sink calls it under its own lock.
class SnapshotFirst {
 public:
  // `event` (accepted by the sink) with the type it must go out with.
  EventPtr Type(EventPtr event) {
    const v1::GenerationEvent::Type want =
        subscribing_ && first_ ? v1::GenerationEvent::TYPE_SNAPSHOT
                               : v1::GenerationEvent::TYPE_UPDATE;
    first_ = false;
    if (event->type() == want) return event;
    auto retyped = std::make_shared<v1::GenerationEvent>(*event);
    retyped->set_type(want);
    return retyped;
  }
  // Subscribe has returned.
  void Subscribed() { subscribing_ = false; }

 private:
  bool subscribing_ = true;
  bool first_ = true;
};

// Filter for firehose subscriptions.
struct Filter {
  std::string tenant;                         // "" = every tenant
  std::set<v1::Generation::State> states;     // empty = all
  std::map<std::string, std::string> labels;  // all must match
  bool Matches(const v1::Generation& g) const;
};

struct Subscription {
  uint64_t id = 0;  // 0 when nothing was registered
  // True when the generation is already terminal: any SNAPSHOT due was
  // delivered during Subscribe and nothing more will come.
  bool finished = false;
};

}  // namespace videogen::core
