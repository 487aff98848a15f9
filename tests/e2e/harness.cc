#include "tests/e2e/harness.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "httplib.h"

namespace videogen::e2e {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string TempPath(const std::string& stem) {
  static int counter = 0;
  return absl::StrCat(::testing::TempDir(), "/", stem, "-", getpid(), "-",
                      ++counter, ".log");
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

Process::Process(std::vector<std::string> argv,
                 std::map<std::string, std::string> env)
    : out_path_(TempPath("stdout")), err_path_(TempPath("stderr")) {
  pid_ = fork();
  if (pid_ == 0) {
    int out = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
}

Process::~Process() {
  if (!exit_.has_value() && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

void Process::Signal(int sig) { kill(pid_, sig); }

std::optional<int> Process::Wait(absl::Duration timeout) {
  if (exit_.has_value()) return exit_;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return exit_;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return std::nullopt;
}

std::string Process::Stdout() const { return ReadFile(out_path_); }
std::string Process::Stderr() const { return ReadFile(err_path_); }

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

Sim StartSim(const std::vector<std::string>& extra_flags) {
  std::vector<std::string> argv = {Bins().sim, "--listen=127.0.0.1:0",
                                   "--key=e2e-key", "--queued_for=300ms",
                                   "--generating_for=600ms"};
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

Server StartServer(const std::string& sim_url,
                   const std::vector<std::string>& extra_flags, int port) {
  Server s;
  s.port = port != 0 ? port : FreePort();
  s.address = absl::StrCat("127.0.0.1:", s.port);
  std::vector<std::string> argv = {Bins().server,
                                   "--listen=" + s.address,
                                   "--upstream_url=" + sim_url,
                                   "--store=memory",
                                   "--poll_initial_delay=100ms",
                                   "--poll_interval=150ms",
                                   "--heartbeat_interval=1s",
                                   "--drain_grace=5s"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  s.process = std::make_unique<Process>(
      argv, std::map<std::string, std::string>{{"AIMLAPI_KEY", "e2e-key"}});
  if (!s.process->WaitForOutput("server_listening", absl::Seconds(30))) {
    throw std::runtime_error("videogen-server did not start: " +
                             s.process->Stderr());
  }
  // A private subchannel pool: a restarted server on the same port must not
  // inherit the dead process's connection from the global pool.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  s.channel = grpc::CreateCustomChannel(
      s.address, grpc::InsecureChannelCredentials(), args);
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

}  // namespace videogen::e2e
