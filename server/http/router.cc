#include "server/http/router.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/http/strings.h"

namespace videogen::http {
namespace {

constexpr std::string_view kCollection = "/v1/generations";
constexpr std::string_view kMediaPrefix = "/v1/media/";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsIdSegment(std::string_view s) {
  return !s.empty() && s.find('/') == std::string_view::npos &&
         s.find(':') == std::string_view::npos;
}

bool Allowed(std::string_view name,
             const std::vector<std::string_view>& also_allowed) {
  return std::find(also_allowed.begin(), also_allowed.end(), name) !=
         also_allowed.end();
}

// Applies `states` and `labels.KEY` parameters; returns false for any other
// name so the caller can decide.
absl::StatusOr<bool> ApplyFilterParam(
    const std::string& name, const std::string& value,
    google::protobuf::RepeatedField<int>* states,
    google::protobuf::Map<std::string, std::string>* labels) {
  if (name == "states") {
    std::vector<v1::Generation::State> parsed;
    if (absl::Status s = ParseStates(value, &parsed); !s.ok()) return s;
    for (auto st : parsed) states->Add(st);
    return true;
  }
  if (absl::StartsWith(name, "labels.")) {
    std::string key = name.substr(7);
    if (key.empty()) {
      return absl::InvalidArgumentError(
          "query parameter 'labels.' needs a key: labels.KEY=VALUE");
    }
    auto [it, inserted] = labels->insert({key, value});
    if (!inserted && it->second != value) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label '", key, "' is given twice with different values"));
    }
    return true;
  }
  return false;
}

absl::Status UnknownParam(std::string_view name) {
  return absl::InvalidArgumentError(
      absl::StrCat("unknown query parameter '", Av(name), "'"));
}

}  // namespace

std::optional<std::string> Target::Param(std::string_view name) const {
  std::optional<std::string> found;
  for (const auto& [k, v] : query) {
    if (k == name) found = v;
  }
  return found;
}

absl::StatusOr<std::string> PercentDecode(std::string_view in,
                                          bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) {
        return absl::InvalidArgumentError("truncated percent-escape");
      }
      int hi = HexValue(in[i + 1]);
      int lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) {
        return absl::InvalidArgumentError("malformed percent-escape");
      }
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

absl::StatusOr<Target> ParseTarget(std::string_view target) {
  if (target.empty() || target[0] != '/') {
    return absl::InvalidArgumentError("request target must start with '/'");
  }
  std::string_view path = target;
  std::string_view query;
  if (size_t q = target.find('?'); q != std::string_view::npos) {
    path = target.substr(0, q);
    query = target.substr(q + 1);
  }
  if (size_t f = query.find('#'); f != std::string_view::npos) {
    query = query.substr(0, f);
  }
  Target out;
  absl::StatusOr<std::string> decoded = PercentDecode(path, false);
  if (!decoded.ok()) return decoded.status();
  out.path = *std::move(decoded);
  for (absl::string_view part :
       absl::StrSplit(Av(query), '&', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(part, absl::MaxSplits('=', 1));
    absl::StatusOr<std::string> k = PercentDecode(Sv(kv.first), true);
    if (!k.ok()) return k.status();
    absl::StatusOr<std::string> v = PercentDecode(Sv(kv.second), true);
    if (!v.ok()) return v.status();
    out.query.emplace_back(*std::move(k), *std::move(v));
  }
  return out;
}

Route MatchRoute(std::string_view std_path) {
  absl::string_view path = Av(std_path);
  if (path == "/" || path == "/index.html" || path == "/dashboard.css" ||
      path == "/dashboard.js") {
    return {RouteKind::kDashboard, ""};
  }
  if (path == "/metrics") return {RouteKind::kMetrics, ""};
  if (Sv(path) == kCollection) return {RouteKind::kCollection, ""};
  if (path == "/v1/generations:watch") return {RouteKind::kWatchAll, ""};
  if (absl::ConsumePrefix(&path, Av(kMediaPrefix))) {
    if (IsIdSegment(Sv(path))) return {RouteKind::kMedia, std::string(path)};
    return {};
  }
  if (!absl::ConsumePrefix(&path, Av(kCollection)) ||
      !absl::ConsumePrefix(&path, "/")) {
    return {};
  }
  // {id}, {id}:cancel or {id}:watch; ids never contain ':'.
  size_t colon = path.find(':');
  std::string_view id = Sv(path.substr(0, colon));
  if (!IsIdSegment(id)) return {};
  if (colon == absl::string_view::npos) {
    return {RouteKind::kGeneration, std::string(id)};
  }
  absl::string_view verb = path.substr(colon + 1);
  if (verb == "cancel") return {RouteKind::kCancel, std::string(id)};
  if (verb == "watch") return {RouteKind::kWatchOne, std::string(id)};
  return {};
}

std::string_view RouteName(RouteKind kind) {
  switch (kind) {
    case RouteKind::kDashboard:
      return "/";
    case RouteKind::kMetrics:
      return "/metrics";
    case RouteKind::kCollection:
      return "/v1/generations";
    case RouteKind::kWatchAll:
      return "/v1/generations:watch";
    case RouteKind::kGeneration:
      return "/v1/generations/{id}";
    case RouteKind::kCancel:
      return "/v1/generations/{id}:cancel";
    case RouteKind::kWatchOne:
      return "/v1/generations/{id}:watch";
    case RouteKind::kMedia:
      return "/v1/media/{id}";
    case RouteKind::kNotFound:
      break;
  }
  return "unmatched";
}

absl::Status ParseStates(std::string_view value,
                         std::vector<v1::Generation::State>* out) {
  for (absl::string_view raw :
       absl::StrSplit(Av(value), ',', absl::SkipEmpty())) {
    std::string name = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(raw));
    if (!absl::StartsWith(name, "STATE_")) name = absl::StrCat("STATE_", name);
    v1::Generation::State state;
    if (!v1::Generation::State_Parse(name, &state) ||
        state == v1::Generation::STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown state '", raw,
          "' in 'states'; use QUEUED, GENERATING, COMPLETED, FAILED or "
          "CANCELLED (with or without the STATE_ prefix)"));
    }
    out->push_back(state);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::ListGenerationsRequest> ListRequestFromQuery(
    const Target& target, const std::vector<std::string_view>& also_allowed) {
  v1::ListGenerationsRequest req;
  for (const auto& [name, value] : target.query) {
    absl::StatusOr<bool> applied = ApplyFilterParam(
        name, value, req.mutable_states(), req.mutable_labels());
    if (!applied.ok()) return applied.status();
    if (*applied) continue;
    if (name == "page_size") {
      int32_t size = 0;
      if (!absl::SimpleAtoi(value, &size)) {
        return absl::InvalidArgumentError(
            absl::StrCat("page_size must be an integer, got '", value, "'"));
      }
      req.set_page_size(size);  // the gateway validates the range
    } else if (name == "page_token") {
      req.set_page_token(value);
    } else if (!Allowed(name, also_allowed)) {
      return UnknownParam(name);
    }
  }
  return req;
}

