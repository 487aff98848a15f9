#pragma once

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/upstream/upstream.h"

namespace videogen::core::testing {

// A scripted Upstream. Submits and polls either answer at once from a script
// (set_submit_result / PushPoll) or wait until the test resolves them.
// Thread-safe; callbacks run outside its mutex, on the calling thread.
class FakeUpstream final : public upstream::Upstream {
 public:
  // Every later Submit answers at once with `result`.
  void set_submit_result(absl::StatusOr<upstream::SubmitResult> result) {
    absl::MutexLock lock(&mu_);
    submit_result_ = std::move(result);
    auto_submit_ = true;
  }
  // Later Submits wait for ResolveSubmits.
  void HoldSubmits() {
    absl::MutexLock lock(&mu_);
    auto_submit_ = false;
  }
  // Answers every waiting submit with `result`.
  void ResolveSubmits(absl::StatusOr<upstream::SubmitResult> result) {
    std::vector<upstream::SubmitCallback> pending;
    {
      absl::MutexLock lock(&mu_);
      pending.swap(pending_submits_);
    }
    for (auto& done : pending) done(result);
  }

  // The next poll answers at once with `result` (FIFO).
  void PushPoll(absl::StatusOr<upstream::Snapshot> result) {
    absl::MutexLock lock(&mu_);
    poll_script_.push_back(std::move(result));
  }
  // Answers every waiting poll with `result`.
  void ResolvePolls(absl::StatusOr<upstream::Snapshot> result) {
    std::vector<upstream::PollCallback> pending;
    {
      absl::MutexLock lock(&mu_);
      pending.swap(pending_polls_);
    }
    for (auto& done : pending) done(result);
  }

  void Submit(upstream::SubmitRequest request,
              upstream::SubmitCallback done) override {
    absl::StatusOr<upstream::SubmitResult> result;
    {
      absl::MutexLock lock(&mu_);
      submits_.push_back(std::move(request));
      if (!auto_submit_) {
        pending_submits_.push_back(std::move(done));
        return;
      }
      result = submit_result_;
    }
    done(std::move(result));
  }

  void Poll(upstream::PollRequest request,
            upstream::PollCallback done) override {
    absl::StatusOr<upstream::Snapshot> result;
    {
      absl::MutexLock lock(&mu_);
      polls_.push_back(std::move(request));
      if (poll_script_.empty()) {
        pending_polls_.push_back(std::move(done));
        return;
      }
      result = std::move(poll_script_.front());
      poll_script_.pop_front();
    }
    done(std::move(result));
  }

  int submit_count() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(submits_.size());
  }
  int poll_count() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(polls_.size());
  }
  int pending_poll_count() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(pending_polls_.size());
  }
  std::vector<upstream::SubmitRequest> submits() const {
    absl::MutexLock lock(&mu_);
    return submits_;
  }
  std::vector<upstream::PollRequest> polls() const {
    absl::MutexLock lock(&mu_);
    return polls_;
  }

 private:
  mutable absl::Mutex mu_;
  bool auto_submit_ ABSL_GUARDED_BY(mu_) = true;
  absl::StatusOr<upstream::SubmitResult> submit_result_ ABSL_GUARDED_BY(mu_) =
      upstream::SubmitResult{"up-1", "queued"};
  std::vector<upstream::SubmitCallback> pending_submits_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<upstream::Snapshot>> poll_script_
      ABSL_GUARDED_BY(mu_);
  std::vector<upstream::PollCallback> pending_polls_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::SubmitRequest> submits_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::PollRequest> polls_ ABSL_GUARDED_BY(mu_);
};

// Snapshot helpers for scripts.
inline upstream::Snapshot Snap(upstream::TaskState state, std::string raw) {
  upstream::Snapshot s;
  s.upstream_id = "up-1";
  s.state = state;
  s.raw_status = std::move(raw);
  return s;
}

}  // namespace videogen::core::testing
