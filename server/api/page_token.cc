#include "server/api/page_token.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

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

constexpr int64_t kNanosPerSecond = 1'000'000'000;

}  // namespace

std::string FilterFingerprint(const store::ListQuery& query) {
  // Length-prefixed fields, so no two queries share a canonical form.
  std::string canon =
      absl::StrCat("t", query.tenant.size(), ":", query.tenant, ";");
  std::vector<int> states(query.states.begin(), query.states.end());
  std::sort(states.begin(), states.end());
  states.erase(std::unique(states.begin(), states.end()), states.end());
  for (int state : states) absl::StrAppend(&canon, "s", state, ";");
  for (const auto& [k, v] : query.labels) {
    absl::StrAppend(&canon, "l", k.size(), ":", k, "=", v.size(), ":", v, ";");
  }
  return absl::StrCat(Fnv1a(canon));
}

// v2|<unix seconds>|<nanoseconds within the second>|<fingerprint>|<id>.
// Seconds and nanoseconds apart, so any absl::Time a cursor can hold
// round-trips (Unix nanoseconds in an int64 end in 2262).
std::string EncodePageToken(const store::Cursor& cursor,
                            const std::string& fingerprint) {
  const int64_t seconds = absl::ToUnixSeconds(cursor.create_time);
  const int64_t nanos = absl::ToInt64Nanoseconds(
      cursor.create_time - absl::FromUnixSeconds(seconds));
  std::string raw = absl::StrCat("v2|", seconds, "|", nanos, "|", fingerprint,
                                 "|", cursor.id);
  std::string out;
  absl::WebSafeBase64Escape(raw, &out);
  return out;
}

absl::StatusOr<store::Cursor> DecodePageToken(const std::string& token,
                                              const std::string& fingerprint) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw)) return BadToken();
  std::vector<std::string> parts = absl::StrSplit(raw, absl::MaxSplits('|', 4));
  int64_t seconds = 0;
  int64_t nanos = 0;
  if (parts.size() != 5 || parts[0] != "v2" ||
      !absl::SimpleAtoi(parts[1], &seconds) ||
      !absl::SimpleAtoi(parts[2], &nanos) || nanos < 0 ||
      nanos >= kNanosPerSecond || parts[3] != fingerprint || parts[4].empty()) {
    return BadToken();
  }
  const absl::Time t =
      absl::FromUnixSeconds(seconds) + absl::Nanoseconds(nanos);
  if (t == absl::InfiniteFuture() || t == absl::InfinitePast()) {
    return BadToken();
  }
  return store::Cursor{t, parts[4]};
}

}  // namespace videogen::api
