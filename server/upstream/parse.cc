#include "server/upstream/parse.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace videogen::upstream {
namespace {

using nlohmann::json;

constexpr size_t kMaxExcerpt = 300;

// A short, printable, single-line excerpt of an arbitrary body.
std::string Excerpt(absl::string_view body) {
  std::string out;
  for (char c : body) {
    if (out.size() >= kMaxExcerpt) {
      out += "...";
      break;
    }
    const unsigned char u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : ' ';
  }
  return std::string(absl::StripAsciiWhitespace(out));
}

const json* Field(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

// Strings as they are; numbers and booleans as their JSON text.
std::string AsString(const json* value) {
  if (value == nullptr) return "";
  if (value->is_string()) return value->get<std::string>();
  if (value->is_number() || value->is_boolean()) return value->dump();
  return "";
}

double AsDouble(const json* value) {
  if (value == nullptr) return 0;
  if (value->is_number()) return value->get<double>();
  double d = 0;
  if (value->is_string() &&
      absl::SimpleAtod(absl::StripAsciiWhitespace(value->get<std::string>()),
                       &d) &&
      std::isfinite(d)) {
    return d;
  }
  return 0;
}

int64_t AsInt64(const json* value) {
  if (value == nullptr) return 0;
  if (value->is_number_integer()) return value->get<int64_t>();
  if (value->is_number_unsigned()) {
    const uint64_t u = value->get<uint64_t>();
    return u > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX
                                                : static_cast<int64_t>(u);
  }
  int64_t i = 0;
  if (value->is_string() &&
      absl::SimpleAtoi(absl::StripAsciiWhitespace(value->get<std::string>()),
                       &i)) {
    return i;
  }
  const double d = AsDouble(value);
  if (d <= -9.2e18 || d >= 9.2e18) return 0;
  return static_cast<int64_t>(std::llround(d));
}

absl::StatusOr<json> ParseObject(absl::string_view body, const char* what) {
  json doc = json::parse(body.begin(), body.end(), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::UnavailableError(absl::StrCat(
        "upstream sent a ", what, " that is not valid JSON (starts with \"",
        Excerpt(body.substr(0, 40)),
        "\"); it is probably a proxy or outage page"));
  }
  if (!doc.is_object()) {
    return absl::UnavailableError(absl::StrCat(
        "upstream sent a ", what, " that is JSON but not an object"));
  }
  return doc;
}

std::optional<VideoInfo> ParseVideo(const json& doc) {
  const json* video = Field(doc, "video");
  if (video != nullptr && video->is_array() && !video->empty()) {
    video = &(*video)[0];
  }
  if (video == nullptr) return std::nullopt;
  VideoInfo info;
  if (video->is_string()) {
    info.url = video->get<std::string>();
  } else if (video->is_object()) {
    info.url = AsString(Field(*video, "url"));
    info.content_type = AsString(Field(*video, "content_type"));
    info.file_name = AsString(Field(*video, "file_name"));
    info.file_size_bytes = AsInt64(Field(*video, "file_size"));
    info.duration_seconds = AsDouble(Field(*video, "duration"));
  } else {
    return std::nullopt;
  }
  if (info.duration_seconds == 0) {
    info.duration_seconds = AsDouble(Field(doc, "duration"));
  }
  return info;
}

// "loc.a.b: msg" for one FastAPI-style validation entry.
std::string DetailLine(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  std::vector<std::string> loc;
  if (const json* l = Field(entry, "loc"); l != nullptr && l->is_array()) {
    for (const json& part : *l) loc.push_back(AsString(&part));
  }
  const std::string msg = AsString(Field(entry, "msg"));
  return loc.empty() ? msg : absl::StrCat(absl::StrJoin(loc, "."), ": ", msg);
}

std::optional<TaskError> ParseTaskError(const json& doc) {
  const json* error = Field(doc, "error");
  if (error == nullptr) return std::nullopt;
  TaskError out;
  if (error->is_string()) {
    out.message = error->get<std::string>();
  } else if (error->is_object()) {
    out.name = AsString(Field(*error, "name"));
    if (out.name.empty()) out.name = AsString(Field(*error, "code"));
    out.message = AsString(Field(*error, "message"));
    const json* detail = Field(*error, "detail");
    if (detail != nullptr && detail->is_array()) {
      std::vector<std::string> lines;
      for (const json& entry : *detail) lines.push_back(DetailLine(entry));
      if (out.message.empty()) out.message = absl::StrJoin(lines, "; ");
      if (out.name.empty() && !detail->empty()) {
        out.name = AsString(Field((*detail)[0], "type"));
      }
    } else if (detail != nullptr && out.message.empty()) {
      out.message = AsString(detail);
    }
  } else {
    return std::nullopt;
  }
  if (out.name.empty() && out.message.empty()) return std::nullopt;
  return out;
}

}  // namespace

absl::StatusOr<Snapshot> ParseSnapshot(absl::string_view body) {
  absl::StatusOr<json> doc = ParseObject(body, "poll answer");
  if (!doc.ok()) return doc.status();
  Snapshot snap;
  snap.upstream_id = AsString(Field(*doc, "id"));
  if (snap.upstream_id.empty()) {
    snap.upstream_id = AsString(Field(*doc, "generation_id"));
  }
  snap.raw_status = AsString(Field(*doc, "status"));
  snap.state = MapStatus(snap.raw_status);
  snap.video = ParseVideo(*doc);
  snap.error = ParseTaskError(*doc);
  if (snap.state == TaskState::kUnknown && snap.raw_status.empty() &&
      snap.error.has_value()) {
    snap.state = TaskState::kFailed;
  }
  if (const json* meta = Field(*doc, "meta")) {
    if (const json* usage = Field(*meta, "usage")) {
      snap.tokens_used = AsInt64(Field(*usage, "tokens_used"));
      snap.credits_used = AsInt64(Field(*usage, "credits_used"));
    }
  }
  return snap;
}

absl::StatusOr<SubmitResult> ParseSubmitResult(absl::string_view body) {
  absl::StatusOr<json> doc = ParseObject(body, "create answer");
  if (!doc.ok()) {
    return absl::UnknownError(absl::StrCat(
        doc.status().message(), "; the job may or may not exist upstream"));
  }
  SubmitResult out;
  out.upstream_id = AsString(Field(*doc, "id"));
  if (out.upstream_id.empty()) {
    out.upstream_id = AsString(Field(*doc, "generation_id"));
  }
  out.status = AsString(Field(*doc, "status"));
  if (out.upstream_id.empty()) {
    return absl::UnknownError(
        "upstream accepted the create request but sent no generation id; "
        "the job may or may not exist upstream");
  }
  return out;
}

absl::StatusOr<LogPage> ParseLogPage(absl::string_view body,
                                     int requested_limit) {
  absl::StatusOr<json> doc = ParseObject(body, "usage-log page");
  if (!doc.ok()) return doc.status();
  const json* data = Field(*doc, "data");
  if (data == nullptr || !data->is_array()) {
    return absl::UnavailableError(
        "upstream sent a usage-log page without a \"data\" array");
  }
  LogPage page;
  for (const json& entry : *data) {
    if (!entry.is_object()) continue;
    LogRow row;
    row.created = AsString(Field(entry, "created"));
    row.status = AsString(Field(entry, "status"));
    row.model = AsString(Field(entry, "model"));
    row.request_id = AsString(Field(entry, "request_id"));
    row.inference_id = AsString(Field(entry, "inference_id"));
    row.client_request_id = AsString(Field(entry, "client_request_id"));
    if (const json* cost = Field(entry, "cost")) {
      if (cost->is_object()) {
        row.cost_usd = AsDouble(Field(*cost, "usd"));
        row.cost_credits = AsInt64(Field(*cost, "credits"));
      } else {
        row.cost_usd = AsDouble(cost);
      }
    }
    page.rows.push_back(std::move(row));
  }
  const json* pagination = Field(*doc, "pagination");
  if (pagination != nullptr && pagination->is_object()) {
    page.total = AsInt64(Field(*pagination, "total"));
    const json* more = Field(*pagination, "has_more");
    if (more != nullptr && more->is_boolean()) {
      page.has_more = more->get<bool>();
    } else if (more != nullptr) {
      const std::string text = absl::AsciiStrToLower(AsString(more));
      page.has_more = text == "true" || text == "1";
    } else {
      // Compared without adding: the upstream's numbers may be anything,
      // and offset + rows must not overflow.
      const int64_t offset = AsInt64(Field(*pagination, "offset"));
      const int64_t rows = static_cast<int64_t>(page.rows.size());
      page.has_more =
          offset >= 0 && page.total > rows && offset < page.total - rows;
    }
  } else {
    page.total = static_cast<int64_t>(page.rows.size());
    page.has_more = requested_limit > 0 &&
                    page.rows.size() >= static_cast<size_t>(requested_limit);
  }
  return page;
}

ErrorBody ParseErrorBody(absl::string_view body) {
  ErrorBody out;
  json doc = json::parse(body.begin(), body.end(), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    out.message = Excerpt(body);
    return out;
  }
  const json* message = Field(doc, "message");
  if (message != nullptr && message->is_array()) {
    std::vector<std::string> parts;
    for (const json& m : *message) parts.push_back(AsString(&m));
    out.message = absl::StrJoin(parts, "; ");
  } else {
    out.message = AsString(message);
  }
  if (out.message.empty()) {
    // FastAPI-style {"detail": [...]} or {"error": {...}} bodies.
    if (std::optional<TaskError> e = ParseTaskError(doc)) {
      out.message = e->message.empty() ? e->name : e->message;
    } else if (const json* detail = Field(doc, "detail")) {
      if (detail->is_array()) {
        std::vector<std::string> lines;
        for (const json& entry : *detail) lines.push_back(DetailLine(entry));
        out.message = absl::StrJoin(lines, "; ");
      } else {
        out.message = AsString(detail);
      }
    }
  }
  // Validation errors often list the problems next to a generic message.
  if (const json* errors = Field(doc, "errors");
      errors != nullptr && errors->is_array() && !errors->empty()) {
    std::vector<std::string> parts;
    for (const json& e : *errors) parts.push_back(DetailLine(e));
    absl::StrAppend(&out.message, out.message.empty() ? "" : ": ",
                    absl::StrJoin(parts, "; "));
  }
  out.message = Excerpt(out.message);
  out.path = AsString(Field(doc, "path"));
  out.request_id = AsString(Field(doc, "requestId"));
  out.status_code = static_cast<int>(AsInt64(Field(doc, "statusCode")));
  return out;
}

}  // namespace videogen::upstream
