#pragma once

#include <cstdint>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::client {

namespace v1 = ::videogen::v1;

// kTty: a live line redrawn in place, then a human summary.
// kJson: one single-line JSON object per event or resource (proto3 mapping).
enum class OutputMode { kTty, kJson };

// kTty only when stdout is a terminal and --json was not given.
OutputMode DetectOutputMode(bool json_flag);

// The proto3 JSON mapping of `message` on one line.
std::string ToJson(const google::protobuf::Message& message);

// "UNAVAILABLE" for absl::StatusCode::kUnavailable.
std::string CodeName(absl::StatusCode code);

// Prints `error: <CODE_NAME>: <message>` to stderr, the message stripped of
// control characters (it may come from the server).
void PrintError(const absl::Status& status);

// "QUEUED" for STATE_QUEUED.
std::string StateName(v1::Generation::State state);

// "1.2 MB" style sizes for humans.
std::string HumanBytes(int64_t bytes);

// "1:05" / "1:02:03" style durations for humans.
std::string HumanDuration(absl::Duration d);

// "about 3 min left", "running long", ... for a generation that is not done
// and has an estimate, as of `now` on the server's clock; else "".
std::string EstimateText(const v1::Generation& generation, absl::Time now);

// get/cancel/detach: the resource as JSON, or a few readable lines.
void PrintGeneration(OutputMode mode, const v1::Generation& generation);

// list: one JSON object (the whole response), or a table and the token.
void PrintList(OutputMode mode, const v1::ListGenerationsResponse& response);

// Shows the events of one generation. In kTty mode a ticker thread redraws the
// live line (spinner, elapsed time) every 100 ms; the reading thread updates
// its contents. Thread-safe: all state is guarded by mu_.
class EventPrinter {
 public:
  explicit EventPrinter(OutputMode mode);
  ~EventPrinter();
  EventPrinter(const EventPrinter&) = delete;
  EventPrinter& operator=(const EventPrinter&) = delete;

  // Prints one accepted event (already de-duplicated by the caller).
  void OnEvent(const v1::GenerationEvent& event);
  // The stream broke and will be retried after `wait`.
  void OnReconnect(const absl::Status& why, absl::Duration wait);
  // Clears the live line and prints the summary (kTty only).
  void Finish(const v1::Generation& generation);
  // Clears the live line so that an error message starts on a clean line.
  void Abort();

 private:
  void Tick();
  void StopTicker();
  void DrawLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string LineLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const OutputMode mode_;
  const absl::Time start_ = absl::Now();
  absl::Mutex mu_;
  v1::Generation last_ ABSL_GUARDED_BY(mu_);
  std::string note_ ABSL_GUARDED_BY(mu_);  // e.g. "reconnecting"
  // Server clock minus ours, learned from heartbeats; zero unless it is
  // clearly off, so that the estimate counts down on the server's clock.
  absl::Duration server_clock_offset_ ABSL_GUARDED_BY(mu_);
  int frame_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool drawn_ ABSL_GUARDED_BY(mu_) = false;
  std::thread ticker_;
};

// Summary lines for a terminal generation (state, video URL, size, usage).
void PrintSummary(const v1::Generation& generation);

}  // namespace videogen::client
