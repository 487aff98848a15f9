#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::e2e {

// A free TCP port on loopback (bound to port 0, then released).
int FreePort();

// A fresh, empty directory under the test's temp dir.
std::string FreshDir(const std::string& stem);

// How a child's stderr is connected.
enum class StderrMode {
  kFile,  // captured to a file (Stderr() reads it)
  // A pipe shrunk to one page whose read end the test holds and never
  // reads: the child's writes to stderr block or fail once it is full.
  kUnreadPipe,
};

// A child process with stdout/stderr captured to files. Owned by one test
// thread. The destructor kills it (SIGKILL) if it still runs.
class Process {
 public:
  Process(std::vector<std::string> argv, std::map<std::string, std::string> env,
          StderrMode stderr_mode = StderrMode::kFile);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Exit code, or -signal; nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  std::string Stdout() const;
  std::string Stderr() const;  // "" with StderrMode::kUnreadPipe
  // Waits until `needle` shows up in stdout or stderr.
  bool WaitForOutput(const std::string& needle, absl::Duration timeout) const;
  // Resident set size in bytes (from /proc), or -1 when gone.
  int64_t RssBytes() const;
  // kUnreadPipe: bytes waiting in the pipe and its capacity.
  int PipeQueued() const;
  int PipeCapacity() const;

 private:
  pid_t pid_ = -1;
  std::string out_path_;
  std::string err_path_;
  int err_pipe_ = -1;  // read end, kUnreadPipe only
  std::optional<int> exit_;
};

// Runs a command to completion (at most `timeout`), capturing its output.
struct CommandResult {
  int exit_code = -1;  // -signal when killed; -1000 on timeout
  std::string out;
  std::string err;
};
CommandResult RunCommand(const std::vector<std::string>& argv,
                         absl::Duration timeout = absl::Seconds(30));

// Paths of the binaries under test, from the command line (see main).
struct Binaries {
  std::string server;
  std::string sim;
};
Binaries& Bins();

// A running videogen-sim.
struct Sim {
  std::unique_ptr<Process> process;
  std::string url;  // http://127.0.0.1:PORT
  nlohmann::json Stats() const;
  // GET /v2/logs?period=24h (the usage log, newest first, first page of up
  // to 100 rows): the "data" array, or an empty array on error.
  nlohmann::json UsageLog() const;
};
// The sim accepts the upstream key `kSimKey`.
inline constexpr char kSimKey[] = "e2e-key";
Sim StartSim(const std::vector<std::string>& extra_flags = {});

// Upstream requests the sim answered whose "METHOD /path" starts with
// `prefix` ("" counts all).
int64_t SimRequests(const Sim& sim, const std::string& prefix = "");
// Every row of the sim's usage log (all pages), newest first. Waits out a
// 429 (the log's rate limit is shared with the server under test); any
// other failure is a test failure.
std::vector<nlohmann::json> FullUsageLog(const Sim& sim);

// `videogen-server keys create --tenant=TENANT FLAGS...` on a store given
// by `store_flags` (e.g. {"--store=sqlite", "--data_dir=DIR"}). Returns the
// printed JSON object (it has "key", "key_id", "tenant", ...); throws
// std::runtime_error with the command's stderr on failure.
nlohmann::json CreateKey(const std::vector<std::string>& store_flags,
                         const std::string& tenant,
                         const std::vector<std::string>& flags = {});

// A channel to `address` whose every call carries `authorization: Bearer
// KEY` (nothing when `key` is empty), unless the call sets its own
// authorization metadata. Uses a private subchannel pool: a restarted server
// on the same port must not inherit the dead process's connection.
std::shared_ptr<grpc::Channel> ChannelWithKey(
    const std::string& address, const std::string& key,
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

// How to start a server. StartServer(url, flags, port) is the short form.
struct ServerOptions {
  std::vector<std::string> flags;  // appended last: they win over defaults
  int port = 0;                    // 0 picks a free port
  // With keys (the server's default), an admin key is created on the
  // server's store before it starts and attached to `channel`/`stub`.
  // false adds --auth=none. --store=memory or --auth=none in `flags`
  // imply false (a memory store cannot be given keys from outside).
  bool auth = true;
  StderrMode stderr_mode = StderrMode::kFile;
  // Wait for the gRPC port to answer health checks, not for the
  // "server_listening" log line (needed with kUnreadPipe).
  bool ready_by_health = false;
  absl::Duration start_timeout = absl::Seconds(30);
};

// A running videogen-server pointed at a sim. By default: SQLite in a
// fresh data dir (unless `flags` name --store/--data_dir), --auth=keys with
// an admin key, reflection off, fast poll intervals, --drain_grace=5s.
struct Server {
  std::unique_ptr<Process> process;
  int port = 0;
  std::string address;   // 127.0.0.1:PORT
  std::string data_dir;  // the --data_dir in effect ("" for memory)
  // Flags naming the store (--store, --data_dir, --database_url), to run
  // `videogen-server keys` against the same store.
  std::vector<std::string> store_flags;
  std::string admin_key;                   // "" with --auth=none
  std::shared_ptr<grpc::Channel> channel;  // carries admin_key
  std::unique_ptr<v1::VideoGeneration::Stub> stub;

  // A new key on this server's store (`keys create --tenant=TENANT FLAGS`,
  // e.g. {"--max_concurrent=2"} or {"--admin"}): the printed JSON object.
  nlohmann::json CreateKey(const std::string& tenant,
                           const std::vector<std::string>& flags = {}) const;
  // A channel/stub sending `key` with every call ("" sends none).
  std::shared_ptr<grpc::Channel> Channel(const std::string& key) const;
  std::unique_ptr<v1::VideoGeneration::Stub> Stub(const std::string& key) const;
};
Server StartServer(const std::string& sim_url,
                   const std::vector<std::string>& extra_flags = {},
                   int port = 0);
Server StartServerWith(const std::string& sim_url, ServerOptions options);

// A stream's events and final status, read synchronously.
struct StreamResult {
  std::vector<v1::GenerationEvent> events;
  grpc::Status status;
};
StreamResult ReadAll(grpc::ClientReaderInterface<v1::GenerationEvent>* reader);

v1::GenerateRequest SimpleRequest(const std::string& prompt = "a red fox");

// Calls `method` ("/pkg.Service/Method") with `request` as the raw request
// message bytes: lets a test send what the generated setters refuse (e.g.
// invalid UTF-8 in a string field). `response`, if set, gets the raw reply.
grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel,
                          const std::string& method, const std::string& request,
                          std::string* response = nullptr,
                          absl::Duration timeout = absl::Seconds(10));
// The same for a server-streaming method: reads every message (counted in
// `messages`, if set) and returns the final status.
grpc::Status RawServerStreamingCall(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
    const std::string& request, int* messages = nullptr,
    absl::Duration timeout = absl::Seconds(10));
// A length-delimited protobuf field (wire type 2): hand-encoded messages.
std::string EncodeBytesField(int number, const std::string& bytes);

// GET http://127.0.0.1:PORT/metrics; "" when it does not answer 200.
std::string ScrapeMetrics(int port);
// The value of one series line (`name{labels} value`) in a scrape, or -1.
double MetricValue(const std::string& text, const std::string& series);

}  // namespace videogen::e2e
