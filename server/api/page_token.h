#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "server/store/store.h"

namespace videogen::api {

// AIP-158 page tokens: an opaque, URL-safe encoding of the store cursor plus
// a fingerprint of the query's scope and filter, so a token used with
// another filter, or by another tenant, is refused (INVALID_ARGUMENT)
// instead of silently returning the wrong page.
//
// The cursor keeps the create_time at nanosecond precision, exactly what the
// stores order by: with a coarser cursor, rows created within the same
// microsecond fell between pages.

// Canonical over the query's tenant, states (order and repeats ignored) and
// labels; the page size and cursor are not part of it.
std::string FilterFingerprint(const store::ListQuery& query);
std::string EncodePageToken(const store::Cursor& cursor,
                            const std::string& fingerprint);
absl::StatusOr<store::Cursor> DecodePageToken(const std::string& token,
                                              const std::string& fingerprint);

}  // namespace videogen::api
