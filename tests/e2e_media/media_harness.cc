#include "tests/e2e_media/media_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "server/media/sha256.h"

namespace videogen::e2e_media {
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

// The value of `field` in the first JSON log line whose event is `event`.
std::optional<nlohmann::json> LogField(const std::string& log,
                                       const std::string& event,
                                       const std::string& field) {
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("event", "") == event && j.contains(field)) {
      return j[field];
    }
  }
  return std::nullopt;
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

std::string MakeTempDir(const std::string& stem) {
  std::string pattern =
      absl::StrCat(::testing::TempDir(), "/", stem, "-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + pattern);
  }
  return pattern;
}

Process::Process(std::vector<std::string> argv,
                 std::map<std::string, std::string> env)
    : out_path_(TempPath("stdout")), err_path_(TempPath("stderr")) {
  // Emptied before the child exists: the names may be an earlier process's
  // (see tests/e2e/harness.cc), and a reader must never see its output.
  const int out =
      open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err =
      open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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
  close(err);
}

Process::~Process() {
  if (!exit_.has_value() && pid_ > 0) Kill();
}

void Process::Kill() {
  if (exit_.has_value() || pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

void Process::Signal(int sig) {
  if (!exit_.has_value()) kill(pid_, sig);
}

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

absl::StatusOr<std::string> RunCommand(std::vector<std::string> argv,
                                       absl::Duration timeout) {
  Process p(std::move(argv), {});
  std::optional<int> code = p.Wait(timeout);
  if (!code.has_value()) {
    p.Kill();
    return absl::DeadlineExceededError("command timed out");
  }
  if (*code != 0) {
    return absl::InternalError(
        absl::StrCat("exit ", *code, ": ", p.Stderr(), p.Stdout()));
  }
  return p.Stdout();
}

const std::string& ServerBin() {
  static const std::string* bin = new std::string(VIDEOGEN_SERVER_BIN);
  return *bin;
}

const std::string& SimBin() {
  static const std::string* bin = new std::string(VIDEOGEN_SIM_BIN);
  return *bin;
}

Sim StartSim(const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {SimBin(), "--listen=127.0.0.1:0",
                                   "--key=e2e-key"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  Sim sim{std::make_unique<Process>(argv, std::map<std::string, std::string>{}),
          ""};
  if (!sim.process->WaitForOutput("listening on http://", absl::Seconds(20))) {
    throw std::runtime_error("videogen-sim did not start: " +
                             sim.process->Stderr());
  }
  std::string out = sim.process->Stdout();
  size_t at = out.find("http://");
  size_t end = out.find_first_of(" \r\n", at);
  sim.url = out.substr(at, end - at);
  return sim;
}

Server StartServer(const ServerSpec& spec) {
  Server s;
  std::vector<std::string> argv = {
      ServerBin(),
      "--listen=127.0.0.1:0",
      absl::StrCat("--http_listen=127.0.0.1:", spec.http_port),
      "--upstream_url=" + spec.upstream_url,
      "--auth=" + spec.auth,
      "--mirror=" + spec.mirror,
      "--poll_initial_delay=100ms",
      "--poll_interval=200ms",
      "--heartbeat_interval=1s",
      "--drain_grace=2s"};
  if (spec.data_dir.empty()) {
    argv.push_back("--store=memory");
    argv.push_back("--data_dir=" + MakeTempDir("server-data"));
  } else {
    argv.push_back("--store=sqlite");
    argv.push_back("--data_dir=" + spec.data_dir);
  }
  argv.insert(argv.end(), spec.flags.begin(), spec.flags.end());
  std::map<std::string, std::string> env = spec.env;
  env.emplace("AIMLAPI_KEY", "e2e-key");
  s.process = std::make_unique<Process>(argv, env);
  if (!s.process->WaitForOutput("server_listening", absl::Seconds(30))) {
    throw std::runtime_error("videogen-server did not start: " +
                             s.process->Stderr() + s.process->Stdout());
  }
  const std::string log = s.process->Stdout() + s.process->Stderr();
  std::optional<nlohmann::json> port = LogField(log, "http_listening", "port");
  if (!port.has_value() || !port->is_number_integer()) {
    throw std::runtime_error("no http_listening port in the log: " + log);
  }
  s.http_url = absl::StrCat("http://127.0.0.1:", port->get<int>());
  if (auto m = LogField(log, "metrics_listening", "port");
      m.has_value() && m->is_number_integer()) {
    s.metrics_port = m->get<int>();
  }
  return s;
}

Api::Api(std::string base_url, std::string key)
    : base_url_(std::move(base_url)), key_(std::move(key)), client_(base_url_) {
  client_.set_read_timeout(30, 0);
}

httplib::Headers Api::Headers() const {
  httplib::Headers h;
  if (!key_.empty()) h.emplace("Authorization", "Bearer " + key_);
  return h;
}

absl::StatusOr<v1::Generation> ParseGeneration(std::string_view json) {
  v1::Generation g;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto s = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &g, options);
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat(
        "bad Generation JSON: ", absl::string_view(json.data(), json.size())));
  }
  return g;
}

