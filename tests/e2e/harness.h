#pragma once

#include <sys/types.h>

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

// A child process with stdout/stderr captured to files. Owned by one test
// thread. The destructor kills it (SIGKILL) if it still runs.
class Process {
 public:
  Process(std::vector<std::string> argv,
          std::map<std::string, std::string> env);
  ~Process();
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Exit code, or -signal; nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  std::string Stdout() const;
  std::string Stderr() const;
  // Waits until `needle` shows up in stdout or stderr.
  bool WaitForOutput(const std::string& needle, absl::Duration timeout) const;

 private:
  pid_t pid_ = -1;
  std::string out_path_;
  std::string err_path_;
  std::optional<int> exit_;
};

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
};
Sim StartSim(const std::vector<std::string>& extra_flags = {});

// A running videogen-server pointed at a sim.
struct Server {
  std::unique_ptr<Process> process;
  int port = 0;
  std::string address;  // 127.0.0.1:PORT
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::VideoGeneration::Stub> stub;
};
Server StartServer(const std::string& sim_url,
                   const std::vector<std::string>& extra_flags = {},
                   int port = 0);

// A stream's events and final status, read synchronously.
struct StreamResult {
  std::vector<v1::GenerationEvent> events;
  grpc::Status status;
};
StreamResult ReadAll(grpc::ClientReaderInterface<v1::GenerationEvent>* reader);

v1::GenerateRequest SimpleRequest(const std::string& prompt = "a red fox");

}  // namespace videogen::e2e
