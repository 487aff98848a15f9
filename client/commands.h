#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/watch.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::client {

// Process exit codes (issue 7).
enum ExitCode : int {
  kExitOk = 0,                // completed, or a non-stream command succeeded
  kExitGenerationFailed = 1,  // the generation FAILED or was CANCELLED
  kExitUsage = 2,             // bad command line
  kExitRpcError = 3,          // RPC, connection or download error
};

// Flags shared by every subcommand.
struct GlobalOptions {
  std::string server = "127.0.0.1:50051";
  absl::Duration timeout = absl::Seconds(30);  // unary deadline / connect
  bool json = false;
  bool tls = false;
  std::string ca_cert;  // PEM file; empty = system roots
  // Sent as "authorization: Bearer KEY" on every RPC and to the server's HTTP
  // listener; never printed. Empty: no header.
  std::string api_key;
  // The server's HTTP listener, e.g. "http://127.0.0.1:8080", where
  // Video.mirror_url paths are served. Empty: mirrors are not used.
  std::string http_url;
};

struct GenerateOptions {
  v1::GenerateRequest request;  // prompt, model, ... and labels
  bool detach = false;
  std::string output;  // download here once completed
  FollowOptions follow;
};

struct ListOptions {
  std::vector<v1::Generation::State> states;
  std::map<std::string, std::string> labels;
  int limit = 0;  // 0: one page only
  int page_size = 0;
  std::string page_token;
};

struct DownloadCommandOptions {
  std::string target;  // a generation id or an http(s) URL
  std::string output;
};

// Each runs one subcommand and returns the process exit code. They print
// their own output and errors.
int RunGenerate(const GlobalOptions& global, const GenerateOptions& options);
int RunWatch(const GlobalOptions& global, const std::string& id,
             const FollowOptions& follow);
int RunGet(const GlobalOptions& global, const std::string& id);
int RunList(const GlobalOptions& global, const ListOptions& options);
int RunCancel(const GlobalOptions& global, const std::string& id);
int RunDownload(const GlobalOptions& global,
                const DownloadCommandOptions& options);

// "k=v" -> {k, v}; INVALID_ARGUMENT when there is no '=' or no key.
absl::StatusOr<std::pair<std::string, std::string>> ParseLabel(
    const std::string& text);

// "completed" -> STATE_COMPLETED (also accepts "STATE_COMPLETED").
absl::StatusOr<v1::Generation::State> ParseState(const std::string& text);

// Whether `key` can be sent in a header: printable ASCII without spaces.
bool ValidApiKey(const std::string& key);

// A fresh random UUID version 4, e.g. "3b241101-e2bb-4255-8caf-4136c566a962".
std::string NewUuid();

}  // namespace videogen::client
