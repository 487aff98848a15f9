#include "client/render.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/sanitize.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "server/core/estimate_text.h"

namespace videogen::client {
namespace {

constexpr char kClearLine[] = "\r\033[2K";

bool Utf8Terminal() {
  for (const char* name : {"LC_ALL", "LC_CTYPE", "LANG"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && *value != '\0') {
      std::string v = absl::AsciiStrToLower(value);
      return absl::StrContains(v, "utf-8") || absl::StrContains(v, "utf8");
    }
  }
  return false;
}

const std::vector<std::string>& SpinnerFrames() {
  static const auto* frames = new std::vector<std::string>(
      Utf8Terminal() ? std::vector<std::string>{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴",
                                                "⠦", "⠧", "⠇", "⠏"}
                     : std::vector<std::string>{"|", "/", "-", "\\"});
  return *frames;
}

absl::Time ToTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

absl::Time CreateTime(const v1::Generation& g, absl::Time fallback) {
  if (!g.has_create_time() || g.create_time().seconds() == 0) return fallback;
  return ToTime(g.create_time());
}

std::string UsageText(const v1::Usage& usage) {
  std::vector<std::string> parts;
  if (usage.tokens_used() > 0) {
    parts.push_back(absl::StrCat(usage.tokens_used(), " tokens"));
  }
  if (usage.credits_used() > 0) {
    parts.push_back(absl::StrCat(usage.credits_used(), " credits"));
  }
  return absl::StrJoin(parts, ", ");
}

std::string VideoDetails(const v1::Video& video) {
  std::vector<std::string> parts;
  if (video.file_size_bytes() > 0) {
    parts.push_back(HumanBytes(video.file_size_bytes()));
  }
  if (!video.content_type().empty()) parts.push_back(video.content_type());
  if (video.duration_seconds() > 0) {
    parts.push_back(absl::StrFormat("%gs", video.duration_seconds()));
  }
  return absl::StrJoin(parts, ", ");
}

// Columns of the terminal on stdout; 0 when unknown.
int TerminalColumns() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0) return 0;
  return ws.ws_col;
}

// `line` cut to fit `columns - 1` terminal columns (one code point counted
// as one column), so that it never wraps: "\r ESC[2K" clears one row only.
std::string FitColumns(const std::string& line, int columns) {
  if (columns <= 1) return line;
  size_t points = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    if ((static_cast<unsigned char>(line[i]) & 0xC0) == 0x80) continue;
    if (++points == static_cast<size_t>(columns)) return line.substr(0, i);
  }
  return line;
}

std::string Truncate(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  return s.substr(0, n - 3) + "...";
}

}  // namespace

OutputMode DetectOutputMode(bool json_flag) {
  if (json_flag || !isatty(STDOUT_FILENO)) return OutputMode::kJson;
  return OutputMode::kTty;
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  auto status =
      google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) return "{}";
  return EscapeJsonControls(out);
}

std::string CodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);
}

void PrintError(const absl::Status& status) {
  std::cerr << "error: " << CodeName(status.code()) << ": "
            << ForTerminal(status.message()) << std::endl;
}

std::string StateName(v1::Generation::State state) {
  std::string name = v1::Generation::State_Name(state);
  if (absl::StartsWith(name, "STATE_")) name = name.substr(6);
  return name;
}

std::string HumanBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = bytes / 1024.0;
  int unit = 0;
  while (value >= 1024 && unit < 3) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, units[unit]);
}

