#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/media/download.h"
#include "server/media/media_store.h"
#include "server/media/mirror.h"

namespace videogen::media {

// Counters for the metrics endpoint (design.md §11): bytes mirrored,
// copies, failures by reason. Thread-safe.
class MirrorStats {
 public:
  struct Snapshot {
    int64_t bytes_mirrored = 0;
    int64_t copies = 0;
    std::map<std::string, int64_t> failures;  // by DownloadFailure::reason,
                                              // plus "store"
  };
  void AddCopy(int64_t bytes);
  void AddFailure(absl::string_view reason);
  Snapshot snapshot() const;

 private:
  mutable absl::Mutex mu_;
  Snapshot s_ ABSL_GUARDED_BY(mu_);
};

struct MirrorOptions {
  int threads = 2;  // concurrent downloads
  DownloadOptions download;
  int store_attempts = 3;  // Put retries, with download's back-off
  std::string url_prefix = "/v1/media/";
  MirrorStats* stats = nullptr;  // optional, not owned
};

// A Mirror over `store` (not owned; must outlive the mirror). Destroying it
// aborts running downloads (their temp files are deleted) and answers every
// job not done with CANCELLED, on the pool threads, before it returns.
std::unique_ptr<Mirror> NewMirror(MediaStore* store, MirrorOptions options);

}  // namespace videogen::media
