#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "server/store/store.h"

namespace videogen::api {

// AIP-158 page tokens: an opaque, URL-safe encoding of the store cursor plus
// a fingerprint of the filter, so a token used with another filter is
// refused instead of silently returning the wrong page.
std::string FilterFingerprint(const store::ListQuery& query);
std::string EncodePageToken(const store::Cursor& cursor,
                            const std::string& fingerprint);
absl::StatusOr<store::Cursor> DecodePageToken(const std::string& token,
                                              const std::string& fingerprint);

}  // namespace videogen::api
