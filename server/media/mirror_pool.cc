#include "server/media/mirror_pool.h"

#include <unistd.h>

#include <deque>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace videogen::media {

void MirrorStats::AddCopy(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  s_.bytes_mirrored += bytes;
  ++s_.copies;
}

void MirrorStats::AddFailure(absl::string_view reason) {
  absl::MutexLock lock(&mu_);
  ++s_.failures[std::string(reason)];
}

MirrorStats::Snapshot MirrorStats::snapshot() const {
  absl::MutexLock lock(&mu_);
  return s_;
}

namespace {

std::string TempName() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

// A fixed pool of download threads fed by a FIFO queue. Thread-safe: Copy
// may be called from any thread; jobs and their callbacks run on the pool
// threads, with no lock held.
class PoolMirror final : public Mirror {
 public:
  PoolMirror(MediaStore* store, MirrorOptions options)
      : store_(store), options_(std::move(options)) {
    int n = std::max(1, options_.threads);
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Run(); });
  }

  ~PoolMirror() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      work_.SignalAll();
    }
    stop_.Notify();  // aborts transfers and back-off waits
    for (std::thread& t : threads_) t.join();
  }

  void Copy(MirrorJob job, MirrorCallback done) override {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        queue_.emplace_back(std::move(job), std::move(done));
        work_.Signal();
        return;
      }
    }
    done(absl::CancelledError("mirror stopped"));
  }

 private:
  using Item = std::pair<MirrorJob, MirrorCallback>;

  void Run() {
    while (true) {
      Item item;
      {
        absl::MutexLock lock(&mu_);
        // A CondVar rather than Await(Condition): the waiter itself checks
        // the predicate, which ThreadSanitizer's Abseil shim can follow.
        while (!stopping_ && queue_.empty()) work_.Wait(&mu_);
        if (queue_.empty()) return;  // stopping, nothing left to answer
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      absl::StatusOr<MirrorResult> result =
          stop_.HasBeenNotified() ? absl::CancelledError("mirror stopped")
                                  : CopyOne(item.first);
      item.second(std::move(result));
    }
  }

  void CountFailure(absl::string_view reason) {
    if (options_.stats != nullptr) options_.stats->AddFailure(reason);
  }

  absl::StatusOr<MirrorResult> CopyOne(const MirrorJob& job) {
    if (!ValidMediaId(job.generation_id)) {
      CountFailure("invalid");
      return absl::InvalidArgumentError("bad generation id");
    }
    std::string temp = absl::StrCat(store_->staging_dir(), "/.tmp-",
                                    job.generation_id, "-", TempName());
    DownloadFailure failure;
    absl::StatusOr<Downloaded> got =
        DownloadToFile(job, temp, options_.download, &stop_, &failure);
    if (!got.ok()) {
      unlink(temp.c_str());
      CountFailure(failure.reason);
      return got.status();
    }
    MediaObject object{got->size, got->content_type, got->sha256, ""};
    absl::Status put = PutWithRetries(job.generation_id, temp, object);
    unlink(temp.c_str());  // gone already when the local store moved it
    if (!put.ok()) {
      CountFailure(absl::IsCancelled(put) ? "cancelled" : "store");
      return put;
    }
    if (options_.stats != nullptr) options_.stats->AddCopy(got->size);
    return MirrorResult{options_.url_prefix + job.generation_id, got->sha256,
                        got->size};
  }

  absl::Status PutWithRetries(const std::string& id, const std::string& temp,
                              const MediaObject& object) {
    absl::Status s;
    absl::Duration wait = options_.download.initial_backoff;
    for (int i = 0; i < std::max(1, options_.store_attempts); ++i) {
      if (i > 0) {
        if (stop_.WaitForNotificationWithTimeout(wait)) {
          return absl::CancelledError("mirror stopped");
        }
        wait = std::min(wait * 2, options_.download.max_backoff);
      }
      s = store_->Put(id, temp, object);
      if (s.ok() || absl::IsInvalidArgument(s)) break;
    }
    if (s.ok()) return s;
    // Fit for Video.mirror_error; store messages carry no secrets.
    return absl::Status(s.code(), absl::StrCat("media store: ", s.message()));
  }

  MediaStore* const store_;
  const MirrorOptions options_;
  absl::Notification stop_;
  absl::Mutex mu_;
  absl::CondVar work_;  // signalled on a new job and at stop
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

}  // namespace

std::unique_ptr<Mirror> NewMirror(MediaStore* store, MirrorOptions options) {
  return std::make_unique<PoolMirror>(store, std::move(options));
}

}  // namespace videogen::media
