#pragma once

#include <deque>
#include <memory>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/store/store.h"

namespace videogen::store {

// The change feed of an in-process store (MemoryStore, SqliteStore).
//
// Ordering. A store calls Enqueue() while it still holds the lock that
// serialized the commit, so the queue is in commit order, and Flush() after
// releasing every lock. Flush() delivers the queue front to back, one change
// at a time, and only one thread delivers at a time: a thread that finds
// another one delivering leaves its changes to it. So every listener call
// happens outside every store lock, yet two changes (of one generation or
// of two) can never reach the listener out of commit order, and the listener
// may call back into the store (Get, even Update) without deadlock.
//
// Why not a "publish mutex" taken before the store lock is released: the
// listener would then run under that mutex while a committing thread holds
// the store lock and waits for it, and a listener that calls Get (which
// takes the store lock) would deadlock. The queue has no such cycle: its
// mutex is never held while calling out or while waiting for a store lock.
//
// The price: an Update may return before its change is delivered (by
// another thread, moments later). store.h promises only "after commit".
//
// Thread-safe. The queue is unbounded: the listener must not block
// (store.h), so it drains as fast as changes commit.
class ChangePublisher final : public ChangeFeed {
 public:
  // Replaces the listener. When it returns, no call of the old listener is
  // running any more (unless SetListener is called from inside the
  // listener), so its owner may be destroyed right after
  // SetListener(nullptr).
  void SetListener(Listener listener) override {
    absl::MutexLock lock(&mu_);
    listener_ = listener ? std::make_shared<const Listener>(std::move(listener))
                         : nullptr;
    if (drainer_ == std::this_thread::get_id()) return;
    // A CondVar rather than Await(Condition): the loop reads calling_ under
    // mu_ where ThreadSanitizer's absl::Mutex shim can see it.
    while (calling_) call_done_.Wait(&mu_);
  }

  // True when a listener is set: lets a store skip building a Change nobody
  // will see.
  bool HasListener() const {
    absl::MutexLock lock(&mu_);
    return listener_ != nullptr;
  }

  // Queues a committed change. Call it under the store lock that serialized
  // the commit; never blocks for long (no listener runs under mu_).
  void Enqueue(Change change) {
    absl::MutexLock lock(&mu_);
    if (listener_ == nullptr) return;
    queue_.push_back(std::move(change));
  }

  // Delivers what is queued, unless another thread is delivering already (it
  // delivers these too before it stops). Call with no store lock held.
  void Flush() {
    absl::MutexLock lock(&mu_);
    if (draining_) return;
    draining_ = true;
    drainer_ = std::this_thread::get_id();
    while (!queue_.empty()) {
      Change change = std::move(queue_.front());
      queue_.pop_front();
      std::shared_ptr<const Listener> listener = listener_;
      if (listener == nullptr) continue;
      calling_ = true;
      mu_.Unlock();
      (*listener)(change);
      mu_.Lock();
      calling_ = false;
      call_done_.SignalAll();
    }
    draining_ = false;
    drainer_ = std::thread::id();
  }

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const Listener> listener_ ABSL_GUARDED_BY(mu_);
  std::deque<Change> queue_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool calling_ ABSL_GUARDED_BY(mu_) = false;
  absl::CondVar call_done_;  // signalled when calling_ goes false
  std::thread::id drainer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::store
