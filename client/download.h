#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videogen::client {

struct DownloadOptions {
  std::string url;
  std::string path;
  // Known size from Generation.video.file_size_bytes; 0 when unknown.
  int64_t expected_size = 0;
  // Draw a progress bar on stdout (only when it is a terminal).
  bool progress = false;
  // Gives up when no byte arrives for this long.
  absl::Duration stall_timeout = absl::Seconds(30);
};

struct DownloadResult {
  int64_t bytes = 0;          // final size of the file
  int64_t resumed_from = 0;   // bytes already on disk when resumed
  int64_t expected_size = 0;  // size we checked against; 0 when unknown
};

// Downloads `url` to `path` with libcurl. A partial file is resumed with a
// Range request; a server that ignores ranges gets a fresh download. The
// final size is checked against Content-Range/Content-Length and
// `expected_size` when known (DATA_LOSS on mismatch). Blocking; any thread.
absl::StatusOr<DownloadResult> Download(const DownloadOptions& options);

}  // namespace videogen::client
