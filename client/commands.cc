#include "client/commands.h"

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/download.h"
#include "client/render.h"
#include "client/sanitize.h"
#include "client/video_source.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const GlobalOptions& global) {
  if (!global.tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!global.ca_cert.empty()) {
    absl::StatusOr<std::string> pem = ReadFile(global.ca_cert);
    if (!pem.ok()) return pem.status();
    ssl.pem_root_certs = *pem;
  }
  return grpc::SslCredentials(ssl);
}

// A connection to the server. Reconnect backoff is kept short so that a
// watch resumes soon after a server restart. Every call's context goes
// through Prepare, which adds the API key.
class Connection {
 public:
  static absl::StatusOr<Connection> Open(const GlobalOptions& global) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        Credentials(global);
    if (!creds.ok()) return creds.status();
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // Also the connect timeout of each attempt.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                static_cast<int>(absl::ToInt64Milliseconds(global.timeout)));
    // Finds a dead connection under a long, quiet watch (the server allows
    // pings every 10 s; its heartbeats keep the stream itself busy).
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    Connection c;
    if (!global.api_key.empty()) {
      c.authorization_ = absl::StrCat("Bearer ", global.api_key);
    }
    c.channel_ = grpc::CreateCustomChannel(global.server, *creds, args);
    c.stub_ = v1::VideoGeneration::NewStub(c.channel_);
    return c;
  }
  v1::VideoGeneration::Stub* stub() { return stub_.get(); }

  // Adds the key to a call's metadata. Plain metadata rather than call
  // credentials: gRPC refuses those on an insecure channel, and a loopback
  // server without TLS is the common case.
  void Prepare(grpc::ClientContext* context) const {
    if (!authorization_.empty()) {
      context->AddMetadata("authorization", authorization_);
    }
  }

 private:
  std::string authorization_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VideoGeneration::Stub> stub_;
};

// A unary call's context: the key and the deadline.
void PrepareUnary(const Connection& conn, grpc::ClientContext* context,
                  absl::Duration timeout) {
  conn.Prepare(context);
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(timeout));
}

// Prints the error (with a hint when the key is missing or refused) and
// returns the exit code of RPC errors.
int Fail(const GlobalOptions& global, const absl::Status& status) {
  PrintError(status);
  if (status.code() == absl::StatusCode::kUnauthenticated) {
    if (global.api_key.empty()) {
      std::cerr << "hint: the server wants an API key: set VIDEOGEN_API_KEY "
                   "or --api_key (an operator creates one with "
                   "`videogen-server keys create --tenant=NAME`)"
                << std::endl;
    } else {
      std::cerr << "hint: the server refused the API key (unknown or "
                   "revoked?): set VIDEOGEN_API_KEY or --api_key to a valid "
                   "key"
                << std::endl;
    }
  }
  return kExitRpcError;
}

int ExitCodeFor(const v1::Generation& g) {
  return g.state() == v1::Generation::STATE_COMPLETED ? kExitOk
                                                      : kExitGenerationFailed;
}

bool IsUrl(const std::string& s) {
  return absl::StartsWith(s, "http://") || absl::StartsWith(s, "https://");
}

// `source` is "mirror", "upstream" or "url" (a URL given by the user).
void PrintDownload(OutputMode mode, const DownloadOptions& options,
                   const DownloadResult& result, const std::string& source) {
  if (mode == OutputMode::kJson) {
    nlohmann::json j = {{"download",
                         {{"url", options.url},
                          {"path", options.path},
                          {"bytes", result.bytes},
                          {"resumedFrom", result.resumed_from},
                          {"expectedBytes", result.expected_size},
                          {"source", source},
                          {"sha256Verified", result.sha256_verified}}}};
    std::cout << EscapeJsonControls(j.dump(
                     -1, ' ', false, nlohmann::json::error_handler_t::replace))
              << std::endl;
    return;
  }
  std::cout << "saved " << ForTerminal(options.path) << " ("
            << HumanBytes(result.bytes);
  if (result.resumed_from > 0) {
    std::cout << ", resumed from " << HumanBytes(result.resumed_from);
  }
  if (source == "mirror") std::cout << ", from the server's copy";
  if (result.sha256_verified) std::cout << ", SHA-256 verified";
  std::cout << ")" << std::endl;
}

