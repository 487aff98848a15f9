#pragma once

// Pieces the Store implementations share, so they answer with the same
// words: quota messages, time conversions, filter matching. Header-only so
// targets that compile memory_store.cc directly need nothing else.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/store/store.h"
#include "server/util/proto_time.h"

namespace videogen::store::internal {

inline absl::Time CreateTime(const v1::Generation& g) {
  return util::FromTimestamp(g.create_time());
}
inline absl::Time UpdateTime(const v1::Generation& g) {
  return util::FromTimestamp(g.update_time());
}

// Newest-first order: create_time desc, then id desc.
inline bool NewerThan(absl::Time t1, std::string_view id1, absl::Time t2,
                      std::string_view id2) {
  return t1 > t2 || (t1 == t2 && id1 > id2);
}

// The tenant/state/label part of a ListQuery (the cursor is separate).
inline bool Matches(const ListQuery& q, const v1::Generation& g) {
  if (!q.tenant.empty() && g.tenant() != q.tenant) return false;
  if (!q.states.empty() && std::find(q.states.begin(), q.states.end(),
                                     g.state()) == q.states.end()) {
    return false;
  }
  for (const auto& [key, value] : q.labels) {
    auto it = g.labels().find(key);
    if (it == g.labels().end() || it->second != value) return false;
  }
  return true;
}

inline absl::Status BadPageSize(int page_size) {
  return absl::InvalidArgumentError(
      absl::StrCat("List: page_size must be > 0, got ", page_size));
}

// "12s", rounded up, at least 1s: how long until a quota unit frees up.
inline std::string RetryIn(absl::Duration d) {
  const int64_t s = std::max<int64_t>(
      1, absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1))));
  return absl::StrCat(s, "s");
}

// What the admission checks found; the messages name the limit, the use and
// when it frees up (design.md §7).
inline absl::Status MaxConcurrentExceeded(const std::string& tenant,
                                          int64_t limit, int64_t in_use) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "tenant \"", tenant, "\" is at max_concurrent=", limit, " (", in_use,
      " generations not finished); retry when one finishes"));
}

// `oldest` is the create_time of the oldest create still in the window.
inline absl::Status CreatesPerMinuteExceeded(const std::string& tenant,
                                             int64_t limit, int64_t count,
                                             absl::Time oldest,
                                             absl::Time now) {
  return absl::ResourceExhaustedError(
      absl::StrCat("tenant \"", tenant, "\" is at creates_per_minute=", limit,
                   " (", count, " created in the last 60s); retry in ",
                   RetryIn(oldest + absl::Seconds(60) - now)));
}

// `oldest` is the create_time of the oldest generation counted.
inline absl::Status BudgetExceeded(const std::string& tenant, int64_t budget,
                                   absl::Duration period, int64_t used,
                                   int64_t wanted, absl::Time oldest) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "tenant \"", tenant, "\" has used ", used,
      " of video_seconds_budget=", budget, " per ",
      absl::FormatDuration(period), " and this generation needs ", wanted,
      " more; seconds free up when a generation fails, or from ",
      absl::FormatTime(absl::RFC3339_sec, oldest + period, absl::UTCTimeZone()),
      " as the oldest leave the period"));
}

// A tenant's use of its quotas, counted in one pass by stores that count
// everything at once (memory, PostgreSQL).
struct TenantUsage {
  int64_t active = 0;  // non-terminal generations
  int64_t recent = 0;  // created in the last 60 s
  absl::Time oldest_recent = absl::InfiniteFuture();
  int64_t seconds = 0;  // video seconds in the budget period, FAILED excluded
  absl::Time oldest_counted = absl::InfiniteFuture();
};

// The admission decision (design.md §7) for a create of `wanted` seconds.
inline absl::Status AdmitUsage(const std::string& tenant,
                               const Admission& admission, const TenantUsage& u,
                               int64_t wanted, absl::Time now) {
  if (admission.max_concurrent > 0 && u.active >= admission.max_concurrent) {
    return MaxConcurrentExceeded(tenant, admission.max_concurrent, u.active);
  }
  if (admission.creates_per_minute > 0 &&
      u.recent >= admission.creates_per_minute) {
    return CreatesPerMinuteExceeded(tenant, admission.creates_per_minute,
                                    u.recent, u.oldest_recent, now);
  }
  if (admission.video_seconds_budget > 0 &&
      u.seconds + wanted > admission.video_seconds_budget) {
    return BudgetExceeded(
        tenant, admission.video_seconds_budget, admission.budget_period,
        u.seconds, wanted,
        u.oldest_counted == absl::InfiniteFuture() ? now : u.oldest_counted);
  }
  return absl::OkStatus();
}

// A copy of `g` without webhook_status, which is stored beside the record
// (SetWebhookStatus), never in it.
inline const v1::Generation& WithoutWebhookStatus(const v1::Generation& g,
                                                  v1::Generation* scratch) {
  if (!g.has_webhook_status()) return g;
  *scratch = g;
  scratch->clear_webhook_status();
  return *scratch;
}

}  // namespace videogen::store::internal
