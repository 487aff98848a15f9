#include "server/util/log.h"

#include <unistd.h>

#include <cerrno>
#include <deque>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/util/thread_name.h"

namespace videogen::util {
namespace {

// Enough for a burst of several thousand lines; beyond that, dropping is
// better than blocking the thread that logs.
constexpr size_t kMaxQueuedLines = 8192;

std::string Timestamp() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                          absl::UTCTimeZone());
}

// The queue and its writer thread. The writer is detached and lives for the
// process: a static destructor must not wait on a blocked stderr.
class Writer {
 public:
  Writer() {
    std::thread([this] {
      NameThisThread("vg-log");
      Loop();
    }).detach();
  }

  void Push(std::string line) {
    absl::MutexLock lock(&mu_);
    if (queue_.size() >= kMaxQueuedLines) {
      ++dropped_;
      ++dropped_unreported_;
      return;
    }
    queue_.push_back(std::move(line));
  }

  void Flush(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return queue_.empty() && !writing_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
  }

  int64_t dropped() {
    absl::MutexLock lock(&mu_);
    return dropped_;
  }

  LogFormat format() {
    absl::MutexLock lock(&mu_);
    return format_;
  }
  void set_format(LogFormat f) {
    absl::MutexLock lock(&mu_);
    format_ = f;
  }

 private:
  void Loop() {
    while (true) {
      std::deque<std::string> batch;
      int64_t dropped = 0;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](std::deque<std::string>* q) { return !q->empty(); }, &queue_));
        batch.swap(queue_);
        dropped = dropped_unreported_;
        dropped_unreported_ = 0;
        writing_ = true;
      }
      std::string out;
      for (const std::string& line : batch) out += line;
      if (dropped > 0) {
        out +=
            "{\"level\":\"warn\",\"event\":\"log_lines_dropped\",\"count\":" +
            std::to_string(dropped) + "}\n";
      }
      WriteAll(out);
      absl::MutexLock lock(&mu_);
      writing_ = false;
    }
  }

  static void WriteAll(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::write(STDERR_FILENO, s.data() + off, s.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // stderr closed: nothing to do
      off += static_cast<size_t>(n);
    }
  }

  absl::Mutex mu_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_unreported_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  LogFormat format_ ABSL_GUARDED_BY(mu_) = LogFormat::kJson;
};

Writer& TheWriter() {
  static Writer* writer = new Writer();  // never destroyed, see above
  return *writer;
}

}  // namespace

void SetLogFormat(LogFormat format) { TheWriter().set_format(format); }

void Log(std::string_view level, std::string_view event,
         nlohmann::json fields) {
  Writer& writer = TheWriter();
  std::string line;
  if (writer.format() == LogFormat::kJson) {
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
  writer.Push(std::move(line));
}

void FlushLogs(int timeout_ms) {
  TheWriter().Flush(absl::Milliseconds(timeout_ms));
}

int64_t DroppedLogLines() { return TheWriter().dropped(); }

}  // namespace videogen::util
