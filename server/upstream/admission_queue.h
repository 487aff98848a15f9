#pragma once

#include <cstddef>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace videogen::upstream {

// What a waiting call is, for the admission order below.
enum class AdmissionClass {
  // Polls of accepted jobs and usage-log pages: reads that track work
  // already paid for.
  kRead,
  // Creates.
  kSubmit,
};

// The calls waiting for a rate-limiter token and an in-flight slot of the
// upstream client, in the order they are admitted (issue 17: one tenant's
// burst of creates must starve neither another tenant's polls nor its
// creates, nor delay the polls of its own accepted jobs):
//  - Each lane (a tenant; the usage log has its own) has two FIFOs, and the
//    lanes with anything waiting take turns, one call each, in name order
//    starting after the lane served last. So another tenant's poll or
//    create waits for at most one call of each other lane, however much
//    that lane has queued.
//  - On its turn a lane sends its oldest read if it has one, else its
//    oldest submit: a tenant's backlog of creates never delays the polls of
//    its accepted jobs, and with one tenant (--auth=none) every poll goes
//    before every waiting create.
// Why not every read of every tenant before any submit: a tenant with many
// accepted jobs can then fill the whole rate with its polls, and another
// tenant's create waits until those jobs end (seen: 6 s at 10 requests/s).
// Its own creates do wait for its polls, which is the point: it does not
// start more jobs than the rate lets it watch.
// Not thread-safe: owned by the thread that runs the limiter (the
// AimlApiUpstream loop thread).
template <typename T>
class AdmissionQueue {
 public:
  void Push(AdmissionClass cls, const std::string& lane, T item) {
    Lane& l = lanes_[lane];
    (cls == AdmissionClass::kRead ? l.reads : l.submits)
        .push_back(std::move(item));
    ++size_;
  }

  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }

  // Removes and returns the next call to admit. The queue must not be empty.
  T Pop() {
    if (lanes_.empty()) return T();  // unreachable while the precondition holds
    // Round-robin: the first lane after the one served last.
    auto it = served_any_ ? lanes_.upper_bound(last_served_) : lanes_.begin();
    if (it == lanes_.end()) it = lanes_.begin();
    last_served_ = it->first;
    served_any_ = true;
    Lane& l = it->second;
    std::deque<T>& from = l.reads.empty() ? l.submits : l.reads;
    T item = std::move(from.front());
    from.pop_front();
    if (l.reads.empty() && l.submits.empty()) lanes_.erase(it);
    --size_;
    return item;
  }

  // Removes and returns everything, in no particular order (for shutdown).
  std::vector<T> TakeAll() {
    std::vector<T> out;
    out.reserve(size_);
    for (auto& [name, lane] : lanes_) {
      for (T& item : lane.reads) out.push_back(std::move(item));
      for (T& item : lane.submits) out.push_back(std::move(item));
    }
    lanes_.clear();
    size_ = 0;
    return out;
  }

 private:
  struct Lane {
    std::deque<T> reads;
    std::deque<T> submits;
  };

  // Never holds a lane with nothing waiting.
  std::map<std::string, Lane> lanes_;
  std::string last_served_;
  bool served_any_ = false;
  size_t size_ = 0;
};

}  // namespace videogen::upstream
