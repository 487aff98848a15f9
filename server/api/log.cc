#include "server/api/log.h"

#include <cstdio>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace videogen::api {
namespace {

absl::Mutex log_mu(absl::kConstInit);
LogFormat log_format ABSL_GUARDED_BY(log_mu) = LogFormat::kJson;

std::string Timestamp() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                          absl::UTCTimeZone());
}

}  // namespace

void SetLogFormat(LogFormat format) {
  absl::MutexLock lock(&log_mu);
  log_format = format;
}

void Log(std::string_view level, std::string_view event,
         nlohmann::json fields) {
  std::string line;
  absl::MutexLock lock(&log_mu);
  if (log_format == LogFormat::kJson) {
    nlohmann::json j = {{"ts", Timestamp()},
                        {"level", std::string(level)},
                        {"event", std::string(event)}};
    j.update(fields);
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = Timestamp() + " " + std::string(level) + " " + std::string(event);
    if (!fields.empty()) {
      line += " " + fields.dump(-1, ' ', false,
                                nlohmann::json::error_handler_t::replace);
    }
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace videogen::api
