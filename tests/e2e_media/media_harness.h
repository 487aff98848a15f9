#pragma once

// Process and HTTP helpers for the estimate and mirroring end-to-end tests
// (issues 20 and 21): the real videogen-server and videogen-sim binaries as
// child processes on free loopback ports, driven through the HTTP/JSON API.
// The process helpers are a copy of tests/e2e/harness.cc's (that harness is
// edited elsewhere; this folder must not depend on its churn).

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "httplib.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::e2e_media {

// A free TCP port on loopback (bound to port 0, then released).
int FreePort();

// A fresh, empty directory under the test's temp dir.
std::string MakeTempDir(const std::string& stem);

// A child process with stdout/stderr captured to files. Owned by one test
// thread. The destructor kills it (SIGKILL) if it still runs.
class Process {
 public:
  Process(std::vector<std::string> argv,
          std::map<std::string, std::string> env);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Exit code, or -signal; nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  // SIGKILL and reap.
  void Kill();
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

// Runs a command to completion; its stdout, or an error with its stderr.
absl::StatusOr<std::string> RunCommand(
    std::vector<std::string> argv, absl::Duration timeout = absl::Seconds(30));

const std::string& ServerBin();
const std::string& SimBin();

// A running videogen-sim (--key=e2e-key).
struct Sim {
  std::unique_ptr<Process> process;
  std::string url;  // http://127.0.0.1:PORT
};
Sim StartSim(const std::vector<std::string>& flags);

// A running videogen-server with --http_listen on a free port.
struct ServerSpec {
  std::string upstream_url;
  std::string data_dir;       // --data_dir; also selects --store=sqlite
  std::string auth = "none";  // none | keys
  std::string mirror = "local";
  std::vector<std::string> flags;
  std::map<std::string, std::string> env;
  int http_port = 0;  // 0: a free one
};
struct Server {
  std::unique_ptr<Process> process;
  std::string http_url;  // http://127.0.0.1:PORT
  int metrics_port = 0;
};
Server StartServer(const ServerSpec& spec);

// The JSON API of one server as one caller (key "" with --auth=none).
// Thread-compatible.
class Api {
 public:
  Api(std::string base_url, std::string key = "");

  absl::StatusOr<v1::Generation> Create(const std::string& prompt,
                                        int duration_seconds = 5);
  absl::StatusOr<v1::Generation> Get(const std::string& id);
  // Polls every 50 ms until the generation is done.
  absl::StatusOr<v1::Generation> WaitDone(const std::string& id,
                                          absl::Duration timeout);
  // GET /v1/media/{id}, with an optional Range header value.
  httplib::Result Media(const std::string& id, const std::string& range = "");

 private:
  httplib::Headers Headers() const;

  std::string base_url_;
  std::string key_;
  httplib::Client client_;
};

// Parses the API's proto3 JSON (unknown fields ignored).
absl::StatusOr<v1::Generation> ParseGeneration(std::string_view json);

// Lowercase hex SHA-256.
std::string Sha256Hex(std::string_view bytes);

// Creates an API key with `videogen-server keys create` against the SQLite
// store under `data_dir` (while no server holds it). Returns the key.
absl::StatusOr<std::string> CreateKey(const std::string& data_dir,
                                      const std::string& tenant, bool admin);

// Entries of `dir` (names only, "." and ".." left out), sorted.
std::vector<std::string> ListDir(const std::string& dir);

}  // namespace videogen::e2e_media
