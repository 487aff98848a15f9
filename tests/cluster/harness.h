#pragma once

// Scale-out test harness (design.md §6): real processes on loopback. A fresh
// PostgreSQL database per cluster (on VIDEOGEN_TEST_DATABASE_URL), one
// videogen-sim, N videogen-server replicas with distinct --replica_id, and
// nginx in front of them (config from scripts/cluster.sh nginx-conf).
//
// Everything here is driven from the test's thread; the objects are not
// thread-safe unless a comment says otherwise.

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tests/pgstore/postgres_test_db.h"
#include "videogen/v1/video_generation.grpc.pb.h"

typedef struct pg_conn PGconn;

namespace videogen::cluster {

// A TCP port on loopback that was free a moment ago.
int FreePort();

// A temporary directory, removed on destruction unless keep() was called.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  void keep() { keep_ = true; }

 private:
  std::string path_;
  bool keep_ = false;
};

// A child process in its own process group, stdout and stderr to files.
// The destructor stops it (SIGTERM, then SIGKILL) if it still runs.
class Process {
 public:
  Process(std::vector<std::string> argv,
          const std::map<std::string, std::string>& env,
          const std::string& log_prefix);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  void Signal(int sig);
  // Exit code, or -signal; nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code.
  int Stop(absl::Duration grace);
  std::string Stdout() const;
  std::string Stderr() const;
  // Waits until `needle` shows in stdout or stderr; false on timeout or exit.
  bool WaitForOutput(const std::string& needle, absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  std::string out_path_;
  std::string err_path_;
  std::optional<int> exit_;
};

// Paths baked in by CMake.
struct Paths {
  std::string server;
  std::string sim;
  std::string client;
  std::string cluster_sh;  // scripts/cluster.sh
};
const Paths& Bins();

// A fresh database per test on VIDEOGEN_TEST_DATABASE_URL's server: the
// PostgreSQL store tests' own (tests/pgstore/postgres_test_db.h).
using ::videogen::store::pgtest::TestDatabase;

// A running videogen-sim.
class Sim {
 public:
  // `flags` e.g. {"--queued_for=2s", "--generating_for=8s"}.
  static std::unique_ptr<Sim> Start(const std::string& dir,
                                    const std::vector<std::string>& flags);
  const std::string& url() const { return url_; }
  nlohmann::json Stats() const;
  Process& process() { return *process_; }

 private:
  std::unique_ptr<Process> process_;
  std::string url_;
};

struct ReplicaOptions {
  absl::Duration lease_duration = absl::Seconds(3);
  absl::Duration poll_initial_delay = absl::Milliseconds(500);
  absl::Duration poll_interval = absl::Seconds(1);
  absl::Duration drain_grace = absl::Seconds(2);
  std::string auth = "keys";       // or "none"
  std::string store = "postgres";  // or "sqlite" (benchmarks)
  std::vector<std::string> extra_flags;
};

// One videogen-server replica. Its port stays the same across restarts, so
// nginx's upstream list stays valid.
class Replica {
 public:
  Replica(std::string dir, std::string replica_id, int port,
          ReplicaOptions options);
  ~Replica();

  // Starts the process (as `replica_id`, or a new id for a restart, as a
  // new pod would have) and waits until it serves. False on failure, with
  // the log tail in *why.
  bool Start(const std::string& database_url, const std::string& sim_url,
             std::string* why, const std::string& replica_id = "");
  // SIGTERM and wait for the drain; returns the exit code.
  int Stop();
  void Kill();  // SIGKILL
  bool running() const { return process_ != nullptr; }

  const std::string& replica_id() const { return replica_id_; }
  std::string address() const;
  int port() const { return port_; }
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  // This replica's process logs (all incarnations' stderr, newest last).
  std::string Logs() const;

 private:
  const std::string dir_;
  std::string replica_id_;
  const int port_;
  const ReplicaOptions options_;
  int incarnation_ = 0;
  std::unique_ptr<Process> process_;
  std::vector<std::string> log_paths_;
};

// nginx in front of a set of replicas (scripts/cluster.sh nginx-conf).
class Nginx {
 public:
  static std::unique_ptr<Nginx> Start(const std::string& dir,
                                      const std::vector<std::string>& upstreams,
                                      std::string* why);
  ~Nginx();
  std::string address() const;
  std::string ErrorLog() const;

 private:
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

// A channel with its own TCP connection (distinct args, local subchannel
// pool), so load spreads the way separate clients would.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, int id);

// `authorization: Bearer KEY` on a context; nothing when key is empty.
void Authorize(grpc::ClientContext* context, const std::string& key);

// `videogen-server keys create --tenant=TENANT --admin` against `db_url`;
// the key, or "" with a gtest failure.
std::string CreateAdminKey(const std::string& db_url,
                           const std::string& tenant);

// The whole setup: database, sim, replicas, nginx, an admin key.
struct ClusterOptions {
  int replicas = 3;
  bool nginx = true;
  std::vector<std::string> sim_flags;
  ReplicaOptions replica;
};

class Cluster {
 public:
  // nullptr (with gtest failures recorded) when anything fails to start.
  static std::unique_ptr<Cluster> Start(const std::string& name,
                                        ClusterOptions options);
  ~Cluster();

  TestDatabase& db() { return *db_; }
  Sim& sim() { return *sim_; }
  Replica& replica(int i) { return *replicas_[i]; }
  int size() const { return static_cast<int>(replicas_.size()); }
  // Through nginx when there is one, else the first replica.
  std::string address() const;
  const std::string& key() const { return key_; }
  const std::string& dir() const { return dir_->path(); }
  Replica* ByReplicaId(const std::string& id);
  // Keeps the logs (prints where) when the test failed.
  void KeepLogsIfFailed();

  std::unique_ptr<v1::VideoGeneration::Stub> Stub(int channel_id = 0);
  std::unique_ptr<v1::VideoGeneration::Stub> ReplicaStub(int i);
  // Restarts replica i (SIGTERM, wait, start again with a new replica id).
  bool Restart(int i, std::string* why);
  // Replica i started again with a new replica id (after Kill).
  bool StartAgain(int i, std::string* why);

  // Rows of `SELECT owner, count(*)` over the non-terminal generations.
  std::map<std::string, int> ActiveOwners();

 private:
  Cluster() = default;
  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Sim> sim_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::unique_ptr<Nginx> nginx_;
  std::string key_;
  ClusterOptions options_;
};

// A request with short defaults: text-to-video, 5 s, `prompt`.
v1::GenerateRequest SimpleRequest(const std::string& prompt);

// Creates `n` generations through `address` from `threads` concurrent
// callers (a channel each), request_id PREFIX-i, so a retry after
// UNAVAILABLE is safe. Returns the ids in creation order; gtest failures
// for calls that fail twice.
std::vector<std::string> CreateMany(const std::string& address,
                                    const std::string& key, int n,
                                    const std::string& prefix, int threads);

// Waits until `n` generations in `db` are done; false on timeout.
bool WaitDone(TestDatabase& db, int n, absl::Duration timeout);

// Sim stats digest: generation id (X-Client-Request-Id) -> upstream jobs and
// polls. Ids the sim never saw are absent.
struct UpstreamJobs {
  std::map<std::string, int> jobs;   // generation id -> jobs made
  std::map<std::string, int> polls;  // generation id -> polls over its jobs
  int64_t submits = 0;
};
UpstreamJobs JobsByGeneration(const nlohmann::json& stats);

}  // namespace videogen::cluster
