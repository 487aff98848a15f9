#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/media/mirror.h"

namespace videogen::media {

struct DownloadOptions {
  int64_t max_bytes = int64_t{4} << 30;  // 4 GiB
  // Attempts that end without a single new byte; attempts that advance the
  // file resume with Range and do not count (up to `max_resumes`).
  int attempts = 4;
  int max_resumes = 20;
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration connect_timeout = absl::Seconds(15);
  // An attempt stalls (and is retried) when it moves fewer than
  // `low_speed_bytes` per second for `low_speed_time`.
  int64_t low_speed_bytes = 1024;
  absl::Duration low_speed_time = absl::Seconds(60);
};

// Why a download failed, as a metric label: "not_found", "http_status",
// "truncated", "size_mismatch", "too_large", "content_type", "empty",
// "network", "timeout", "cancelled", "io".
struct DownloadFailure {
  std::string reason;
  // Fit for Video.mirror_error: "upstream answered 404", "truncated: got N
  // of M bytes", "size mismatch: got N bytes, expected M", ... Never the
  // URL (it may carry a signature).
  absl::Status status;
  bool permanent = false;  // retrying cannot help
};

struct Downloaded {
  int64_t size = 0;
  std::string sha256;        // lowercase hex
  std::string content_type;  // as served, else the job's, else video/mp4
};

// Downloads `job.url` into `path` (created or truncated; left in place on
// failure for the caller to delete), computing SHA-256 while streaming,
// resuming with Range after a dropped connection, checking the reported
// size and type against `job`, and fsyncing the file before it returns OK.
// Retries with jittered exponential back-off. Returns early, with reason
// "cancelled", once `stop` is notified (also mid-transfer). Blocks: run it
// on a worker thread.
absl::StatusOr<Downloaded> DownloadToFile(const MirrorJob& job,
                                          const std::string& path,
                                          const DownloadOptions& options,
                                          const absl::Notification* stop,
                                          DownloadFailure* failure);

}  // namespace videogen::media
