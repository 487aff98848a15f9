#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace videogen::http {

// A mirrored video on local disk (design.md §11), as the HTTP server serves
// it at /v1/media/{id}.
struct MediaFile {
  std::string path;          // a regular file the server may open read-only
  int64_t size = 0;          // expected bytes; a file of another size is
                             // refused (a copy still being written)
  std::string content_type;  // "" = application/octet-stream
  std::string sha256;        // lowercase hex, "" = unknown; sent as the ETag
};

// Finds the mirror's local copy of a generation's video. The HTTP server
// checks the caller's access first through Gateway::Get (another tenant's
// generation is NOT_FOUND there); `tenant_scope` is Principal::Scope() ("" for
// admins) for a second check. NOT_FOUND when there is no local copy.
// Thread-safe; called on the HTTP server's worker threads (may block on disk).
class MediaSource {
 public:
  virtual ~MediaSource() = default;
  virtual absl::StatusOr<MediaFile> Open(std::string_view tenant_scope,
                                         std::string_view generation_id) = 0;
};

}  // namespace videogen::http