DownloadOptions BaseDownloadOptions(OutputMode mode, const std::string& path) {
  DownloadOptions options;
  options.path = path;
  options.progress = mode == OutputMode::kTty;
  options.note = [](absl::string_view note) {
    std::cerr << "note: " << ForTerminal(note) << std::endl;
  };
  return options;
}

std::string Authorization(const GlobalOptions& global) {
  return global.api_key.empty() ? "" : absl::StrCat("Bearer ", global.api_key);
}

// A URL the user gave: the key goes along only to the server's own listener.
int DownloadUrl(const GlobalOptions& global, OutputMode mode,
                const std::string& url, const std::string& path) {
  DownloadOptions options = BaseDownloadOptions(mode, path);
  options.url = url;
  if (!global.http_url.empty() && OnListener(url, global.http_url)) {
    options.authorization = Authorization(global);
    options.source_name = "the server's HTTP listener";
  }
  absl::StatusOr<DownloadResult> result = Download(options);
  if (!result.ok() && options.authorization.empty() &&
      result.status().code() == absl::StatusCode::kUnauthenticated) {
    // Not the key's fault: it was not sent.
    PrintError(result.status());
    std::cerr << "hint: the API key is sent only to the server's HTTP "
                 "listener; set --http_url or VIDEOGEN_HTTP_URL to it"
              << std::endl;
    return kExitRpcError;
  }
  if (!result.ok()) return Fail(global, result.status());
  PrintDownload(mode, options, *result, "url");
  return kExitOk;
}

// A generation's video: the server's copy first (when reachable), then the
// upstream URL; checked against Video.sha256 when the server has one.
int DownloadVideo(const GlobalOptions& global, OutputMode mode,
                  const v1::Video& video, const std::string& path) {
  std::vector<std::string> notes;
  std::vector<VideoSource> sources =
      VideoSources(video, global.http_url, &notes);
  for (const std::string& note : notes) {
    std::cerr << "note: " << ForTerminal(note) << std::endl;
  }
  absl::Status failure =
      absl::FailedPreconditionError("the generation has no video URL");
  for (size_t i = 0; i < sources.size(); ++i) {
    const VideoSource& source = sources[i];
    DownloadOptions options = BaseDownloadOptions(mode, path);
    options.url = source.url;
    options.source_name = source.name;
    options.expected_size = video.file_size_bytes();
    options.sha256 = video.sha256();
    if (source.send_key) options.authorization = Authorization(global);
    absl::StatusOr<DownloadResult> result = Download(options);
    if (result.ok()) {
      PrintDownload(mode, options, *result,
                    source.send_key ? "mirror" : "upstream");
      return kExitOk;
    }
    failure = result.status();
    if (i + 1 < sources.size()) {
      std::cerr << "note: the download from " << source.name << " failed ("
                << CodeName(failure.code()) << ": "
                << ForTerminal(failure.message()) << "); trying "
                << sources[i + 1].name << std::endl;
    }
  }
  return Fail(global, failure);
}

int Detach(const GlobalOptions& global, Connection& conn,
           const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  PrepareUnary(conn, &context, global.timeout);
  v1::Generation generation;
  grpc::Status s =
      conn.stub()->CreateGeneration(&context, request, &generation);
  if (!s.ok()) return Fail(global, FromGrpc(s));
  if (global.json) {
    std::cout << ToJson(generation) << std::endl;
  } else {
    std::cout << generation.id() << std::endl;
  }
  return kExitOk;
}

