#include "server/http/json.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace videogen::http {

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  std::string out;
  // Only fails for messages with invalid UTF-8 in strings, which the
  // gateway never produces; an empty object keeps the stream well-formed.
  if (!google::protobuf::util::MessageToJsonString(message, &out, options)
           .ok()) {
    return "{}";
  }
  return out;
}

absl::Status FromJson(std::string_view json, google::protobuf::Message* out) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), out, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request body is not a valid ", out->GetDescriptor()->name(),
        " in proto3 JSON: ", std::string(status.message())));
  }
  return absl::OkStatus();
}

}  // namespace videogen::http
