#include "tests/bench/videogen/bare_server.h"

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::bench {
namespace {

using google::protobuf::util::TimeUtil;
using v1::Generation;
using v1::GenerationEvent;
using EventPtr = std::shared_ptr<const GenerationEvent>;

google::protobuf::Timestamp Stamp(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

class BareStream;

// Every live stream, by the generation id it asked for. Thread-safe.
class Registry {
 public:
  void Add(const std::string& group, BareStream* s) {
    absl::MutexLock lock(&mu_);
    groups_[group].insert(s);
  }
  void Remove(const std::string& group, BareStream* s) {
    absl::MutexLock lock(&mu_);
    groups_[group].erase(s);
  }
  int64_t Broadcast(const std::string& group, const EventPtr& event,
                    bool final);

 private:
  absl::Mutex mu_;
  std::map<std::string, std::unordered_set<BareStream*>> groups_
      ABSL_GUARDED_BY(mu_);
};

// One held stream: one write in flight, the newest event waiting behind it
// (the same bounded outbox videogen keeps). Called from gRPC threads and
// from the broadcasting thread; state is guarded by mu_, and reactor calls
// are made outside the lock.
class BareStream : public grpc::ServerWriteReactor<GenerationEvent> {
 public:
  BareStream(Registry* registry, const std::string& id)
      : registry_(registry), group_(id) {
    GenerationEvent snapshot = RepresentativeEvent(
        GenerationEvent::TYPE_SNAPSHOT, Generation::STATE_QUEUED, 1);
    snapshot.mutable_generation()->set_id(id);
    registry_->Add(group_, this);
    Offer(std::make_shared<const GenerationEvent>(std::move(snapshot)), false);
  }

  void Offer(EventPtr event, bool final) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return;
      pending_ = std::move(event);
      final_ = final_ || final;
      if (in_flight_) return;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      in_flight_.reset();
      if (!ok) {
        finishing_ = true;
        pending_.reset();
      }
    }
    if (ok) {
      Pump();
    } else {
      Finish(grpc::Status::CANCELLED);
    }
  }

  void OnDone() override {
    registry_->Remove(group_, this);
    delete this;
  }

 private:
  void Pump() {
    EventPtr next;
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      if (in_flight_ || finishing_) return;
      if (pending_) {
        in_flight_ = std::move(pending_);
        pending_.reset();
        next = in_flight_;
      } else if (final_) {
        finishing_ = finish = true;
      }
    }
    if (next) StartWrite(next.get());
    if (finish) Finish(grpc::Status::OK);
  }

  Registry* const registry_;
  const std::string group_;
  absl::Mutex mu_;
  EventPtr in_flight_ ABSL_GUARDED_BY(mu_);
  EventPtr pending_ ABSL_GUARDED_BY(mu_);
  bool final_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

int64_t Registry::Broadcast(const std::string& group, const EventPtr& event,
                            bool final) {
  absl::MutexLock lock(&mu_);
  auto& streams = groups_[group];
  for (BareStream* s : streams) s->Offer(event, final);
  return static_cast<int64_t>(streams.size());
}

// The bare service. Its control call queues a change for a given time
// (sent ahead of it), and a thread of the server's own broadcasts each one
// when it is due, as videogen's tracker and hub do for a poll's answer: no
// client call sits between the schedule and the fan-out (a control call
// answered late by a busy server shifted the changes, and the first one
// after a pause took about 100 ms more to reach the watchers). Each change
// is stamped with its due time, so one that waits behind an earlier round
// counts the wait, as in videogen. Thread-safe: the queue is guarded by
// mu_, streams live in the registry.
class BareService : public v1::VideoGeneration::CallbackService {
 public:
  BareService() : broadcaster_([this] { BroadcastLoop(); }) {}

  ~BareService() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    broadcaster_.join();
  }

  grpc::ServerWriteReactor<GenerationEvent>* WatchGeneration(
      grpc::CallbackServerContext*,
      const v1::WatchGenerationRequest* request) override {
    return new BareStream(&registry_, request->id());
  }

  grpc::ServerUnaryReactor* GetGeneration(
      grpc::CallbackServerContext* context,
      const v1::GetGenerationRequest* request, Generation*) override {
    auto* reactor = context->DefaultReactor();
    std::optional<Job> job = ParseControl(request->id());
    if (!job.has_value()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "control"));
      return reactor;
    }
    {
      absl::MutexLock lock(&mu_);
      jobs_.emplace(job->due, std::move(*job));
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  struct Job {
    std::string group;
    bool final = false;
    absl::Time due;
  };

  // "broadcast:DUE_UNIX_NS:GROUP" or "broadcast-final:DUE_UNIX_NS:GROUP".
  static std::optional<Job> ParseControl(const std::string& id) {
    std::vector<std::string> parts =
        absl::StrSplit(id, absl::MaxSplits(':', 2));
    int64_t due_ns = 0;
    if (parts.size() != 3 ||
        (parts[0] != "broadcast" && parts[0] != "broadcast-final") ||
        !absl::SimpleAtoi(parts[1], &due_ns)) {
      return std::nullopt;
    }
    return Job{parts[2], parts[0] == "broadcast-final",
               absl::FromUnixNanos(due_ns)};
  }

  void BroadcastLoop() {
    while (true) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        while (true) {
          auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return stop_ || !jobs_.empty();
          };
          mu_.Await(absl::Condition(&ready));
          if (stop_) return;
          const absl::Time due = jobs_.begin()->first;
          if (due <= absl::Now()) break;
          // Until it is due, or an earlier change or stop arrives.
          auto changed = [this, due]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return stop_ || jobs_.begin()->first < due;
          };
          mu_.AwaitWithDeadline(absl::Condition(&changed), due);
        }
        job = std::move(jobs_.begin()->second);
        jobs_.erase(jobs_.begin());
      }
      Broadcast(job);
    }
  }

  void Broadcast(const Job& job) {
    GenerationEvent event = RepresentativeEvent(
        GenerationEvent::TYPE_UPDATE,
        job.final ? Generation::STATE_COMPLETED : Generation::STATE_GENERATING,
        ++revision_);
    event.mutable_generation()->set_id(job.group);
    *event.mutable_observe_time() = Stamp(job.due);
    registry_.Broadcast(
        job.group, std::make_shared<const GenerationEvent>(std::move(event)),
        job.final);
  }

  Registry registry_;
  std::atomic<int64_t> revision_{1};
  absl::Mutex mu_;
  std::multimap<absl::Time, Job> jobs_ ABSL_GUARDED_BY(mu_);  // by due time
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread broadcaster_;
};

}  // namespace