std::string HumanDuration(absl::Duration d) {
  int64_t s = absl::ToInt64Seconds(d);
  if (s < 0) s = 0;
  if (s >= 3600) {
    return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  }
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

std::string EstimateText(const v1::Generation& g, absl::Time now) {
  if (g.done() || !g.has_estimate()) return "";
  return core::DescribeEstimate(g.estimate(), now);
}

namespace {

// The video's lines of a summary: the upstream URL, the server's copy and
// its checksum, or why the copy failed.
void PrintVideo(const v1::Video& video) {
  if (!video.url().empty()) {
    std::cout << "  video: " << ForTerminal(video.url()) << "\n";
    std::string details = VideoDetails(video);
    if (!details.empty()) {
      std::cout << "  size:  " << ForTerminal(details) << "\n";
    }
  }
  if (!video.mirror_url().empty()) {
    std::cout << "  mirror: " << ForTerminal(video.mirror_url()) << "\n";
  }
  if (!video.sha256().empty()) {
    std::cout << "  sha256: " << ForTerminal(video.sha256()) << "\n";
  }
  if (!video.mirror_error().empty()) {
    std::cout << "  mirror error: " << ForTerminal(video.mirror_error())
              << "\n";
  }
}

}  // namespace

void PrintSummary(const v1::Generation& g) {
  std::cout << StateName(g.state()) << "  " << ForTerminal(g.id())
            << "  (revision " << g.revision();
  if (g.has_create_time() && g.has_update_time()) {
    std::cout << ", "
              << HumanDuration(ToTime(g.update_time()) -
                               ToTime(g.create_time()));
  }
  std::cout << ")\n";
  if (!g.upstream_status().empty()) {
    std::cout << "  upstream status: " << ForTerminal(g.upstream_status())
              << "\n";
  }
  std::string estimate = EstimateText(g, absl::Now());
  if (!estimate.empty()) {
    std::cout << "  estimate: " << estimate;
    if (g.estimate().samples() > 0) {
      std::cout << " (from " << g.estimate().samples() << " past generations)";
    } else {
      std::cout << " (documented timing)";
    }
    std::cout << "\n";
  }
  PrintVideo(g.video());
  std::string usage = UsageText(g.usage());
  if (!usage.empty()) std::cout << "  usage: " << usage << "\n";
  if (g.state() == v1::Generation::STATE_FAILED) {
    std::cout << "  error: " << ForTerminal(g.error().reason()) << ": "
              << ForTerminal(g.error().message()) << "\n";
  }
  std::cout << std::flush;
}

void PrintGeneration(OutputMode mode, const v1::Generation& g) {
  if (mode == OutputMode::kJson) {
    std::cout << ToJson(g) << std::endl;
    return;
  }
  PrintSummary(g);
  std::cout << "  prompt: " << Truncate(ForTerminal(g.request().prompt()), 70)
            << "\n";
  if (!g.tenant().empty()) {
    std::cout << "  tenant: " << ForTerminal(g.tenant()) << "\n";
  }
  if (!g.labels().empty()) {
    std::map<std::string, std::string> sorted(g.labels().begin(),
                                              g.labels().end());
    std::vector<std::string> labels;
    for (const auto& [k, v] : sorted) {
      labels.push_back(absl::StrCat(ForTerminal(k), "=", ForTerminal(v)));
    }
    std::cout << "  labels: " << absl::StrJoin(labels, ", ") << "\n";
  }
  if (g.has_webhook_status()) {
    const v1::WebhookStatus& w = g.webhook_status();
    std::cout << "  webhook: " << ForTerminal(w.last_result()) << " ("
              << w.attempts() << (w.attempts() == 1 ? " attempt" : " attempts")
              << (w.settled() ? ", settled" : "") << ")\n";
  }
  if (g.has_create_time()) {
    std::cout << "  created: "
              << google::protobuf::util::TimeUtil::ToString(g.create_time())
              << "\n";
  }
  std::cout << std::flush;
}

void PrintList(OutputMode mode, const v1::ListGenerationsResponse& response) {
  if (mode == OutputMode::kJson) {
    std::cout << ToJson(response) << std::endl;
    return;
  }
  std::cout << absl::StrFormat("%-24s %-10s %-4s %s\n", "ID", "STATE", "REV",
                               "PROMPT");
  for (const auto& g : response.generations()) {
    std::cout << absl::StrFormat(
        "%-24s %-10s %-4d %s\n", ForTerminal(g.id()), StateName(g.state()),
        g.revision(), Truncate(ForTerminal(g.request().prompt()), 40));
  }
  if (!response.next_page_token().empty()) {
    std::cout << "next page token: " << ForTerminal(response.next_page_token())
              << "\n";
  }
  std::cout << std::flush;
}

EventPrinter::EventPrinter(OutputMode mode) : mode_(mode) {
  if (mode_ == OutputMode::kTty) ticker_ = std::thread([this] { Tick(); });
}

EventPrinter::~EventPrinter() { StopTicker(); }

void EventPrinter::StopTicker() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (ticker_.joinable()) ticker_.join();
}

