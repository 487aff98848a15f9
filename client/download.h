#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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
  // Sent as the Authorization header when set ("Bearer KEY"), for the
  // server's own HTTP listener. Redirects are then not followed, so the key
  // goes nowhere else.
  std::string authorization;
  // Names the source in error messages.
  std::string source_name = "the video URL";
  // Lowercase hex SHA-256 the finished file must have; "" = not checked.
  std::string sha256;
  // Told what the user should know on the way (a file started over).
  std::function<void(absl::string_view)> note;
};

struct DownloadResult {
  int64_t bytes = 0;             // final size of the file
  int64_t resumed_from = 0;      // bytes already on disk when resumed
  int64_t expected_size = 0;     // size we checked against; 0 when unknown
  bool sha256_verified = false;  // options.sha256 was set and matched
};

// Downloads `url` to `path` with libcurl. A partial file is resumed with a
// Range request; a server that ignores ranges gets a fresh download. The
// final size is checked against Content-Range/Content-Length and
// `expected_size` when known (DATA_LOSS on mismatch), and its SHA-256
// against `sha256` when set: a resumed file that fails is fetched once more
// from the start; DATA_LOSS when that fails too (the file is removed, as
// resuming it could never succeed). Blocking; any thread.
absl::StatusOr<DownloadResult> Download(const DownloadOptions& options);

// Lowercase hex SHA-256 of the file at `path`.
absl::StatusOr<std::string> FileSha256(const std::string& path);

}  // namespace videogen::client