// Shared by generate and watch: follows to the end, prints, returns the
// final generation or the exit code of the error.
template <typename Start>
absl::StatusOr<v1::Generation> Follow(OutputMode mode,
                                      const FollowOptions& options,
                                      Connection& conn, Start start) {
  EventPrinter printer(mode);
  FollowCallbacks callbacks;
  callbacks.on_event = [&](const v1::GenerationEvent& e) {
    printer.OnEvent(e);
  };
  callbacks.on_reconnect = [&](const absl::Status& why, absl::Duration wait) {
    printer.OnReconnect(why, wait);
  };
  callbacks.prepare_context = [&conn](grpc::ClientContext* context) {
    conn.Prepare(context);
  };
  Follower follower(conn.stub(), options, std::move(callbacks));
  absl::StatusOr<v1::Generation> result = start(follower);
  if (!result.ok()) {
    printer.Abort();
    return result.status();
  }
  printer.Finish(*result);
  return result;
}

}  // namespace

int RunGenerate(const GlobalOptions& global, const GenerateOptions& options) {
  absl::StatusOr<Connection> conn = Connection::Open(global);
  if (!conn.ok()) return Fail(global, conn.status());
  if (options.detach) return Detach(global, *conn, options.request);
  OutputMode mode = DetectOutputMode(global.json);
  absl::StatusOr<v1::Generation> g =
      Follow(mode, options.follow, *conn,
             [&](Follower& f) { return f.Generate(options.request); });
  if (!g.ok()) return Fail(global, g.status());
  int code = ExitCodeFor(*g);
  if (code != kExitOk || options.output.empty()) return code;
  return DownloadVideo(global, mode, g->video(), options.output);
}

int RunWatch(const GlobalOptions& global, const std::string& id,
             const FollowOptions& follow) {
  absl::StatusOr<Connection> conn = Connection::Open(global);
  if (!conn.ok()) return Fail(global, conn.status());
  absl::StatusOr<v1::Generation> g =
      Follow(DetectOutputMode(global.json), follow, *conn,
             [&](Follower& f) { return f.Watch(id); });
  if (!g.ok()) return Fail(global, g.status());
  return ExitCodeFor(*g);
}

absl::StatusOr<v1::Generation> GetGeneration(const GlobalOptions& global,
                                             Connection& conn,
                                             const std::string& id) {
  grpc::ClientContext context;
  PrepareUnary(conn, &context, global.timeout);
  v1::GetGenerationRequest request;
  request.set_id(id);
  v1::Generation generation;
  grpc::Status s = conn.stub()->GetGeneration(&context, request, &generation);
  if (!s.ok()) return FromGrpc(s);
  return generation;
}

int RunGet(const GlobalOptions& global, const std::string& id) {
  absl::StatusOr<Connection> conn = Connection::Open(global);
  if (!conn.ok()) return Fail(global, conn.status());
  absl::StatusOr<v1::Generation> g = GetGeneration(global, *conn, id);
  if (!g.ok()) return Fail(global, g.status());
  PrintGeneration(DetectOutputMode(global.json), *g);
  return kExitOk;
}

int RunCancel(const GlobalOptions& global, const std::string& id) {
  absl::StatusOr<Connection> conn = Connection::Open(global);
  if (!conn.ok()) return Fail(global, conn.status());
  grpc::ClientContext context;
  PrepareUnary(*conn, &context, global.timeout);
  v1::CancelGenerationRequest request;
  request.set_id(id);
  v1::Generation generation;
  grpc::Status s =
      conn->stub()->CancelGeneration(&context, request, &generation);
  if (!s.ok()) return Fail(global, FromGrpc(s));
  PrintGeneration(DetectOutputMode(global.json), generation);
  return kExitOk;
}

