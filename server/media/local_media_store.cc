#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/media/media_store.h"

namespace videogen::media {
namespace {

namespace fs = std::filesystem;

constexpr char kTempPrefix[] = ".tmp-";

// Debian's Abseil has its own string_view; the interface uses std's.
absl::string_view Absl(std::string_view s) { return {s.data(), s.size()}; }
constexpr char kMetaSuffix[] = ".meta";

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::Status FsyncPath(const std::string& path, int flags) {
  int fd = open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return Errno("open for fsync");
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) {
    errno = err;
    return Errno("fsync");
  }
  return absl::OkStatus();
}

absl::Status WriteFileSynced(const std::string& path, absl::string_view data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create");
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      errno = err;
      return Errno("write");
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) return Errno("fsync");
  return absl::OkStatus();
}

std::string RandomSuffix() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

// Files under one directory: ID (the bytes) and ID.meta (type and hash,
// renamed in before the bytes, so a visible ID always has its meta).
// Thread-safe: no mutable state besides an atomic byte count; concurrent
// Put/Remove of the same id leave one of them in place, atomically.
class LocalMediaStore final : public MediaStore {
 public:
  LocalMediaStore(std::string dir, int64_t bytes)
      : dir_(std::move(dir)), bytes_(bytes) {}

  const std::string& staging_dir() const override { return dir_; }

  absl::Status Put(std::string_view id, const std::string& staged_path,
                   const MediaObject& object) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    if (fs::path(staged_path).parent_path() != fs::path(dir_)) {
      // rename(2) is atomic only within one file system, so staged files
      // must come from staging_dir().
      return absl::InvalidArgumentError("staged file outside the media dir");
    }
    nlohmann::json meta = {{"size", object.size},
                           {"content_type", object.content_type},
                           {"sha256", object.sha256}};
    std::string meta_tmp = absl::StrCat(dir_, "/", kTempPrefix, Absl(id),
                                        kMetaSuffix, "-", RandomSuffix());
    if (absl::Status s = WriteFileSynced(meta_tmp, meta.dump()); !s.ok()) {
      unlink(meta_tmp.c_str());
      return s;
    }
    if (rename(meta_tmp.c_str(), MetaPath(id).c_str()) != 0) {
      absl::Status s = Errno("rename meta");
      unlink(meta_tmp.c_str());
      return s;
    }
    int64_t old_size = FileSize(DataPath(id));
    if (rename(staged_path.c_str(), DataPath(id).c_str()) != 0) {
      return Errno("rename");
    }
    bytes_ += object.size - std::max<int64_t>(old_size, 0);
    // The renames are durable only once the directory is.
    return FsyncPath(dir_, O_RDONLY | O_DIRECTORY);
  }

  absl::StatusOr<MediaObject> Open(std::string_view id) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    MediaObject out;
    out.local_path = DataPath(id);
    out.size = FileSize(out.local_path);
    if (out.size < 0) return absl::NotFoundError("no mirrored file");
    std::ifstream in(MetaPath(id));
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json meta = nlohmann::json::parse(text.str(), nullptr,
                                                /*allow_exceptions=*/false);
    if (meta.is_object()) {
      out.content_type = meta.value("content_type", "");
      out.sha256 = meta.value("sha256", "");
    }
    if (out.content_type.empty()) out.content_type = "video/mp4";
    return out;
  }

  absl::Status Read(std::string_view id, int64_t offset, int64_t length,
                    const ByteSink& sink) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    int fd = open(DataPath(id).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return absl::NotFoundError("no mirrored file");
      return Errno("open");
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || offset < 0 || length < 0 ||
        offset + length > st.st_size) {
      close(fd);
      return absl::OutOfRangeError("range outside the file");
    }
    std::string buf(1 << 16, '\0');
    absl::Status status;
    while (length > 0) {
      ssize_t n = pread(fd, buf.data(),
                        static_cast<size_t>(std::min<int64_t>(
                            length, static_cast<int64_t>(buf.size()))),
                        offset);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        status = n < 0 ? Errno("read")
                       : absl::DataLossError("file shrank while read");
        break;
      }
      if (!sink(std::string_view(buf.data(), static_cast<size_t>(n)))) break;
      offset += n;
      length -= n;
    }
    close(fd);
    return status;
  }

  absl::Status Remove(std::string_view id) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    int64_t size = FileSize(DataPath(id));
    if (unlink(DataPath(id).c_str()) != 0 && errno != ENOENT) {
      return Errno("unlink");
    }
    if (size > 0) bytes_ -= size;
    if (unlink(MetaPath(id).c_str()) != 0 && errno != ENOENT) {
      return Errno("unlink meta");
    }
    return FsyncPath(dir_, O_RDONLY | O_DIRECTORY);
  }

  std::optional<int64_t> StoredBytes() const override { return bytes_.load(); }

 private:
  std::string DataPath(std::string_view id) const {
    return absl::StrCat(dir_, "/", Absl(id));
  }
  std::string MetaPath(std::string_view id) const {
    return absl::StrCat(dir_, "/", Absl(id), kMetaSuffix);
  }
  static int64_t FileSize(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return -1;
    return st.st_size;
  }

  const std::string dir_;
  std::atomic<int64_t> bytes_;
};

}  // namespace

bool ValidMediaId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<MediaStore>> NewLocalMediaStore(
    const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("media dir ", dir, ": ", ec.message()));
  }
  std::string canonical = fs::canonical(dir, ec).string();
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("media dir ", dir, ": ", ec.message()));
  }
  // Leftovers of a crash mid-copy (or mid-Put) are never visible to
  // readers; delete them, and metas whose bytes never arrived.
  int64_t bytes = 0;
  fs::directory_iterator entries(canonical, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("media dir ", dir, ": ", ec.message()));
  }
  for (const fs::directory_entry& e : entries) {
    std::string name = e.path().filename().string();
    if (absl::StartsWith(name, kTempPrefix)) {
      fs::remove(e.path(), ec);
    } else if (absl::EndsWith(name, kMetaSuffix)) {
      std::string data = name.substr(0, name.size() - strlen(kMetaSuffix));
      if (!fs::exists(fs::path(canonical) / data, ec)) fs::remove(e.path(), ec);
    } else if (ValidMediaId(name) && e.is_regular_file(ec)) {
      uintmax_t size = e.file_size(ec);
      if (!ec) bytes += static_cast<int64_t>(size);
    }
  }
  return std::make_unique<LocalMediaStore>(canonical, bytes);
}

}  // namespace videogen::media