absl::StatusOr<v1::Generation> Api::Create(const std::string& prompt,
                                           int duration_seconds) {
  nlohmann::json body = {{"prompt", prompt},
                         {"durationSeconds", duration_seconds}};
  httplib::Result r = client_.Post("/v1/generations", Headers(), body.dump(),
                                   "application/json");
  if (!r) return absl::UnavailableError("POST /v1/generations: no answer");
  if (r->status != 200) {
    return absl::InternalError(
        absl::StrCat("POST /v1/generations: ", r->status, " ", r->body));
  }
  return ParseGeneration(r->body);
}

absl::StatusOr<v1::Generation> Api::Get(const std::string& id) {
  httplib::Result r = client_.Get("/v1/generations/" + id, Headers());
  if (!r) return absl::UnavailableError("GET generation: no answer");
  if (r->status == 404) return absl::NotFoundError(r->body);
  if (r->status != 200) {
    return absl::InternalError(
        absl::StrCat("GET generation: ", r->status, " ", r->body));
  }
  return ParseGeneration(r->body);
}

absl::StatusOr<v1::Generation> Api::WaitDone(const std::string& id,
                                             absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<v1::Generation> g = Get(id);
  while (absl::Now() < deadline) {
    g = Get(id);
    if (g.ok() && g->done()) return g;
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!g.ok()) return g.status();
  return absl::DeadlineExceededError(
      absl::StrCat("generation ", id, " not done; last state ",
                   v1::Generation::State_Name(g->state())));
}

httplib::Result Api::Media(const std::string& id, const std::string& range) {
  httplib::Headers h = Headers();
  if (!range.empty()) h.emplace("Range", range);
  return client_.Get("/v1/media/" + id, h);
}

std::string Sha256Hex(std::string_view bytes) {
  media::Sha256 h;
  h.Update(absl::string_view(bytes.data(), bytes.size()));
  return h.HexDigest();
}

absl::StatusOr<std::string> CreateKey(const std::string& data_dir,
                                      const std::string& tenant, bool admin) {
  std::vector<std::string> argv = {ServerBin(),      "keys",
                                   "create",         "--tenant=" + tenant,
                                   "--store=sqlite", "--data_dir=" + data_dir};
  if (admin) argv.push_back("--admin");
  absl::StatusOr<std::string> out = RunCommand(argv);
  if (!out.ok()) return out.status();
  nlohmann::json j = nlohmann::json::parse(*out, nullptr, false);
  if (!j.is_object() || !j.contains("key")) {
    return absl::InternalError("keys create printed no key");
  }
  return j["key"].get<std::string>();
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace videogen::e2e_media
