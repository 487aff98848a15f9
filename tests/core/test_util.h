#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/core/tracker.h"
#include "server/store/memory_store.h"

namespace videogen::core::testing {

// A shared, ordered log of what happened ("put:<id>:<rev>", "event:...").
class OrderLog {
 public:
  void Add(std::string entry) {
    absl::MutexLock lock(&mu_);
    entries_.push_back(std::move(entry));
  }
  std::vector<std::string> entries() const {
    absl::MutexLock lock(&mu_);
    return entries_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> entries_ ABSL_GUARDED_BY(mu_);
};

// A MemoryStore wrapper that counts and logs writes and can fail them.
// Thread-safe.
class TestStore final : public store::Store {
 public:
  explicit TestStore(OrderLog* log = nullptr) : log_(log) {}

  void FailWrites(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_ = std::move(status);
  }
  int put_count() const { return puts_.load(); }
  store::MemoryStore& inner() { return inner_; }

  absl::Status Put(const store::Record& record) override {
    {
      absl::MutexLock lock(&mu_);
      if (!fail_.ok()) return fail_;
    }
    ++puts_;
    absl::Status s = inner_.Put(record);
    if (s.ok() && log_ != nullptr) {
      log_->Add(absl::StrCat("put:", record.generation.id(), ":",
                             record.generation.revision()));
    }
    return s;
  }
  absl::Status Delete(std::string_view id) override {
    {
      absl::MutexLock lock(&mu_);
      if (!fail_.ok()) return fail_;
    }
    return inner_.Delete(id);
  }
  absl::StatusOr<std::optional<store::Record>> Get(
      std::string_view id) override {
    return inner_.Get(id);
  }
  absl::StatusOr<std::optional<store::Record>> GetByRequestId(
      std::string_view request_id) override {
    return inner_.GetByRequestId(request_id);
  }
  absl::StatusOr<std::vector<store::Record>> LoadActive() override {
    return inner_.LoadActive();
  }
  absl::StatusOr<store::ListPage> List(const store::ListQuery& q) override {
    return inner_.List(q);
  }
  absl::StatusOr<int64_t> PurgeTerminalBefore(absl::Time cutoff) override {
    return inner_.PurgeTerminalBefore(cutoff);
  }

 private:
  OrderLog* const log_;
  store::MemoryStore inner_;
  std::atomic<int> puts_{0};
  absl::Mutex mu_;
  absl::Status fail_ ABSL_GUARDED_BY(mu_);
};

// Records every event it gets. Thread-safe.
class RecordingSink final : public EventSink {
 public:
  explicit RecordingSink(OrderLog* log = nullptr) : log_(log) {}
  void OnEvent(EventPtr event) override {
    if (log_ != nullptr) {
      log_->Add(absl::StrCat("event:", event->generation().id(), ":",
                             event->generation().revision()));
    }
    absl::MutexLock lock(&mu_);
    events_.push_back(std::move(event));
  }
  std::vector<EventPtr> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<int64_t> revisions() const {
    absl::MutexLock lock(&mu_);
    std::vector<int64_t> out;
    for (const EventPtr& e : events_) out.push_back(e->generation().revision());
    return out;
  }
  size_t size() const {
    absl::MutexLock lock(&mu_);
    return events_.size();
  }
  EventPtr last() const {
    absl::MutexLock lock(&mu_);
    return events_.empty() ? nullptr : events_.back();
  }

 private:
  OrderLog* const log_;
  mutable absl::Mutex mu_;
  std::vector<EventPtr> events_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::core::testing