absl::StatusOr<v1::WatchGenerationsRequest> WatchAllRequestFromQuery(
    const Target& target, const std::vector<std::string_view>& also_allowed) {
  v1::WatchGenerationsRequest req;
  for (const auto& [name, value] : target.query) {
    absl::StatusOr<bool> applied = ApplyFilterParam(
        name, value, req.mutable_states(), req.mutable_labels());
    if (!applied.ok()) return applied.status();
    if (!*applied && !Allowed(name, also_allowed)) return UnknownParam(name);
  }
  return req;
}

absl::StatusOr<int64_t> ResumeRevision(std::string_view last_event_id_header,
                                       const Target& target) {
  absl::string_view source = "Last-Event-ID";
  std::string value(absl::StripAsciiWhitespace(Av(last_event_id_header)));
  if (value.empty()) {
    std::optional<std::string> param = target.Param("after_revision");
    if (!param.has_value()) return 0;
    value = *param;
    source = "after_revision";
  }
  int64_t revision = 0;
  if (!absl::SimpleAtoi(value, &revision) || revision < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, " must be a non-negative revision number, got '", value, "'"));
  }
  return revision;
}

RangeDecision DecideRange(std::string_view std_header, int64_t size) {
  RangeDecision whole;
  absl::string_view header = absl::StripAsciiWhitespace(Av(std_header));
  if (header.empty()) return whole;
  if (!absl::ConsumePrefix(&header, "bytes=")) return whole;  // other units
  if (header.find(',') != absl::string_view::npos) return whole;
  RangeDecision bad{RangeDecision::kUnsatisfiable, {}};
  size_t dash = header.find('-');
  if (dash == absl::string_view::npos) return bad;
  absl::string_view a = absl::StripAsciiWhitespace(header.substr(0, dash));
  absl::string_view b = absl::StripAsciiWhitespace(header.substr(dash + 1));
  auto digits = [](absl::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
      return c >= '0' && c <= '9';
    });
  };
  int64_t first = 0;
  int64_t last = 0;
  if (a.empty()) {  // suffix: the last N bytes
    if (!digits(b) || !absl::SimpleAtoi(b, &last) || last == 0 || size == 0) {
      return bad;
    }
    int64_t n = std::min(last, size);
    return {RangeDecision::kPartial, {size - n, n}};
  }
  if (!digits(a) || !absl::SimpleAtoi(a, &first)) return bad;
  if (b.empty()) {
    last = size - 1;
  } else if (!digits(b) || !absl::SimpleAtoi(b, &last) || last < first) {
    return bad;
  }
  if (first >= size) return bad;
  last = std::min(last, size - 1);
  return {RangeDecision::kPartial, {first, last - first + 1}};
}

}  // namespace videogen::http
