#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videogen::bench {

// A child process started with posix_spawn, its stdout and stderr sent to a
// log file. Owned by one thread; the destructor stops the child.
class Child {
 public:
  Child() = default;
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Starts `argv` with the current environment plus `env`.
  absl::Status Start(const std::vector<std::string>& argv,
                     const std::map<std::string, std::string>& env,
                     const std::string& log_path);
  // Waits until a line of the log contains `needle`; returns that line.
  absl::StatusOr<std::string> WaitForLine(const std::string& needle,
                                          absl::Duration timeout);
  // SIGTERM, then SIGKILL after `grace`.
  void Stop(absl::Duration grace = absl::Seconds(5));

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
};

// Resident set size of `pid` in bytes (VmRSS), or -1.
int64_t RssBytes(pid_t pid);
// Peak resident set size of `pid` in bytes (VmHWM), or -1.
int64_t PeakRssBytes(pid_t pid);
// Threads of `pid` (entries of /proc/PID/task), or -1.
int ThreadCount(pid_t pid);
// User plus system CPU seconds used by `pid` so far, or -1.
double CpuSeconds(pid_t pid);
// Raises the soft RLIMIT_NOFILE to the hard limit; children inherit it.
// Returns the new soft limit.
uint64_t RaiseFdLimit();

}  // namespace videogen::bench
