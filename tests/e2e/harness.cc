#include "tests/e2e/harness.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/client_interceptor.h"
#include "httplib.h"

namespace videogen::e2e {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int NextCounter() {
  static int counter = 0;
  return ++counter;
}

std::string TempPath(const std::string& stem) {
  return absl::StrCat(::testing::TempDir(), "/", stem, "-", getpid(), "-",
                      NextCounter(), ".log");
}

// Adds `authorization: Bearer KEY` to every call that has none of its own.
// One per call; gRPC owns it.
class AuthInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit AuthInterceptor(std::string value) : value_(std::move(value)) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::
                PRE_SEND_INITIAL_METADATA)) {
      std::multimap<std::string, std::string>* md =
          methods->GetSendInitialMetadata();
      if (md->find("authorization") == md->end()) {
        md->emplace("authorization", value_);
      }
    }
    methods->Proceed();
  }

 private:
  const std::string value_;
};

// Owned by the channel; immutable, so any thread may create interceptors.
class AuthInterceptorFactory
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit AuthInterceptorFactory(std::string key)
      : value_(absl::StrCat("Bearer ", key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new AuthInterceptor(value_);
  }

 private:
  const std::string value_;
};

// The value of the last `--name=value` in `flags`, or `fallback`.
std::string LastFlag(const std::vector<std::string>& flags,
                     const std::string& name, const std::string& fallback) {
  const std::string prefix = absl::StrCat("--", name, "=");
  std::string value = fallback;
  for (const std::string& f : flags) {
    if (absl::StartsWith(f, prefix)) value = f.substr(prefix.size());
  }
  return value;
}

bool HealthServing(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(500));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return stub->Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string FreshDir(const std::string& stem) {
  std::string dir = absl::StrCat(::testing::TempDir(), "/", stem, "-", getpid(),
                                 "-", NextCounter());
  std::filesystem::remove_all(dir);
  return dir;
}

Process::Process(std::vector<std::string> argv,
                 std::map<std::string, std::string> env, StderrMode stderr_mode)
    : out_path_(TempPath("stdout")), err_path_(TempPath("stderr")) {
  int pipe_fds[2] = {-1, -1};
  if (stderr_mode == StderrMode::kUnreadPipe) {
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe2 failed");
    }
    fcntl(pipe_fds[1], F_SETPIPE_SZ, 4096);  // one page: fills fast
    err_pipe_ = pipe_fds[0];
  }
  // The files are emptied here, before the child exists. Their names can be
  // an earlier process's (pids are reused, and /tmp keeps the files): when
  // the child emptied them itself, a reader could get there first and find
  // that process's "listening on" line, and connect to its dead port.
  const int out =
      open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err = stderr_mode == StderrMode::kUnreadPipe
                      ? pipe_fds[1]
                      : open(err_path_.c_str(),
                             O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0 || err < 0) throw std::runtime_error("cannot open " + out_path_);
  pid_ = fork();
  if (pid_ == 0) {
    dup2(out, 1);
    dup2(err, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out);
  if (stderr_mode != StderrMode::kUnreadPipe) close(err);
  if (pipe_fds[1] >= 0) close(pipe_fds[1]);
}

Process::~Process() {
  if (!exit_.has_value() && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (err_pipe_ >= 0) close(err_pipe_);
}

void Process::Signal(int sig) {
  if (!exit_.has_value()) kill(pid_, sig);
}

std::optional<int> Process::Wait(absl::Duration timeout) {
  if (exit_.has_value()) return exit_;
  const absl::Time deadline = absl::Now() + timeout;
  do {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return exit_;
    }
    absl::SleepFor(absl::Milliseconds(10));
  } while (absl::Now() < deadline);
  return std::nullopt;
}

std::string Process::Stdout() const { return ReadFile(out_path_); }
std::string Process::Stderr() const {
  return err_pipe_ >= 0 ? "" : ReadFile(err_path_);
}

