#include "tests/cluster/harness.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "httplib.h"

extern char** environ;

namespace videogen::cluster {
namespace {

constexpr char kSimKey[] = "sim-key";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Tail(const std::string& text, size_t bytes) {
  return text.size() <= bytes ? text : text.substr(text.size() - bytes);
}

bool CanConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok =
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
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

// ---- TempDir
// -----------------------------------------------------------------

TempDir::TempDir(const std::string& prefix) {
  std::string templ = absl::StrCat("/tmp/", prefix, ".XXXXXX");
  char* made = mkdtemp(templ.data());
  path_ = made ? made : "/tmp";
  // PostgreSQL-style helpers and nginx workers may run as other users.
  chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
  if (keep_ || path_ == "/tmp") return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// ---- Process
// -------------------------------------------------------------------

Process::Process(std::vector<std::string> argv,
                 const std::map<std::string, std::string>& env,
                 const std::string& log_prefix)
    : out_path_(log_prefix + ".out"), err_path_(log_prefix + ".err") {
  // Everything the child needs is built before fork: after it, only
  // async-signal-safe calls (the parent runs gRPC threads).
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    if (env.count(kv.substr(0, kv.find('='))) == 0) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> args, envp;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  const int out = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int err = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_ = fork();
  if (pid_ == 0) {
    setpgid(0, 0);  // its own group: nginx's workers go with its master
    dup2(out, 1);
    dup2(err, 2);
    close_range(3, ~0U, 0);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(out);
  close(err);
}

Process::~Process() {
  if (pid_ <= 0) return;
  if (!exit_.has_value()) Stop(absl::Seconds(10));
  // Leftovers of the group (nginx workers of a killed master).
  kill(-pid_, SIGKILL);
}

bool Process::running() { return !Wait(absl::ZeroDuration()).has_value(); }

void Process::Signal(int sig) {
  if (!exit_.has_value()) kill(pid_, sig);
}

std::optional<int> Process::Wait(absl::Duration timeout) {
  if (exit_.has_value()) return exit_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return exit_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

int Process::Stop(absl::Duration grace) {
  Signal(SIGTERM);
  if (auto code = Wait(grace); code.has_value()) return *code;
  Signal(SIGKILL);
  return Wait(absl::Seconds(10)).value_or(-SIGKILL);
}

std::string Process::Stdout() const { return ReadFile(out_path_); }
std::string Process::Stderr() const { return ReadFile(err_path_); }

bool Process::WaitForOutput(const std::string& needle, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (Stdout().find(needle) != std::string::npos ||
        Stderr().find(needle) != std::string::npos) {
      return true;
    }
    if (!running()) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

const Paths& Bins() {
  static const Paths paths{VIDEOGEN_SERVER_BIN, VIDEOGEN_SIM_BIN,
                           VIDEOGEN_CLIENT_BIN, VIDEOGEN_CLUSTER_SH};
  return paths;
}

// ---- Sim
// -------------------------------------------------------------------------

std::unique_ptr<Sim> Sim::Start(const std::string& dir,
                                const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {Bins().sim, "--listen=127.0.0.1:0",
                                   absl::StrCat("--key=", kSimKey)};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto sim = std::make_unique<Sim>();
  sim->process_ = std::make_unique<Process>(
      argv, std::map<std::string, std::string>{}, dir + "/sim");
  if (!sim->process_->WaitForOutput("listening on http://",
                                    absl::Seconds(20))) {
    ADD_FAILURE() << "videogen-sim did not start: " << sim->process_->Stderr();
    return nullptr;
  }
  std::smatch m;
  const std::string out = sim->process_->Stdout();
  if (std::regex_search(out, m, std::regex("http://127\\.0\\.0\\.1:(\\d+)"))) {
    sim->url_ = m.str(0);
  }
  return sim;
}

nlohmann::json Sim::Stats() const {
  httplib::Client client(url_);
  client.set_read_timeout(10, 0);
  auto res = client.Get("/sim/stats");
  if (!res || res->status != 200) {
    ADD_FAILURE() << "GET " << url_ << "/sim/stats failed";
    return nlohmann::json::object();
  }
  return nlohmann::json::parse(res->body);
}

UpstreamJobs JobsByGeneration(const nlohmann::json& stats) {
  UpstreamJobs out;
  out.submits = stats.value("submits", int64_t{0});
  const nlohmann::json polls =
      stats.value("polls_by_id", nlohmann::json::object());
  // A local: iterating items() of a temporary would dangle.
  const nlohmann::json by_id =
      stats.value("client_request_id_by_id", nlohmann::json::object());
  for (const auto& [upstream_id, generation_id] : by_id.items()) {
    const std::string id = generation_id.get<std::string>();
    ++out.jobs[id];
    out.polls[id] += polls.value(upstream_id, 0);
  }
  return out;
}

// ---- Replica
// ---------------------------------------------------------------------

Replica::Replica(std::string dir, std::string replica_id, int port,
                 ReplicaOptions options)
    : dir_(std::move(dir)),
      replica_id_(std::move(replica_id)),
      port_(port),
      options_(std::move(options)) {}

Replica::~Replica() {
  if (process_ != nullptr) process_->Stop(absl::Seconds(10));
}

std::string Replica::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

bool Replica::Start(const std::string& database_url, const std::string& sim_url,
                    std::string* why, const std::string& replica_id) {
  if (!replica_id.empty()) replica_id_ = replica_id;
  ++incarnation_;
  const std::string log =
      absl::StrCat(dir_, "/", replica_id_, "-", incarnation_);
  std::vector<std::string> argv = {
      Bins().server,
      absl::StrCat("--store=", options_.store),
      absl::StrCat("--replica_id=", replica_id_),
      absl::StrCat("--listen=", address()),
      absl::StrCat("--upstream_url=", sim_url),
      absl::StrCat("--lease_duration=",
                   absl::FormatDuration(options_.lease_duration)),
      absl::StrCat("--poll_initial_delay=",
                   absl::FormatDuration(options_.poll_initial_delay)),
      absl::StrCat("--poll_interval=",
                   absl::FormatDuration(options_.poll_interval)),
      absl::StrCat("--drain_grace=",
                   absl::FormatDuration(options_.drain_grace)),
      "--upstream_rate_limit=0",
      "--mirror=none",
      absl::StrCat("--auth=", options_.auth),
      absl::StrCat("--data_dir=", dir_, "/data-", replica_id_),
      "--log_format=json",
  };
  argv.insert(argv.end(), options_.extra_flags.begin(),
              options_.extra_flags.end());
  std::map<std::string, std::string> env = {{"AIMLAPI_KEY", kSimKey}};
  // The URL goes through the environment (as in the Deployment), not argv.
  if (options_.store == "postgres") env["VIDEOGEN_DATABASE_URL"] = database_url;
  process_ = std::make_unique<Process>(argv, env, log);
  log_paths_.push_back(log + ".err");
  if (!process_->WaitForOutput("server_listening", absl::Seconds(30))) {
    *why = absl::StrCat("replica ", replica_id_,
                        " did not start: ", Tail(process_->Stderr(), 2000));
    return false;
  }
  return true;
}

int Replica::Stop() {
  if (process_ == nullptr) return 0;
  const int code = process_->Stop(options_.drain_grace + absl::Seconds(15));
  process_.reset();
  return code;
}

void Replica::Kill() {
  if (process_ == nullptr) return;
  process_->Signal(SIGKILL);
  process_->Wait(absl::Seconds(10));
  process_.reset();
}

std::string Replica::Logs() const {
  std::string out;
  for (const std::string& p : log_paths_) out += ReadFile(p);
  return out;
}

// ---- Nginx
// -------------------------------------------------------------------------

std::unique_ptr<Nginx> Nginx::Start(const std::string& dir,
                                    const std::vector<std::string>& upstreams,
                                    std::string* why) {
  auto n = std::make_unique<Nginx>();
  n->dir_ = dir;
  n->port_ = FreePort();
  Process bin({"/bin/bash", Bins().cluster_sh, "nginx-bin"}, {},
              dir + "-which");
  std::optional<int> which = bin.Wait(absl::Seconds(10));
  if (!which.has_value() || *which != 0) {
    *why = absl::StrCat("no usable nginx: ", bin.Stderr());
    return nullptr;
  }
  const std::string nginx(absl::StripAsciiWhitespace(bin.Stdout()));
  std::vector<std::string> conf = {"/bin/bash", Bins().cluster_sh, "nginx-conf",
                                   dir, absl::StrCat("127.0.0.1:", n->port_)};
  conf.insert(conf.end(), upstreams.begin(), upstreams.end());
  Process gen(conf, {}, dir + "-conf");
  std::optional<int> code = gen.Wait(absl::Seconds(10));
  if (!code.has_value() || *code != 0) {
    *why = absl::StrCat("scripts/cluster.sh nginx-conf failed: ", gen.Stderr());
    return nullptr;
  }
  n->process_ = std::make_unique<Process>(
      std::vector<std::string>{nginx, "-p", dir + "/", "-c",
                               dir + "/nginx.conf"},
      std::map<std::string, std::string>{}, dir + "-nginx");
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!CanConnect(n->port_)) {
    if (!n->process_->running() || absl::Now() > deadline) {
      *why = absl::StrCat("nginx did not start: ", n->process_->Stderr(),
                          n->ErrorLog());
      return nullptr;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return n;
}

Nginx::~Nginx() {
  // SIGTERM: fast shutdown of master and workers (SIGQUIT would wait for
  // every open stream to end).
  if (process_ != nullptr) process_->Stop(absl::Seconds(10));
}

std::string Nginx::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::string Nginx::ErrorLog() const { return ReadFile(dir_ + "/error.log"); }

// ---- gRPC helpers
// ------------------------------------------------------------------

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, int id) {
  grpc::ChannelArguments args;
  args.SetInt("videogen.test_channel_id", id);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Reconnect fast after a replica or proxy goes away.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   args);
}

void Authorize(grpc::ClientContext* context, const std::string& key) {
  if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
}

std::string CreateAdminKey(const std::string& db_url,
                           const std::string& tenant) {
  TempDir dir("videogen-keys");
  Process p({Bins().server, "keys", "create", absl::StrCat("--tenant=", tenant),
             "--admin", "--store=postgres"},
            {{"VIDEOGEN_DATABASE_URL", db_url}}, dir.path() + "/keys");
  std::optional<int> code = p.Wait(absl::Seconds(30));
  if (!code.has_value() || *code != 0) {
    ADD_FAILURE() << "videogen-server keys create failed: " << p.Stderr();
    return "";
  }
  nlohmann::json j =
      nlohmann::json::parse(p.Stdout(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("key")) {
    ADD_FAILURE() << "keys create printed no key";
    return "";
  }
  return j["key"].get<std::string>();
}

v1::GenerateRequest SimpleRequest(const std::string& prompt) {
  v1::GenerateRequest r;
  r.set_model("klingai/v2-master-text-to-video");
  r.set_prompt(prompt);
  r.set_duration_seconds(5);
  return r;
}

std::vector<std::string> CreateMany(const std::string& address,
                                    const std::string& key, int n,
                                    const std::string& prefix, int threads) {
  std::vector<std::string> ids(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto stub = v1::VideoGeneration::NewStub(NewChannel(address, 100 + t));
      for (int i = t; i < n; i += threads) {
        v1::GenerateRequest req = SimpleRequest(absl::StrCat(prefix, " ", i));
        req.set_request_id(absl::StrCat(prefix, "-", i));
        for (int attempt = 0; attempt < 2; ++attempt) {
          grpc::ClientContext ctx;
          Authorize(&ctx, key);
          ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::seconds(30));
          v1::Generation g;
          grpc::Status s = stub->CreateGeneration(&ctx, req, &g);
          if (s.ok()) {
            ids[i] = g.id();
            errors[i].clear();
            break;
          }
          errors[i] = absl::StrCat(s.error_code(), ": ", s.error_message());
          if (s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  for (int i = 0; i < n; ++i) {
    if (!errors[i].empty())
      ADD_FAILURE() << "create " << i << ": " << errors[i];
  }
  return ids;
}

bool WaitDone(TestDatabase& db, int n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (db.Scalar("SELECT count(*) FROM generations WHERE done") ==
        std::to_string(n)) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return false;
}

// ---- Cluster
// -------------------------------------------------------------------------

std::unique_ptr<Cluster> Cluster::Start(const std::string& name,
                                        ClusterOptions options) {
  std::unique_ptr<Cluster> c(new Cluster());
  c->options_ = options;
  c->dir_ = std::make_unique<TempDir>("videogen-cluster-" + name);
  const bool postgres = options.replica.store == "postgres";
  if (postgres) {
    c->db_ = TestDatabase::Create();
    if (c->db_ == nullptr) return nullptr;
  }
  c->sim_ = Sim::Start(c->dir(), options.sim_flags);
  if (c->sim_ == nullptr) return nullptr;
  if (options.replica.auth == "keys") {
    if (!postgres) {
      ADD_FAILURE() << "keys need the postgres store in this harness";
      return nullptr;
    }
    c->key_ = CreateAdminKey(c->db_->url(), "cluster");
    if (c->key_.empty()) return nullptr;
  }
  std::vector<std::string> upstreams;
  for (int i = 0; i < options.replicas; ++i) {
    const std::string id = absl::StrCat("replica-", i + 1);
    c->replicas_.push_back(
        std::make_unique<Replica>(c->dir(), id, FreePort(), options.replica));
    upstreams.push_back(c->replicas_.back()->address());
  }
  const std::string db_url = postgres ? c->db_->url() : "";
  for (auto& r : c->replicas_) {
    std::string why;
    if (!r->Start(db_url, c->sim_->url(), &why)) {
      ADD_FAILURE() << why;
      c->dir_->keep();
      return nullptr;
    }
  }
  if (options.nginx) {
    std::string why;
    c->nginx_ = Nginx::Start(c->dir() + "/nginx", upstreams, &why);
    if (c->nginx_ == nullptr) {
      ADD_FAILURE() << why;
      return nullptr;
    }
  }
  // Ready when a call through the front answers (NOT_FOUND for no id).
  auto stub = c->Stub();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (true) {
    grpc::ClientContext ctx;
    Authorize(&ctx, c->key_);
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(2));
    v1::GetGenerationRequest req;
    req.set_id("no-such-generation");
    v1::Generation g;
    grpc::Status s = stub->GetGeneration(&ctx, req, &g);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) break;
    if (absl::Now() > deadline) {
      ADD_FAILURE() << "the cluster does not answer at " << c->address() << ": "
                    << s.error_code() << " " << s.error_message();
      return nullptr;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return c;
}

Cluster::~Cluster() {
  // Front first, so no call reaches a replica that is stopping.
  nginx_.reset();
  replicas_.clear();
  sim_.reset();
  db_.reset();
}

void Cluster::KeepLogsIfFailed() {
  if (::testing::Test::HasFailure() && dir_ != nullptr) {
    dir_->keep();
    std::cerr << "cluster logs kept in " << dir() << "\n";
  }
}

std::string Cluster::address() const {
  return nginx_ != nullptr ? nginx_->address() : replicas_[0]->address();
}

Replica* Cluster::ByReplicaId(const std::string& id) {
  for (auto& r : replicas_) {
    if (r->replica_id() == id) return r.get();
  }
  return nullptr;
}

std::unique_ptr<v1::VideoGeneration::Stub> Cluster::Stub(int channel_id) {
  return v1::VideoGeneration::NewStub(NewChannel(address(), channel_id));
}

std::unique_ptr<v1::VideoGeneration::Stub> Cluster::ReplicaStub(int i) {
  return v1::VideoGeneration::NewStub(
      NewChannel(replicas_[i]->address(), 1000 + i));
}

bool Cluster::StartAgain(int i, std::string* why) {
  Replica& r = *replicas_[i];
  // A new pod, a new name: "replica-2" -> "replica-2.1", "replica-2.2", ...
  std::string base = r.replica_id().substr(0, r.replica_id().find('.'));
  static std::atomic<int> generation{0};
  const std::string id = absl::StrCat(base, ".", ++generation);
  return r.Start(db_ ? db_->url() : "", sim_->url(), why, id);
}

bool Cluster::Restart(int i, std::string* why) {
  const int code = replicas_[i]->Stop();
  if (code != 0) {
    *why = absl::StrCat(replicas_[i]->replica_id(), " exited ", code,
                        " after SIGTERM");
    return false;
  }
  return StartAgain(i, why);
}

std::map<std::string, int> Cluster::ActiveOwners() {
  std::map<std::string, int> out;
  for (const auto& row :
       db_->Rows("SELECT owner, count(*) FROM generations WHERE NOT done "
                 "GROUP BY owner")) {
    out[row[0]] = std::stoi(row[1]);
  }
  return out;
}

}  // namespace videogen::cluster
