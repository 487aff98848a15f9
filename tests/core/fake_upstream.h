#pragma once

#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/upstream/upstream.h"

namespace videogen::core::testing {

// A scripted Upstream. Submits open their gate at once (or wait for
// OpenGates), and once sent answer from a script (set_submit_result) or wait
// for ResolveSubmits; polls answer from a FIFO script or wait for
// ResolvePolls; the usage log answers from rows the test adds. Thread-safe;
// callbacks run outside its mutex, on the calling thread.
class FakeUpstream final : public upstream::Upstream {
 public:
  // ---- submits ----
  void set_submit_result(absl::StatusOr<upstream::SubmitResult> result) {
    absl::MutexLock lock(&mu_);
    submit_result_ = std::move(result);
    auto_submit_ = true;
  }
  // Sent submits wait for ResolveSubmits.
  void HoldSubmits() {
    absl::MutexLock lock(&mu_);
    auto_submit_ = false;
  }
  void ResolveSubmits(absl::StatusOr<upstream::SubmitResult> result) {
    std::vector<upstream::SubmitCallback> pending;
    {
      absl::MutexLock lock(&mu_);
      pending.swap(sent_waiting_);
    }
    for (auto& done : pending) done(result);
  }
  // Later submits wait before `ready` (the rate limiter) until OpenGates.
  void HoldGates() {
    absl::MutexLock lock(&mu_);
    hold_gates_ = true;
  }
  void OpenGates() {
    std::vector<std::pair<upstream::SubmitReadyCallback,
                          std::shared_ptr<upstream::SubmitGate>>>
        ready;
    {
      absl::MutexLock lock(&mu_);
      hold_gates_ = false;
      ready.swap(gates_waiting_);
    }
    for (auto& [cb, gate] : ready) cb(gate);
  }
  // Cancels submits whose gate never opened (what a shutdown does).
  void CancelUnopened() {
    std::vector<std::pair<upstream::SubmitReadyCallback,
                          std::shared_ptr<upstream::SubmitGate>>>
        waiting;
    {
      absl::MutexLock lock(&mu_);
      waiting.swap(gates_waiting_);
    }
    for (auto& [cb, gate] : waiting) {
      static_cast<Gate*>(gate.get())->Cancel();
    }
  }

  void Submit(upstream::SubmitRequest request,
              upstream::SubmitReadyCallback ready,
              upstream::SubmitCallback done) override {
    auto gate =
        std::make_shared<Gate>(this, std::move(request), std::move(done));
    {
      absl::MutexLock lock(&mu_);
      ++submits_started_;
      if (hold_gates_) {
        gates_waiting_.emplace_back(std::move(ready), gate);
        return;
      }
    }
    ready(gate);
  }

  // ---- polls ----
  void PushPoll(absl::StatusOr<upstream::Snapshot> result) {
    absl::MutexLock lock(&mu_);
    poll_script_.push_back(std::move(result));
  }
  void ResolvePolls(absl::StatusOr<upstream::Snapshot> result) {
    std::vector<upstream::PollCallback> pending;
    {
      absl::MutexLock lock(&mu_);
      pending.swap(pending_polls_);
    }
    for (auto& done : pending) done(result);
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

  // ---- usage log ----
  void AddLogRow(upstream::LogRow row) {
    absl::MutexLock lock(&mu_);
    log_rows_.insert(log_rows_.begin(), std::move(row));  // newest first
  }
  // The next usage-log answers are these errors (FIFO), then rows again.
  void PushLogError(absl::Status error) {
    absl::MutexLock lock(&mu_);
    log_errors_.push_back(std::move(error));
  }
  void ListLogs(upstream::LogQuery query,
                upstream::LogsCallback done) override {
    absl::StatusOr<upstream::LogPage> answer;
    {
      absl::MutexLock lock(&mu_);
      log_queries_.push_back(query);
      if (!log_errors_.empty()) {
        answer = log_errors_.front();
        log_errors_.pop_front();
      } else {
        upstream::LogPage page;
        page.total = static_cast<int64_t>(log_rows_.size());
        for (size_t i = query.offset;
             i < log_rows_.size() &&
             i < static_cast<size_t>(query.offset + query.limit);
             ++i) {
          page.rows.push_back(log_rows_[i]);
        }
        page.has_more =
            static_cast<size_t>(query.offset + query.limit) < log_rows_.size();
        answer = std::move(page);
      }
    }
    done(std::move(answer));
  }

  // ---- what happened ----
  // POSTs that left (gate opened and Send called).
  int submit_count() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(sent_.size());
  }
  int submits_started() const {
    absl::MutexLock lock(&mu_);
    return submits_started_;
  }
  int abandoned() const {
    absl::MutexLock lock(&mu_);
    return abandoned_;
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
    return sent_;
  }
  std::vector<upstream::PollRequest> polls() const {
    absl::MutexLock lock(&mu_);
    return polls_;
  }
  std::vector<upstream::LogQuery> log_queries() const {
    absl::MutexLock lock(&mu_);
    return log_queries_;
  }

 private:
  class Gate final : public upstream::SubmitGate {
   public:
    Gate(FakeUpstream* up, upstream::SubmitRequest request,
         upstream::SubmitCallback done)
        : up_(up), request_(std::move(request)), done_(std::move(done)) {}
    void Send() override { up_->Sent(request_, TakeDone()); }
    void Abandon() override {
      {
        absl::MutexLock lock(&up_->mu_);
        ++up_->abandoned_;
      }
      if (auto done = TakeDone()) done(absl::AbortedError("abandoned"));
    }
    void Cancel() {
      if (auto done = TakeDone()) done(absl::CancelledError("shutting down"));
    }

   private:
    upstream::SubmitCallback TakeDone() {
      absl::MutexLock lock(&mu_);
      upstream::SubmitCallback done;
      done.swap(done_);
      return done;
    }
    FakeUpstream* const up_;
    const upstream::SubmitRequest request_;
    absl::Mutex mu_;
    upstream::SubmitCallback done_ ABSL_GUARDED_BY(mu_);
  };

  void Sent(const upstream::SubmitRequest& request,
            upstream::SubmitCallback done) {
    if (!done) return;
    absl::StatusOr<upstream::SubmitResult> result;
    {
      absl::MutexLock lock(&mu_);
      sent_.push_back(request);
      if (!auto_submit_) {
        sent_waiting_.push_back(std::move(done));
        return;
      }
      result = submit_result_;
    }
    done(std::move(result));
  }

  mutable absl::Mutex mu_;
  bool auto_submit_ ABSL_GUARDED_BY(mu_) = true;
  bool hold_gates_ ABSL_GUARDED_BY(mu_) = false;
  absl::StatusOr<upstream::SubmitResult> submit_result_ ABSL_GUARDED_BY(mu_) =
      upstream::SubmitResult{"up-1", "queued"};
  int submits_started_ ABSL_GUARDED_BY(mu_) = 0;
  int abandoned_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::pair<upstream::SubmitReadyCallback,
                        std::shared_ptr<upstream::SubmitGate>>>
      gates_waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::SubmitCallback> sent_waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::SubmitRequest> sent_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<upstream::Snapshot>> poll_script_
      ABSL_GUARDED_BY(mu_);
  std::vector<upstream::PollCallback> pending_polls_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::PollRequest> polls_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::LogRow> log_rows_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::Status> log_errors_ ABSL_GUARDED_BY(mu_);
  std::vector<upstream::LogQuery> log_queries_ ABSL_GUARDED_BY(mu_);
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
