// videogen-server: the gRPC (and HTTP) gateway for text-to-video generation.
//   videogen-server [flags]              serve (see --helpfull)
//   videogen-server keys create|list|revoke ...   manage API keys
#include <signal.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "server/api/log.h"
#include "server/app/config.h"
#include "server/app/server.h"
#include "server/app/wiring.h"
#include "server/auth/keys_command.h"

namespace videogen {
namespace {

using api::Log;

int Fail(const absl::Status& status, const char* what) {
  Log("error", "startup_failed",
      {{"what", what}, {"error", std::string(status.message())}});
  api::FlushLogs();
  return 1;
}

// `keys ...`: the words after `keys` that are not store flags go to the
// keys command; the store flags (--store, --data_dir, --database_url) pick
// the same store the server uses.
int RunKeys(int argc, char** argv) {
  std::vector<char*> flag_args = {argv[0]};
  std::vector<std::string> words;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--store", 0) == 0 || a.rfind("--data_dir", 0) == 0 ||
        a.rfind("--database_url", 0) == 0 || a.rfind("--log_format", 0) == 0) {
      flag_args.push_back(argv[i]);
    } else {
      words.push_back(a);
    }
  }
  std::vector<std::string> storage;
  std::vector<char*> args = app::WithEnvFallbacks(
      static_cast<int>(flag_args.size()), flag_args.data(), storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  absl::StatusOr<app::Config> config = app::ConfigFromFlags();
  if (!config.ok()) {
    std::cerr << "videogen-server keys: " << config.status().message() << "\n";
    return 2;
  }
  // Beside a server running on the same store, too: a revocation reaches
  // it within seconds (design.md §7).
  auto store = app::OpenStore(*config, app::StoreUser::kKeysCommand);
  if (!store.ok()) {
    std::cerr << "videogen-server keys: " << store.status().message() << "\n";
    return 1;
  }
  core::SystemClock clock;
  return auth::RunKeysCommand(words, store->get(), &clock, std::cout,
                              std::cerr);
}

// Blocks until SIGTERM or SIGINT; purges old records once an hour meanwhile.
int WaitForSignal(const sigset_t& signals, app::Server& server) {
  while (true) {
    timespec hour{3600, 0};
    int sig = sigtimedwait(&signals, nullptr, &hour);
    if (sig == SIGTERM || sig == SIGINT) return sig;
    server.Purge();
  }
}

int Serve(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> args = app::WithEnvFallbacks(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  absl::StatusOr<app::Config> config = app::ConfigFromFlags();
  if (!config.ok()) return Fail(config.status(), "flags");

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts

  app::Server server(*config);
  if (absl::Status s = server.Start(); !s.ok()) {
    server.Drain();
    return Fail(s, "start");
  }
  const int sig = WaitForSignal(signals, server);
  Log("info", "signal", {{"signal", sig}});
  server.Drain();
  return 0;
}

}  // namespace
}  // namespace videogen

int main(int argc, char** argv) {
  // Debian's Abseil builds with deadlock detection on (kAbort): it costs
  // about a fifth of the server's CPU at 10k watchers. Tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      "videogen-server: gRPC and HTTP gateway for text-to-video generation.\n"
      "  videogen-server --simulate --auth=none --listen=127.0.0.1:50051\n"
      "  videogen-server keys create --tenant=NAME [--admin] "
      "[--max_concurrent=N] ...");
  if (argc >= 2 && std::strcmp(argv[1], "keys") == 0) {
    return videogen::RunKeys(argc, argv);
  }
  return videogen::Serve(argc, argv);
}
