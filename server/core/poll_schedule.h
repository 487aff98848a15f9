#pragma once

#include <cstdint>
#include <queue>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace videogen::core {

// Next-due heap of polls, at most one live entry per generation id.
// Rescheduling or removing an id leaves its old heap item behind; stale items
// are skipped when they reach the top (lazy deletion). Not thread-safe: the
// Tracker guards it with its mutex.
class PollSchedule {
 public:
  // Sets the id's next poll to `due`, replacing any earlier entry.
  void Schedule(const std::string& id, absl::Time due);
  void Remove(const std::string& id);
  bool Contains(const std::string& id) const;
  // Removes and returns every id due at or before `now`, earliest first.
  std::vector<std::string> PopDue(absl::Time now);
  // The earliest live due time, InfiniteFuture when empty.
  absl::Time NextDue();
  size_t size() const { return live_.size(); }

 private:
  struct Item {
    absl::Time due;
    uint64_t seq;
    std::string id;
  };
  struct Later {
    bool operator()(const Item& a, const Item& b) const {
      return a.due > b.due || (a.due == b.due && a.seq > b.seq);
    }
  };
  void DropStaleTop();

  std::priority_queue<Item, std::vector<Item>, Later> heap_;
  absl::flat_hash_map<std::string, uint64_t> live_;  // id -> seq of its item
  uint64_t next_seq_ = 0;
};

}  // namespace videogen::core
