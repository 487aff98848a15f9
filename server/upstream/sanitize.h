#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/upstream/upstream.h"

namespace videogen::upstream {

// Hygiene for strings the upstream controls (issue 17): they reach clients,
// logs, terminals and the database, so they leave this layer without
// control characters and without the API key. Pure functions, any thread.

// Removes C0 controls (U+0000..U+001F), DEL (U+007F) and C1 controls
// (U+0080..U+009F), and replaces invalid UTF-8 with U+FFFD (a stray byte
// such as 0x9B is CSI on 8-bit terminals). With `as_space`, each run of
// removed characters becomes one space, so "a\nb" stays two words.
std::string StripControl(absl::string_view text, bool as_space);

// StripControl, then every occurrence of `secret` becomes "[redacted]".
// Stripping comes first so that a key split by control bytes is caught.
std::string CleanText(absl::string_view text, absl::string_view secret,
                      bool as_space);

// The same for a status message; code and payloads are kept.
absl::Status CleanStatus(const absl::Status& status, absl::string_view secret);

// Cleans every upstream-controlled text field in place. Ids
// (upstream_id, inference_id, client_request_id, request_id) are kept byte
// for byte: they must round-trip to the upstream and match exactly.
void CleanSnapshot(Snapshot* snapshot, absl::string_view secret);
void CleanSubmitResult(SubmitResult* result, absl::string_view secret);
void CleanLogPage(LogPage* page, absl::string_view secret);

}  // namespace videogen::upstream