void EventPrinter::Tick() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    frame_++;
    DrawLocked();
    mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(100));
  }
}

std::string EventPrinter::LineLocked() const {
  const auto& frames = SpinnerFrames();
  std::string line = absl::StrCat(frames[frame_ % frames.size()], " ");
  if (last_.id().empty()) {
    absl::StrAppend(&line, "connecting");
  } else {
    absl::StrAppend(&line, StateName(last_.state()));
    if (!last_.upstream_status().empty()) {
      absl::StrAppend(&line,
                      "  upstream: ", ForTerminal(last_.upstream_status()));
    }
    absl::StrAppend(&line, "  rev ", last_.revision());
  }
  // Times from the server are read on the server's clock.
  const absl::Time server_now = absl::Now() + server_clock_offset_;
  absl::StrAppend(
      &line, "  ",
      HumanDuration(server_now -
                    CreateTime(last_, start_ + server_clock_offset_)));
  std::string estimate = EstimateText(last_, server_now);
  if (!estimate.empty()) absl::StrAppend(&line, "  ", estimate);
  if (!note_.empty()) absl::StrAppend(&line, "  (", note_, ")");
  return line;
}

void EventPrinter::DrawLocked() {
  std::cout << kClearLine << FitColumns(LineLocked(), TerminalColumns())
            << std::flush;
  drawn_ = true;
}

void EventPrinter::OnEvent(const v1::GenerationEvent& event) {
  if (mode_ == OutputMode::kJson) {
    if (event.type() == v1::GenerationEvent::TYPE_HEARTBEAT) return;
    std::cout << ToJson(event) << std::endl;
    return;
  }
  absl::MutexLock lock(&mu_);
  note_.clear();
  if (event.type() != v1::GenerationEvent::TYPE_HEARTBEAT) {
    last_ = event.generation();
  } else if (event.has_observe_time()) {
    // A heartbeat's observe_time is the server's "now" (whole seconds):
    // enough to correct a clock that is off by more than that.
    absl::Duration offset = ToTime(event.observe_time()) - absl::Now();
    server_clock_offset_ = absl::AbsDuration(offset) > absl::Seconds(2)
                               ? offset
                               : absl::ZeroDuration();
  }
  DrawLocked();
}

void EventPrinter::OnReconnect(const absl::Status& why, absl::Duration wait) {
  if (mode_ == OutputMode::kJson) {
    std::cerr << "reconnecting in " << absl::FormatDuration(wait) << " ("
              << CodeName(why.code()) << ": " << ForTerminal(why.message())
              << ")" << std::endl;
    return;
  }
  absl::MutexLock lock(&mu_);
  note_ = absl::StrCat("reconnecting: ", CodeName(why.code()));
  DrawLocked();
}

void EventPrinter::Abort() {
  StopTicker();
  absl::MutexLock lock(&mu_);
  if (drawn_) std::cout << kClearLine << std::flush;
  drawn_ = false;
}

void EventPrinter::Finish(const v1::Generation& generation) {
  Abort();
  if (mode_ == OutputMode::kTty) PrintSummary(generation);
}

}  // namespace videogen::client