namespace {

v1::ListGenerationsRequest ListRequest(const ListOptions& options) {
  v1::ListGenerationsRequest request;
  for (auto state : options.states) request.add_states(state);
  for (const auto& [k, v] : options.labels) (*request.mutable_labels())[k] = v;
  request.set_page_size(options.page_size);
  request.set_page_token(options.page_token);
  return request;
}

// Fetches pages until `limit` generations (or one page when limit is 0).
absl::StatusOr<v1::ListGenerationsResponse> ListPages(
    const GlobalOptions& global, Connection& conn, const ListOptions& options) {
  v1::ListGenerationsRequest request = ListRequest(options);
  v1::ListGenerationsResponse all;
  while (true) {
    if (options.limit > 0) {
      int remaining = options.limit - all.generations_size();
      int page = options.page_size > 0 ? options.page_size : 50;
      request.set_page_size(std::min(page, remaining));
    }
    grpc::ClientContext context;
    PrepareUnary(conn, &context, global.timeout);
    v1::ListGenerationsResponse page;
    grpc::Status s = conn.stub()->ListGenerations(&context, request, &page);
    if (!s.ok()) return FromGrpc(s);
    for (auto& g : *page.mutable_generations()) {
      *all.add_generations() = std::move(g);
    }
    all.set_next_page_token(page.next_page_token());
    if (options.limit <= 0 || page.next_page_token().empty() ||
        all.generations_size() >= options.limit) {
      return all;
    }
    request.set_page_token(page.next_page_token());
  }
}

}  // namespace

int RunList(const GlobalOptions& global, const ListOptions& options) {
  absl::StatusOr<Connection> conn = Connection::Open(global);
  if (!conn.ok()) return Fail(global, conn.status());
  absl::StatusOr<v1::ListGenerationsResponse> response =
      ListPages(global, *conn, options);
  if (!response.ok()) return Fail(global, response.status());
  PrintList(DetectOutputMode(global.json), *response);
  return kExitOk;
}

int RunDownload(const GlobalOptions& global,
                const DownloadCommandOptions& options) {
  OutputMode mode = DetectOutputMode(global.json);
  if (IsUrl(options.target)) {
    return DownloadUrl(global, mode, options.target, options.output);
  }
  absl::StatusOr<Connection> conn = Connection::Open(global);
  if (!conn.ok()) return Fail(global, conn.status());
  absl::StatusOr<v1::Generation> g =
      GetGeneration(global, *conn, options.target);
  if (!g.ok()) return Fail(global, g.status());
  if (g->state() != v1::Generation::STATE_COMPLETED ||
      (g->video().url().empty() && g->video().mirror_url().empty())) {
    PrintError(absl::FailedPreconditionError(
        absl::StrCat("generation ", g->id(), " is ", StateName(g->state()),
                     " and has no video yet")));
    return g->done() ? kExitGenerationFailed : kExitRpcError;
  }
  return DownloadVideo(global, mode, g->video(), options.output);
}

absl::StatusOr<std::pair<std::string, std::string>> ParseLabel(
    const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("label '", text, "' is not KEY=VALUE"));
  }
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

absl::StatusOr<v1::Generation::State> ParseState(const std::string& text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(name, "STATE_")) name = "STATE_" + name;
  v1::Generation::State state;
  if (!v1::Generation::State_Parse(name, &state) ||
      state == v1::Generation::STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state '", text,
        "' is not one of queued, generating, completed, failed, cancelled"));
  }
  return state;
}

bool ValidApiKey(const std::string& key) {
  if (key.empty()) return false;
  for (char c : key) {
    if (c <= 0x20 || c >= 0x7F) return false;
  }
  return true;
}

std::string NewUuid() {
  std::random_device rd;
  uint8_t b[16];
  for (auto& byte : b) byte = static_cast<uint8_t>(rd());
  b[6] = (b[6] & 0x0f) | 0x40;  // version 4
  b[8] = (b[8] & 0x3f) | 0x80;  // RFC 4122 variant
  return absl::StrFormat(
      "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
      b[12], b[13], b[14], b[15]);
}

}  // namespace videogen::client
