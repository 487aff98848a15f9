#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace videogen::http {

// proto3 JSON through protobuf's own support: lowerCamelCase names, enums
// by name, int64 as strings, one line (SSE `data:` needs that).
std::string ToJson(const google::protobuf::Message& message);

// Parses proto3 JSON (either lowerCamelCase or the proto field names).
// Unknown fields and malformed JSON are INVALID_ARGUMENT with the parser's
// explanation.
absl::Status FromJson(std::string_view json, google::protobuf::Message* out);

}  // namespace videogen::http