GenerationEvent RepresentativeEvent(GenerationEvent::Type type,
                                    Generation::State state, int64_t revision) {
  GenerationEvent e;
  e.set_type(type);
  Generation* g = e.mutable_generation();
  absl::Time created = absl::Now() - absl::Seconds(5);
  const std::string uuid = "3f2b9c7e-8d41-4a6f-9e20-5b7c1d0a4e93";
  g->set_id("Zq3vX8mK2pR7tL9wB4nH1c");
  g->set_state(state);
  g->set_revision(revision);
  g->set_upstream_id(
      absl::StrCat(uuid, ":kling-video/v2/master/text-to-video"));
  g->set_upstream_status(state == Generation::STATE_QUEUED       ? "queued"
                         : state == Generation::STATE_GENERATING ? "generating"
                                                                 : "completed");
  v1::GenerateRequest* r = g->mutable_request();
  r->set_request_id("bench-000000-00000");
  r->set_model("klingai/v2-master-text-to-video");
  r->set_prompt(kPrompt);
  r->set_aspect_ratio("16:9");
  r->set_duration_seconds(5);
  *g->mutable_create_time() = Stamp(created);
  *g->mutable_update_time() = Stamp(absl::Now());
  if (state == Generation::STATE_COMPLETED) {
    g->set_done(true);
    v1::Video* v = g->mutable_video();
    v->set_url(absl::StrCat("http://127.0.0.1:40000/files/", uuid, ".mp4"));
    v->set_content_type("video/mp4");
    v->set_file_name(absl::StrCat(uuid, ".mp4"));
    v->set_file_size_bytes(1337);
  }
  return e;
}

int RunBareServer(int port, bool deadlock_detection) {
  // Debian's Abseil is built with Mutex deadlock detection on, which costs a
  // graph update per nested lock; a bare baseline should not pay for it.
  absl::SetMutexDeadlockDetectionMode(deadlock_detection
                                          ? absl::OnDeadlockCycle::kAbort
                                          : absl::OnDeadlockCycle::kIgnore);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // before gRPC threads start

  BareService service;
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port),
                           grpc::InsecureServerCredentials(), &bound);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound == 0) {
    std::fprintf(stderr, "bare_server: cannot listen on port %d\n", port);
    return 1;
  }
  std::printf("bare_server listening on 127.0.0.1:%d\n", bound);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace videogen::bench
