#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "tests/bench/videogen/scenarios.h"

namespace videogen::bench {

struct Machine {
  int cores = 0;
  std::string cpu_model;
  int64_t ram_bytes = 0;
  std::string kernel;
  std::string load_average;  // at start: the box may be shared
};

// Everything one run measured.
struct Report {
  Machine machine;
  uint64_t fd_limit = 0;
  std::string command;
  absl::Time start;
  absl::Time end;
  WatchOptions watch_options;
  std::vector<WatchPair> watchers;
  ThroughputResult throughput;
  EfficiencyResult efficiency;
  SseOptions sse_options;
  std::vector<SsePair> sse;

  // True when a stream or call failed, a watcher attached after the first
  // change, or a scenario could not run.
  bool AnyFailure() const;
};

Machine DescribeMachine();
std::string RenderMarkdown(const Report& report);

}  // namespace videogen::bench
