#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::http {

// A request target split into its decoded path and query parameters, in
// the order they came. Pure functions; thread-safe.
struct Target {
  std::string path;
  std::vector<std::pair<std::string, std::string>> query;

  // The last value of `name`, if present.
  std::optional<std::string> Param(std::string_view name) const;
};

// Splits "/path?a=1&b=2" and percent-decodes both parts ('+' is a space in
// the query). INVALID_ARGUMENT for a malformed escape or a target that is
// not origin-form.
absl::StatusOr<Target> ParseTarget(std::string_view target);

// Percent-decoding; `plus_is_space` for query strings.
absl::StatusOr<std::string> PercentDecode(std::string_view in,
                                          bool plus_is_space);

// The routes of design.md §9.
enum class RouteKind {
  kNotFound,
  kDashboard,   // "/" and its assets ("/dashboard.js", ...)
  kMetrics,     // /metrics
  kCollection,  // /v1/generations: GET lists, POST creates
  kWatchAll,    // /v1/generations:watch
  kGeneration,  // /v1/generations/{id}
  kCancel,      // /v1/generations/{id}:cancel
  kWatchOne,    // /v1/generations/{id}:watch
  kMedia,       // /v1/media/{id}
};

struct Route {
  RouteKind kind = RouteKind::kNotFound;
  std::string id;  // the generation id, for the routes that take one
};

// Matches a decoded path. Ids are one non-empty path segment without ':'.
Route MatchRoute(std::string_view path);

// A stable name for logs and metrics that never contains ids or tokens
// ("/v1/generations/{id}:watch").
std::string_view RouteName(RouteKind kind);

// Parses `states` values: STATE_QUEUED, QUEUED or queued; a value may also
// hold several names separated by commas.
absl::Status ParseStates(std::string_view value,
                         std::vector<v1::Generation::State>* out);

// ?page_size=&page_token=&states=&labels.KEY=VALUE. Any other parameter
// (except those in `also_allowed`) is INVALID_ARGUMENT, so that a typo such
// as `state=` does not silently list everything.
absl::StatusOr<v1::ListGenerationsRequest> ListRequestFromQuery(
    const Target& target, const std::vector<std::string_view>& also_allowed);
// ?states=&labels.KEY=VALUE for the firehose.
absl::StatusOr<v1::WatchGenerationsRequest> WatchAllRequestFromQuery(
    const Target& target, const std::vector<std::string_view>& also_allowed);

// The revision to resume after: the Last-Event-ID header wins over
// ?after_revision= (EventSource sends the header on its own reconnects).
// Both must be non-negative integers; absent means 0.
absl::StatusOr<int64_t> ResumeRevision(std::string_view last_event_id_header,
                                       const Target& target);

// A single-range `Range` header (RFC 9110 §14.1.2) resolved against a body of
// `size` bytes.
struct ByteRange {
  int64_t first = 0;
  int64_t length = 0;  // > 0
};
struct RangeDecision {
  enum Kind { kWhole, kPartial, kUnsatisfiable } kind = kWhole;
  ByteRange range;
};
// kWhole when there is no header, the unit is not "bytes", or several ranges
// are asked for (served whole, which RFC 9110 allows); kUnsatisfiable for a
// malformed bytes range or one that starts past the end.
RangeDecision DecideRange(std::string_view header, int64_t size);

}  // namespace videogen::http
