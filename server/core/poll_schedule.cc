#include "server/core/poll_schedule.h"

#include <string>
#include <vector>

namespace videogen::core {

void PollSchedule::Schedule(const std::string& id, absl::Time due) {
  const uint64_t seq = next_seq_++;
  live_[id] = seq;
  heap_.push(Item{due, seq, id});
}

void PollSchedule::Remove(const std::string& id) { live_.erase(id); }

bool PollSchedule::Contains(const std::string& id) const {
  return live_.contains(id);
}

void PollSchedule::DropStaleTop() {
  while (!heap_.empty()) {
    auto it = live_.find(heap_.top().id);
    if (it != live_.end() && it->second == heap_.top().seq) return;
    heap_.pop();
  }
}

std::vector<std::string> PollSchedule::PopDue(absl::Time now) {
  std::vector<std::string> due;
  for (DropStaleTop(); !heap_.empty() && heap_.top().due <= now;
       DropStaleTop()) {
    live_.erase(heap_.top().id);
    due.push_back(heap_.top().id);
    heap_.pop();
  }
  return due;
}

absl::Time PollSchedule::NextDue() {
  DropStaleTop();
  return heap_.empty() ? absl::InfiniteFuture() : heap_.top().due;
}

}  // namespace videogen::core
