#include "server/sim/elastic_pool.h"

#include <utility>

namespace videogen::sim {

void ElasticPool::enqueue(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return;
  tasks_.push_back(std::move(fn));
  // Every queued task beyond the idle workers needs a thread of its own.
  if (tasks_.size() > idle_ && threads_.size() < max_threads_) {
    ++idle_;  // the new worker counts as idle until it takes a task
    threads_.emplace_back([this] { Work(); });
  }
}

void ElasticPool::shutdown() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
}

size_t ElasticPool::threads() const {
  absl::MutexLock lock(&mu_);
  return threads_.size();
}

bool ElasticPool::HasWork() const { return shutting_down_ || !tasks_.empty(); }

void ElasticPool::Work() {
  for (;;) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &ElasticPool::HasWork));
      if (tasks_.empty()) return;  // shutting down and drained
      fn = std::move(tasks_.front());
      tasks_.pop_front();
      --idle_;
    }
    fn();
    absl::MutexLock lock(&mu_);
    ++idle_;
  }
}

}  // namespace videogen::sim
