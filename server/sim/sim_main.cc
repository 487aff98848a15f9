// videogen-sim: the simulated AI/ML API as a standalone server.
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "server/sim/sim_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:8000",
          "host:port to serve on; port 0 picks a free port");
ABSL_FLAG(std::string, key, "sim-key",
          "the Bearer key clients must send (empty: accept any)");
ABSL_FLAG(absl::Duration, queued_for, absl::Seconds(1),
          "how long a job stays queued");
ABSL_FLAG(absl::Duration, generating_for, absl::Seconds(2),
          "how long a job stays generating");
ABSL_FLAG(bool, hold_queued, false,
          "keep every job queued until POST /sim/release; queued_for and "
          "generating_for then count from the release");
ABSL_FLAG(bool, realistic, false,
          "upstream-like timing: queued 30s, generating 5m per 5 s of clip");
ABSL_FLAG(double, error_rate, 0, "share of jobs that end in status error");
ABSL_FLAG(absl::Duration, slow_delay, absl::Seconds(3),
          "delay of the slow fault");
ABSL_FLAG(int, retry_after, 1, "Retry-After seconds sent with 429 faults");
ABSL_FLAG(std::vector<std::string>, fault, {},
          "ENDPOINT:KIND[:rate=R][:every=N], repeatable or comma-separated; "
          "ENDPOINT create|poll|download|logs, KIND 429|429nr|500|502|503|"
          "504|slow|reset|malformed|odd, or (create only; the job is made, "
          "then the answer goes wrong) create_then_500|create_then_reset|"
          "create_then_slow|create_2xx_no_id");
ABSL_FLAG(int64_t, credits_per_second, 588000,
          "credits a job costs per second of clip (x-aimlapi-credits-used)");
ABSL_FLAG(double, usd_per_second, 0.28,
          "USD a job costs per second of clip (x-aimlapi-usd-spent)");
ABSL_FLAG(double, detail_error_share, 0,
          "share of failed jobs whose error is {detail:[{loc,msg,type}]}");
ABSL_FLAG(bool, usage_as_credits, false,
          "completed answers report meta.usage.credits_used, not tokens_used");
ABSL_FLAG(absl::Duration, logs_lag, absl::ZeroDuration(),
          "delay before a job's row appears in GET /v2/logs");
ABSL_FLAG(int, logs_rate_limit, 200,
          "GET /v2/logs requests allowed per --logs_rate_window, then 429");
ABSL_FLAG(absl::Duration, logs_rate_window, absl::Seconds(60),
          "the rolling window of --logs_rate_limit");
ABSL_FLAG(absl::Duration, keep_alive_timeout, absl::Seconds(5),
          "idle keep-alive connections are closed after this");
ABSL_FLAG(uint64_t, seed, 1, "seed of job outcomes and fault draws");

namespace {

// absl flags keep only the last occurrence of a flag; --fault is repeatable,
// so all occurrences are joined into one comma-separated value first.
std::vector<char*> JoinFaultFlags(int argc, char** argv, std::string* joined) {
  std::vector<char*> args = {argv[0]};
  std::vector<std::string> faults;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      for (; i < argc; ++i) args.push_back(argv[i]);
      break;
    }
    if (a.rfind("--fault=", 0) == 0) {
      faults.push_back(a.substr(8));
    } else if (a == "--fault" && i + 1 < argc) {
      faults.push_back(argv[++i]);
    } else {
      args.push_back(argv[i]);
    }
  }
  if (!faults.empty()) {
    *joined = "--fault=" + absl::StrJoin(faults, ",");
    args.push_back(joined->data());
  }
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "A simulated AI/ML API (Kling video) for tests, demos and benchmarks.");
  std::string joined;
  std::vector<char*> args = JoinFaultFlags(argc, argv, &joined);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  videogen::sim::SimOptions o;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &o.port)) {
    std::fprintf(stderr, "--listen must be host:port, got %s\n",
                 listen.c_str());
    return 2;
  }
  o.host = listen.substr(0, colon);
  if (o.host.size() > 2 && o.host.front() == '[') {
    o.host = o.host.substr(1, o.host.size() - 2);
  }
  o.api_key = absl::GetFlag(FLAGS_key);
  o.queued_for = absl::GetFlag(FLAGS_queued_for);
  o.hold_queued = absl::GetFlag(FLAGS_hold_queued);
  o.generating_for = absl::GetFlag(FLAGS_generating_for);
  if (absl::GetFlag(FLAGS_realistic)) {
    o.queued_for = absl::Seconds(30);
    o.generating_for = absl::Minutes(5);
    o.scale_with_duration = true;
  }
  o.error_rate = absl::GetFlag(FLAGS_error_rate);
  o.slow_delay = absl::GetFlag(FLAGS_slow_delay);
  o.retry_after_seconds = absl::GetFlag(FLAGS_retry_after);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.keep_alive_timeout = absl::GetFlag(FLAGS_keep_alive_timeout);
  o.credits_per_second = absl::GetFlag(FLAGS_credits_per_second);
  o.usd_per_second = absl::GetFlag(FLAGS_usd_per_second);
  o.detail_error_share = absl::GetFlag(FLAGS_detail_error_share);
  o.usage_as_credits = absl::GetFlag(FLAGS_usage_as_credits);
  o.logs_lag = absl::GetFlag(FLAGS_logs_lag);
  o.logs_rate_limit = absl::GetFlag(FLAGS_logs_rate_limit);
  o.logs_rate_window = absl::GetFlag(FLAGS_logs_rate_window);
  for (const std::string& spec : absl::GetFlag(FLAGS_fault)) {
    absl::StatusOr<videogen::sim::FaultRule> rule =
        videogen::sim::ParseFaultRule(spec);
    if (!rule.ok()) {
      std::fprintf(stderr, "%s\n",
                   std::string(rule.status().message()).c_str());
      return 2;
    }
    o.faults.push_back(*rule);
  }

  // Block the stop signals in every thread; main waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  videogen::sim::SimServer server(o);
  absl::Status started = server.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "videogen-sim: %s\n",
                 std::string(started.message()).c_str());
    return 1;
  }
  std::printf("videogen-sim listening on %s\n", server.base_url().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::fprintf(stderr, "videogen-sim: signal %d, stopping\n", sig);
  server.Stop();
  return 0;
}
