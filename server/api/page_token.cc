#include "server/api/page_token.h"

#include <cstdint>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace videogen::api {
namespace {

// FNV-1a: stable across processes and restarts, unlike absl::Hash.
uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

absl::Status BadToken() {
  return absl::InvalidArgumentError(
      "page_token is invalid or belongs to a different filter; pass the "
      "next_page_token of a previous call with the same filter, or an empty "
      "token for the first page");
}

}  // namespace

std::string FilterFingerprint(const store::ListQuery& query) {
  std::string canon;
  for (auto state : query.states) absl::StrAppend(&canon, "s", state, ";");
  for (const auto& [k, v] : query.labels) {
    absl::StrAppend(&canon, "l", k.size(), ":", k, "=", v.size(), ":", v, ";");
  }
  return absl::StrCat(Fnv1a(canon));
}

std::string EncodePageToken(const store::Cursor& cursor,
                            const std::string& fingerprint) {
  std::string raw = absl::StrCat("v1|", absl::ToUnixMicros(cursor.create_time),
                                 "|", fingerprint, "|", cursor.id);
  std::string out;
  absl::WebSafeBase64Escape(raw, &out);
  return out;
}

absl::StatusOr<store::Cursor> DecodePageToken(const std::string& token,
                                              const std::string& fingerprint) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw)) return BadToken();
  std::vector<std::string> parts = absl::StrSplit(raw, absl::MaxSplits('|', 3));
  int64_t micros = 0;
  if (parts.size() != 4 || parts[0] != "v1" ||
      !absl::SimpleAtoi(parts[1], &micros) || parts[2] != fingerprint ||
      parts[3].empty()) {
    return BadToken();
  }
  return store::Cursor{absl::FromUnixMicros(micros), parts[3]};
}

}  // namespace videogen::api