bool Process::WaitForOutput(const std::string& needle,
                            absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (Stdout().find(needle) != std::string::npos ||
        Stderr().find(needle) != std::string::npos) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

int64_t Process::RssBytes() const {
  std::ifstream in(absl::StrCat("/proc/", pid_, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      return std::stoll(line.substr(6)) * 1024;  // "VmRSS:   1234 kB"
    }
  }
  return -1;
}

int Process::PipeQueued() const {
  int n = -1;
  if (err_pipe_ >= 0) ioctl(err_pipe_, FIONREAD, &n);
  return n;
}

int Process::PipeCapacity() const {
  return err_pipe_ >= 0 ? fcntl(err_pipe_, F_GETPIPE_SZ) : -1;
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         absl::Duration timeout) {
  Process p(argv, {});
  CommandResult r;
  std::optional<int> code = p.Wait(timeout);
  r.exit_code = code.value_or(-1000);
  r.out = p.Stdout();
  r.err = p.Stderr();
  return r;
}

Binaries& Bins() {
  static Binaries bins{VIDEOGEN_SERVER_BIN, VIDEOGEN_SIM_BIN};
  return bins;
}

nlohmann::json Sim::Stats() const {
  httplib::Client client(url);
  auto res = client.Get("/sim/stats");
  if (!res || res->status != 200) return nlohmann::json::object();
  return nlohmann::json::parse(res->body);
}

nlohmann::json Sim::UsageLog() const {
  httplib::Client client(url);
  httplib::Headers headers = {
      {"Authorization", absl::StrCat("Bearer ", kSimKey)}};
  auto res = client.Get("/v2/logs?period=24h&limit=100", headers);
  if (!res || res->status != 200) return nlohmann::json::array();
  nlohmann::json body = nlohmann::json::parse(res->body, nullptr, false);
  if (body.is_discarded() || !body.contains("data")) {
    return nlohmann::json::array();
  }
  return body["data"];
}

int64_t SimRequests(const Sim& sim, const std::string& prefix) {
  int64_t n = 0;
  const nlohmann::json stats = sim.Stats();  // outlives the loop
  for (const auto& [route, count] : stats["requests_by_path"].items()) {
    if (absl::StartsWith(route, prefix)) n += count.get<int64_t>();
  }
  return n;
}

std::vector<nlohmann::json> FullUsageLog(const Sim& sim) {
  std::vector<nlohmann::json> rows;
  httplib::Client client(sim.url);
  httplib::Headers auth = {{"Authorization", absl::StrCat("Bearer ", kSimKey)}};
  for (int offset = 0; offset < 100000;) {
    auto res = client.Get(
        absl::StrCat("/v2/logs?period=24h&limit=100&offset=", offset), auth);
    if (res && res->status == 429) {
      absl::SleepFor(absl::Seconds(1));
      continue;
    }
    if (!res || res->status != 200) {
      ADD_FAILURE() << "GET /v2/logs failed: "
                    << (res ? std::to_string(res->status) : "no answer");
      break;
    }
    nlohmann::json page = nlohmann::json::parse(res->body);
    for (const auto& row : page["data"]) rows.push_back(row);
    if (!page["pagination"]["has_more"].get<bool>()) break;
    offset += static_cast<int>(page["data"].size());
  }
  return rows;
}

Sim StartSim(const std::vector<std::string>& extra_flags) {
  std::vector<std::string> argv = {
      Bins().sim, "--listen=127.0.0.1:0", absl::StrCat("--key=", kSimKey),
      "--queued_for=300ms", "--generating_for=600ms"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  Sim sim{std::make_unique<Process>(argv, std::map<std::string, std::string>{}),
          ""};
  if (!sim.process->WaitForOutput("listening on http://", absl::Seconds(20))) {
    throw std::runtime_error("videogen-sim did not start: " +
                             sim.process->Stderr());
  }
  std::smatch m;
  std::string out = sim.process->Stdout();
  if (std::regex_search(out, m, std::regex("http://127\\.0\\.0\\.1:(\\d+)"))) {
    sim.url = m.str(0);
  }
  return sim;
}

nlohmann::json CreateKey(const std::vector<std::string>& store_flags,
                         const std::string& tenant,
                         const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {Bins().server, "keys", "create",
                                   "--tenant=" + tenant};
  argv.insert(argv.end(), flags.begin(), flags.end());
  argv.insert(argv.end(), store_flags.begin(), store_flags.end());
  CommandResult r = RunCommand(argv);
  nlohmann::json j;
  if (r.exit_code == 0) {
    // One JSON object on stdout.
    j = nlohmann::json::parse(r.out, nullptr, false);
  }
  if (r.exit_code != 0 || j.is_discarded() || !j.contains("key")) {
    throw std::runtime_error(absl::StrCat("videogen-server keys create (",
                                          absl::StrJoin(argv, " "), ") exited ",
                                          r.exit_code, ": ", r.err, r.out));
  }
  return j;
}

std::shared_ptr<grpc::Channel> ChannelWithKey(
    const std::string& address, const std::string& key,
    const grpc::ChannelArguments& extra_args) {
  grpc::ChannelArguments args = extra_args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      factories;
  if (!key.empty()) {
    factories.push_back(std::make_unique<AuthInterceptorFactory>(key));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      address, grpc::InsecureChannelCredentials(), args, std::move(factories));
}

nlohmann::json Server::CreateKey(const std::string& tenant,
                                 const std::vector<std::string>& flags) const {
  return e2e::CreateKey(store_flags, tenant, flags);
}

std::shared_ptr<grpc::Channel> Server::Channel(const std::string& key) const {
  return ChannelWithKey(address, key);
}

std::unique_ptr<v1::VideoGeneration::Stub> Server::Stub(
    const std::string& key) const {
  return v1::VideoGeneration::NewStub(Channel(key));
}

Server StartServer(const std::string& sim_url,
                   const std::vector<std::string>& extra_flags, int port) {
  ServerOptions o;
  o.flags = extra_flags;
  o.port = port;
  return StartServerWith(sim_url, std::move(o));
}

Server StartServerWith(const std::string& sim_url, ServerOptions options) {
  Server s;
  s.port = options.port != 0 ? options.port : FreePort();
  s.address = absl::StrCat("127.0.0.1:", s.port);
  const std::vector<std::string>& extra = options.flags;
  const std::string store = LastFlag(extra, "store", "sqlite");
  s.data_dir = LastFlag(extra, "data_dir", "");
  if (store == "sqlite" && s.data_dir.empty()) s.data_dir = FreshDir("data");
  s.store_flags = {"--store=" + store};
  if (!s.data_dir.empty()) s.store_flags.push_back("--data_dir=" + s.data_dir);
  const std::string db_url = LastFlag(extra, "database_url", "");
  if (!db_url.empty()) s.store_flags.push_back("--database_url=" + db_url);
  const bool auth = options.auth && store != "memory" &&
                    LastFlag(extra, "auth", "keys") == "keys";

  std::vector<std::string> argv = {Bins().server,
                                   "--listen=" + s.address,
                                   "--upstream_url=" + sim_url,
                                   "--poll_initial_delay=100ms",
                                   "--poll_interval=150ms",
                                   "--heartbeat_interval=1s",
                                   "--drain_grace=5s",
                                   "--mirror=none"};
  argv.insert(argv.end(), s.store_flags.begin(), s.store_flags.end());
  if (!auth) argv.push_back("--auth=none");
  argv.insert(argv.end(), extra.begin(), extra.end());
  if (auth) {
    s.admin_key = e2e::CreateKey(s.store_flags, "e2e-admin", {"--admin"})
                      .at("key")
                      .get<std::string>();
  }
  s.process = std::make_unique<Process>(
      argv, std::map<std::string, std::string>{{"AIMLAPI_KEY", kSimKey}},
      options.stderr_mode);
  s.channel = ChannelWithKey(s.address, s.admin_key);
  bool ready = false;
  if (options.ready_by_health) {
    const absl::Time deadline = absl::Now() + options.start_timeout;
    while (!ready && absl::Now() < deadline &&
           !s.process->Wait(absl::ZeroDuration()).has_value()) {
      ready = HealthServing(s.channel);
      if (!ready) absl::SleepFor(absl::Milliseconds(50));
    }
  } else {
    ready = s.process->WaitForOutput("server_listening", options.start_timeout);
  }
  if (!ready) {
    throw std::runtime_error("videogen-server did not start: " +
                             s.process->Stderr());
  }
  s.stub = v1::VideoGeneration::NewStub(s.channel);
  return s;
}

StreamResult ReadAll(grpc::ClientReaderInterface<v1::GenerationEvent>* reader) {
  StreamResult result;
  v1::GenerationEvent event;
  while (reader->Read(&event)) result.events.push_back(event);
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest SimpleRequest(const std::string& prompt) {
  v1::GenerateRequest r;
  r.set_prompt(prompt);
  return r;
}

namespace {

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// Waits for the next completion of a call driven one op at a time.
bool NextOk(grpc::CompletionQueue& cq) {
  void* tag = nullptr;
  bool ok = false;
  return cq.Next(&tag, &ok) && ok;
}

void Drain(grpc::CompletionQueue& cq) {
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
}

}  // namespace

grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel,
                          const std::string& method, const std::string& request,
                          std::string* response, absl::Duration timeout) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(timeout));
  grpc::CompletionQueue cq;
  grpc::ByteBuffer req = ToBuffer(request);
  grpc::ByteBuffer resp;
  grpc::Status status;
  auto call = stub.PrepareUnaryCall(&ctx, method, req, &cq);
  call->StartCall();
  call->Finish(&resp, &status, reinterpret_cast<void*>(1));
  NextOk(cq);
  Drain(cq);
  if (response != nullptr && status.ok()) *response = FromBuffer(resp);
  return status;
}

