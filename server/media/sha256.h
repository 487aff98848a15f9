#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct evp_md_ctx_st;

namespace videogen::media {

// Incremental SHA-256 (OpenSSL EVP). Thread-compatible: one owner at a time.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Reset();
  void Update(absl::string_view bytes);
  // Lowercase hex of everything since the last Reset. Resets.
  std::string HexDigest();

 private:
  evp_md_ctx_st* ctx_;
};

// Lowercase hex SHA-256 of a whole file.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace videogen::media
