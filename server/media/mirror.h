#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace videogen::media {

// What to copy: one completed generation's video (design.md §11).
struct MirrorJob {
  std::string generation_id;
  std::string tenant;
  std::string url;                    // the upstream's URL
  int64_t expected_size = 0;          // 0 = unknown
  std::string expected_content_type;  // "" = unknown
};

// A finished copy.
struct MirrorResult {
  std::string mirror_url;  // path served by --http_listen, e.g.
                           // "/v1/media/GENERATION_ID"
  std::string sha256;      // lowercase hex
  int64_t size = 0;
};

using MirrorCallback = std::function<void(absl::StatusOr<MirrorResult>)>;

// Copies completed videos into the media store on its own bounded pool of
// download threads (never the curl loop that polls). Resumable with Range,
// bounded in size, checked against the reported size and content type,
// SHA-256 computed while streaming; retried, then an error whose message is
// fit for Video.mirror_error. A crash mid-copy leaves no visible partial
// file; the next Copy of the same job resumes or restarts. Thread-safe.
class Mirror {
 public:
  virtual ~Mirror() = default;
  // `done` runs exactly once, on a pool thread (CANCELLED at shutdown).
  virtual void Copy(MirrorJob job, MirrorCallback done) = 0;
};

}  // namespace videogen::media
