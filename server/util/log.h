#pragma once

#include <cstdint>
#include <string_view>

#include "nlohmann/json.hpp"

namespace videogen::util {

enum class LogFormat { kJson, kText };

// Structured logs: one line per event on stderr, JSON by default. Fields
// never include secrets; callers pass ids, never keys.
//
// Log() formats the line on the caller's thread and hands it to one writer
// thread through a bounded queue, so a caller never waits on stderr: a full
// pipe (a stalled log shipper) must not freeze the tracker or the fan-out.
// When the queue is full the line is dropped and counted; the writer reports
// the count once it catches up. Thread-safe.
void SetLogFormat(LogFormat format);
void Log(std::string_view level, std::string_view event,
         nlohmann::json fields = nlohmann::json::object());
// Waits until every queued line has been written (or `timeout_ms` passed).
// Called before exit so the last lines are not lost.
void FlushLogs(int timeout_ms = 2000);
// Lines dropped because the queue was full, since start.
int64_t DroppedLogLines();

}  // namespace videogen::util
