#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videogen::media {

// One stored video (design.md §11).
struct MediaObject {
  int64_t size = 0;
  std::string content_type;  // e.g. "video/mp4"
  std::string sha256;        // lowercase hex; may be empty if unknown
  // A file the HTTP listener may serve directly (local store only); empty
  // when the bytes must come through Read (S3).
  std::string local_path;
};

// Receives bytes of a Read, in order. Returns false to stop early.
using ByteSink = std::function<bool(std::string_view chunk)>;

// Where mirrored videos live, keyed by generation id (`[A-Za-z0-9_-]`,
// anything else is INVALID_ARGUMENT). Thread-safe; every call is
// synchronous and may block on disk or network, so call it from a worker
// thread, never from the poll loop or while holding a lock.
class MediaStore {
 public:
  virtual ~MediaStore() = default;

  // Where the mirror stages downloads: files named ".tmp-*" in this
  // directory are invisible to readers and are deleted when a store is
  // created (the leftovers of a crash mid-copy).
  virtual const std::string& staging_dir() const = 0;

  // Makes the complete, fsynced file `staged_path` (under staging_dir())
  // the object `id`, atomically: a reader sees the whole object or none.
  // The local store moves the file; the S3 store uploads it and leaves it
  // for the caller to delete. Replaces an existing object.
  virtual absl::Status Put(std::string_view id, const std::string& staged_path,
                           const MediaObject& object) = 0;

  // The object's size, type and hash. NOT_FOUND when there is none.
  virtual absl::StatusOr<MediaObject> Open(std::string_view id) = 0;

  // Streams bytes [offset, offset + length) of `id` to `sink` (the local
  // file, or an S3 GET with Range). OUT_OF_RANGE when the range does not
  // fit the object; NOT_FOUND when there is none.
  virtual absl::Status Read(std::string_view id, int64_t offset, int64_t length,
                            const ByteSink& sink) = 0;

  // Deletes the object (retention). A missing object is OK.
  virtual absl::Status Remove(std::string_view id) = 0;

  // Bytes stored, for the media-store-size metric, when the store can tell
  // cheaply (local: counted at start and kept up to date; S3: nullopt).
  virtual std::optional<int64_t> StoredBytes() const = 0;
};

// Files under `dir` (created if missing): `ID` holds the bytes and
// `ID.meta` its type and hash. Written to a ".tmp-" file in the same
// directory, fsynced and renamed, so a crash never leaves a partial object.
// Fails when `dir` cannot be created or scanned.
absl::StatusOr<std::unique_ptr<MediaStore>> NewLocalMediaStore(
    const std::string& dir);

// Any S3-compatible service, signed with AWS SigV4 by libcurl
// (CURLOPT_AWS_SIGV4). Objects go to `bucket` under `prefix` + id, in path
// style (ENDPOINT/BUCKET/KEY), which MinIO, Ceph, R2 and AWS all accept.
struct S3Options {
  std::string endpoint;  // e.g. "https://s3.eu-west-1.amazonaws.com"
  std::string bucket;
  std::string region = "us-east-1";
  std::string prefix = "media/";
  std::string access_key_id;      // AWS_ACCESS_KEY_ID
  std::string secret_access_key;  // AWS_SECRET_ACCESS_KEY; never logged
  std::string session_token;      // AWS_SESSION_TOKEN; optional
  std::string staging_dir;        // local disk for downloads in progress
  absl::Duration timeout = absl::Minutes(10);  // per request
  absl::Duration connect_timeout = absl::Seconds(10);
};

// Fills the credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_SESSION_TOKEN. FAILED_PRECONDITION naming the missing variable.
absl::Status S3CredentialsFromEnv(S3Options& options);

// Checks the options (endpoint http(s), bucket, region, credentials set)
// and creates the staging directory.
absl::StatusOr<std::unique_ptr<MediaStore>> NewS3MediaStore(S3Options options);

// True for ids a media store accepts: 1-128 of [A-Za-z0-9_-].
bool ValidMediaId(std::string_view id);

}  // namespace videogen::media
