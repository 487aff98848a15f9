#pragma once

#include <string_view>

#include "nlohmann/json.hpp"

namespace videogen::api {

enum class LogFormat { kJson, kText };

// Structured logs: one line per event on stderr, JSON by default. Fields
// never include secrets; callers pass ids, never keys. Thread-safe.
void SetLogFormat(LogFormat format);
void Log(std::string_view level, std::string_view event,
         nlohmann::json fields = nlohmann::json::object());

}  // namespace videogen::api
