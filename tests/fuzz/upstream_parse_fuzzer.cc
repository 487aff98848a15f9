// Fuzzes the parsers of the AI/ML API's answers (server/upstream/parse.h):
// every body an upstream, a proxy or an attacker in the path could send.
// Besides crashes, leaks and undefined behaviour, it checks the contracts
// that spend safety depends on (design.md §5).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "server/upstream/parse.h"
#include "server/upstream/upstream.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using videogen::upstream::ClassifySubmitError;
using videogen::upstream::SubmitOutcome;

bool HasControlChar(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

void CheckSubmit(absl::string_view body) {
  auto submit = videogen::upstream::ParseSubmitResult(body);
  if (submit.ok()) {
    FUZZ_CHECK(!submit->upstream_id.empty(), "an accepted submit has an id");
    return;
  }
  // A 2xx create answer that cannot be used may still have made a billed
  // job: it must never classify as "not created" (which allows a resend).
  FUZZ_CHECK(
      ClassifySubmitError(submit.status()) == SubmitOutcome::kMaybeCreated,
      "unusable 2xx create answer classified as not created: %s",
      submit.status().ToString().c_str());
}

void CheckSnapshot(absl::string_view body) {
  auto snap = videogen::upstream::ParseSnapshot(body);
  if (!snap.ok()) {
    FUZZ_CHECK(absl::IsUnavailable(snap.status()),
               "a poll answer that is not a JSON object is UNAVAILABLE: %s",
               snap.status().ToString().c_str());
  }
}

void CheckErrorBody(absl::string_view body) {
  videogen::upstream::ErrorBody error =
      videogen::upstream::ParseErrorBody(body);
  if (!nlohmann::json::accept(body.begin(), body.end())) {
    // parse.h: "A body that is not JSON becomes a short printable excerpt".
    FUZZ_CHECK(!HasControlChar(error.message) && error.message.size() <= 1024,
               "excerpt of a non-JSON error body is not short and printable "
               "(%zu bytes)",
               error.message.size());
  }
}

#ifdef VIDEOGEN_FUZZ_HAS_LOG_PAGE
void CheckLogPage(absl::string_view body, int limit) {
  auto page = videogen::upstream::ParseLogPage(body, limit);
  if (!page.ok()) {
    // An unreadable page must not look like an empty one ("not found").
    FUZZ_CHECK(!absl::IsNotFound(page.status()), "%s",
               page.status().ToString().c_str());
  }
}
#endif

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view body(reinterpret_cast<const char*>(data), size);
  CheckSubmit(body);
  CheckSnapshot(body);
  CheckErrorBody(body);
  (void)videogen::upstream::MapStatus(std::string(body));
#ifdef VIDEOGEN_FUZZ_HAS_LOG_PAGE
  CheckLogPage(body, 100);
  CheckLogPage(body, size % 3 == 0 ? 0 : static_cast<int>(size));
#endif
  return 0;
}
