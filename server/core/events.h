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
// below the revision it already holds for that generation.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnEvent(EventPtr event) = 0;
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