grpc::Status RawServerStreamingCall(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
    const std::string& request, int* messages, absl::Duration timeout) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(timeout));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&ctx, method, &cq);
  void* tag = reinterpret_cast<void*>(1);
  call->StartCall(tag);
  NextOk(cq);
  call->Write(ToBuffer(request), tag);
  NextOk(cq);
  call->WritesDone(tag);
  NextOk(cq);
  int n = 0;
  grpc::ByteBuffer msg;
  while (true) {
    call->Read(&msg, tag);
    if (!NextOk(cq)) break;
    ++n;
  }
  grpc::Status status;
  call->Finish(&status, tag);
  NextOk(cq);
  Drain(cq);
  if (messages != nullptr) *messages = n;
  return status;
}

std::string EncodeBytesField(int number, const std::string& bytes) {
  std::string out;
  auto varint = [&out](uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  };
  varint((static_cast<uint64_t>(number) << 3) | 2);
  varint(bytes.size());
  out.append(bytes);
  return out;
}

std::string ScrapeMetrics(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(5, 0);
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return "";
  return res->body;
}

double MetricValue(const std::string& text, const std::string& series) {
  const std::string prefix = series + " ";
  size_t pos = 0;
  while ((pos = text.find(prefix, pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') {
      return std::strtod(text.c_str() + pos + prefix.size(), nullptr);
    }
    pos += prefix.size();
  }
  return -1;
}

}  // namespace videogen::e2e
