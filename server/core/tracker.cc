// The Tracker's loop, creates and the one submit (design.md §5). Polls,
// mirroring, leases and recovery are in tracker_poll.cc.
#include "server/core/tracker.h"

#include <algorithm>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/core/generation_record.h"
#include "server/core/tracker_impl.h"
#include "server/util/log.h"
#include "server/util/thread_name.h"

namespace videogen::core {
namespace {

using google::protobuf::util::MessageDifferencer;

// Upper bound on one idle wait, so a clock moved by hand is noticed.
constexpr absl::Duration kMaxIdleWait = absl::Milliseconds(100);
// A create that joins a submit running on another replica re-reads the
// store this often, this many times.
constexpr absl::Duration kJoinRecheck = absl::Milliseconds(200);
constexpr int kJoinAttempts = 300;

std::string NewId() {
  thread_local absl::BitGen gen;  // seeded from the OS entropy source
  char bytes[16];
  for (char& b : bytes) b = static_cast<char>(absl::Uniform<uint8_t>(gen));
  std::string id =
      absl::WebSafeBase64Escape(absl::string_view(bytes, sizeof(bytes)));
  // Command-line parsers read a leading '-' as a flag; keep ids arg-safe.
  if (id[0] == '-') id[0] = 'A' + (static_cast<uint8_t>(bytes[1]) % 26);
  return id;
}

std::string RequestKey(const std::string& tenant, const std::string& rid) {
  return absl::StrCat(tenant, "\n", rid);
}

upstream::SubmitRequest ToSubmit(const v1::Generation& g,
                                 const std::string& traceparent) {
  const v1::GenerateRequest& r = g.request();
  upstream::SubmitRequest s;
  s.client_request_id = g.id();
  s.model = r.model();
  s.prompt = r.prompt();
  s.negative_prompt = r.negative_prompt();
  s.aspect_ratio = r.aspect_ratio();
  s.duration_seconds = r.duration_seconds();
  if (r.has_cfg_scale()) s.cfg_scale = r.cfg_scale();
  s.image_url = r.image_url();
  s.traceparent = traceparent;
  s.tenant = g.tenant();
  return s;
}

absl::Status AlreadyExists(const std::string& request_id) {
  // No generation id in the message: it is the same tenant's, but a
  // message that names ids invites treating it as a lookup.
  return absl::AlreadyExistsError(absl::StrCat(
      "request_id \"", request_id,
      "\" was already used with different parameters; send the same "
      "parameters to get that generation, or use a new request_id"));
}

absl::Status Stopping() {
  return absl::UnavailableError(
      "the server is shutting down; retry with the same request_id");
}

// The Create that made a generation logs `generation_created` once its
// submit is answered; every later Create with the same request_id, waiting
// or not, logs `generation_replayed` (clients retry, and a retry is not a
// new job: counting created lines must count jobs).
CreateCallback LogCreated(const CreateRequest& request, CreateCallback done) {
  nlohmann::json fields = {{"request_id", request.request.request_id()},
                           {"model", request.request.model()},
                           {"tenant", request.tenant}};
  if (const std::string id = request.ctx.TraceId(); !id.empty()) {
    fields["trace_id"] = id;
  }
  return [fields = std::move(fields),
          done = std::move(done)](absl::StatusOr<GenerationPtr> g) mutable {
    if (g.ok()) {
      fields["generation_id"] = (*g)->id();
      fields["upstream_id"] = (*g)->upstream_id();
      fields["upstream_status"] = (*g)->upstream_status();
      util::Log("info", "generation_created", std::move(fields));
    }
    done(std::move(g));
  };
}

void LogReplayed(const v1::Generation& g, const std::string& request_id) {
  util::Log("info", "generation_replayed",
            {{"generation_id", g.id()}, {"request_id", request_id}});
}

CreateCallback LogReplayedWhenAnswered(std::string request_id,
                                       CreateCallback done) {
  return [request_id = std::move(request_id),
          done = std::move(done)](absl::StatusOr<GenerationPtr> g) {
    if (g.ok()) LogReplayed(**g, request_id);
    done(std::move(g));
  };
}

}  // namespace

// ---- Inbox -----------------------------------------------------------------

bool Inbox::Post(Task task) {
  absl::MutexLock lock(&mu_);
  if (closed_) return false;
  tasks_.push_back(std::move(task));
  return true;
}

std::deque<Inbox::Task> Inbox::TakeAll() {
  absl::MutexLock lock(&mu_);
  std::deque<Task> out;
  out.swap(tasks_);
  woken_ = false;
  return out;
}

void Inbox::Wait(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !tasks_.empty() || woken_;
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  woken_ = false;
}

void Inbox::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
}

void Inbox::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

bool Inbox::closed() {
  absl::MutexLock lock(&mu_);
  return closed_;
}

// ---- Loop ------------------------------------------------------------------

Tracker::Impl::Impl(TrackerOptions options, upstream::Upstream* upstream,
                    store::Store* store, Clock* clock)
    : options_(std::move(options)),
      upstream_(upstream),
      store_(store),
      clock_(clock),
      inbox_(std::make_shared<Inbox>()),
      rng_(options_.seed != 0 ? options_.seed : std::random_device{}()),
      reconciler_(
          ReconcilerOptions{options_.reconcile_window,
                            options_.reconcile_rate_per_minute,
                            options_.reconcile_interval},
          upstream, clock,
          // Every usage-log answer is followed by a tick, which asks for
          // the next page or schedules the next pass.
          [this, inbox = inbox_](std::function<void()> f) {
            inbox->Post([this, f = std::move(f)] {
              f();
              ReconcileTick();
            });
            inbox->Wake();
          },
          [this](const std::string& id, const upstream::LogRow& row) {
            OnFoundInLog(id, row);
          },
          [this](const std::string& id) { OnNotFoundInLog(id); }) {}

Tracker::Impl::~Impl() { Stop(); }

void Tracker::Impl::Post(std::function<void(Impl*)> task) {
  inbox_->Post([this, task = std::move(task)] { task(this); });
}

void Tracker::Impl::PostAfter(absl::Time when, std::function<void()> task) {
  timers_.emplace(when, std::move(task));
}

absl::Time Tracker::Impl::NextDue() {
  absl::Time due = schedule_.NextDue();
  if (!timers_.empty()) due = std::min(due, timers_.begin()->first);
  if (reconcile_timer_set_) due = std::min(due, reconcile_due_);
  return due;
}

void Tracker::Impl::RunTasks() {
  for (auto& task : inbox_->TakeAll()) task();
}

void Tracker::Impl::RunTimers() {
  const absl::Time now = clock_->Now();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto task = std::move(timers_.begin()->second);
    timers_.erase(timers_.begin());
    task();
  }
  if (reconcile_timer_set_ && reconcile_due_ <= now) ReconcileTick();
  RunDuePolls();
}

absl::Time Tracker::Impl::RunUntilIdle() {
  for (int round = 0; round < 1000; ++round) {
    RunTasks();
    RunTimers();
    const absl::Time due = NextDue();
    if (due > clock_->Now()) {
      // Tasks posted by callbacks that answered at once run next round.
      std::deque<Inbox::Task> more = inbox_->TakeAll();
      if (more.empty()) return due;
      for (auto& task : more) task();
    }
  }
  return NextDue();
}

void Tracker::Impl::LoopThread() {
  util::NameThisThread("vg-tracker");
  while (!stop_thread_.load()) {
    RunTasks();
    RunTimers();
    const absl::Time now = clock_->Now();
    const absl::Time due = std::min(NextDue(), now + kMaxIdleWait);
    if (due > now) inbox_->Wait(absl::Now() + (due - now));
  }
}

void Tracker::Impl::Start() {
  absl::MutexLock control(&control_mu_);
  if (thread_.joinable()) return;
  stop_thread_ = false;
  thread_ = std::thread([this] { LoopThread(); });
}

void Tracker::Impl::Stop() {
  {
    absl::MutexLock control(&control_mu_);
    if (thread_.joinable()) {
      stop_thread_ = true;
      inbox_->Wake();
      thread_.join();
    }
  }
  if (stopping_) return;
  // Refuse new work, then finish what was already posted: submit answers are
  // applied (they are real results); creates that did not start fail.
  inbox_->Close();
  stopping_ = true;
  RunTasks();
  reconciler_.Shutdown();
  for (auto& [id, e] : entries_) FailWaiters(e, Stopping());
  if (options_.shared_store) ReleaseLeases();
}

void Tracker::Impl::FailWaiters(Entry& e, const absl::Status& status) {
  std::vector<CreateCallback> waiters;
  waiters.swap(e.waiters);
  for (CreateCallback& done : waiters) done(status);
}

std::map<v1::Generation::State, int64_t> Tracker::Impl::CountByState() {
  absl::MutexLock lock(&counts_mu_);
  std::map<v1::Generation::State, int64_t> counts = terminal_counts_;
  for (const auto& [state, n] : active_counts_) counts[state] += n;
  return counts;
}

// ---- Create ----------------------------------------------------------------

void Tracker::Impl::Create(CreateRequest request, CreateCallback done) {
  auto shared_done = std::make_shared<CreateCallback>(std::move(done));
  const bool posted =
      inbox_->Post([this, request = std::move(request), shared_done]() mutable {
        StartCreate(std::move(request), std::move(*shared_done));
      });
  if (!posted) (*shared_done)(Stopping());
  inbox_->Wake();
}

void Tracker::Impl::StartCreate(CreateRequest request, CreateCallback done) {
  if (stopping_) {
    done(Stopping());
    return;
  }
  const std::string& rid = request.request.request_id();
  // A submit for this key is in flight here: wait for its answer.
  if (!rid.empty()) {
    auto idx = by_request_.find(RequestKey(request.tenant, rid));
    if (idx != by_request_.end()) {
      Entry& e = entries_.at(idx->second);
      if (!MessageDifferencer::Equals(e.record.generation.request(),
                                      request.request)) {
        done(AlreadyExists(rid));
      } else if (e.phase == Phase::kRejected) {
        done(e.rejection);
      } else {
        e.waiters.push_back(LogReplayedWhenAnswered(rid, std::move(done)));
      }
      return;
    }
  }
  const absl::Time now = clock_->Now();
  store::Record record;
  v1::Generation& g = record.generation;
  g.set_id(NewId());
  g.set_state(v1::Generation::STATE_QUEUED);
  g.set_tenant(request.tenant);
  *g.mutable_request() = request.request;
  *g.mutable_labels() = request.request.labels();
  *g.mutable_create_time() = ToTimestamp(now);
  *g.mutable_update_time() = ToTimestamp(now);
  record.deadline = now + options_.generation_deadline;
  record.submit = store::SubmitPhase::kPending;
  record.owner = options_.owner;
  record.lease_until = now + options_.lease_duration;
  std::optional<store::Record> existing;
  absl::Status s = store_->Insert(record, request.admission, &existing);
  if (s.code() == absl::StatusCode::kAlreadyExists && existing.has_value()) {
    JoinExisting(*existing, request.request, std::move(done), 0);
    return;
  }
  if (!s.ok()) {
    done(s);
    return;
  }
  record.version = 1;
  const std::string id = g.id();
  Entry& e = entries_[id];
  e.record = std::move(record);
  e.phase = Phase::kWaitingToSubmit;
  e.traceparent = request.ctx.traceparent;
  e.waiters.push_back(LogCreated(request, std::move(done)));
  {
    absl::MutexLock lock(&counts_mu_);
    ++active_counts_[v1::Generation::STATE_QUEUED];
  }
  if (!rid.empty()) by_request_[RequestKey(request.tenant, rid)] = id;
  QueueSubmit(id, request.tenant);
}

void Tracker::Impl::JoinExisting(const store::Record& existing,
                                 const v1::GenerateRequest& request,
                                 CreateCallback done, int attempt) {
  const v1::Generation& g = existing.generation;
  if (!MessageDifferencer::Equals(g.request(), request)) {
    done(AlreadyExists(request.request_id()));
    return;
  }
  if (g.revision() > 0) {
    LogReplayed(g, request.request_id());
    done(std::make_shared<const v1::Generation>(g));
    return;
  }
  // Revision 0: another replica's submit is not answered yet. Re-read until
  // it is, or it was refused (the record is deleted: retry then creates).
  if (attempt >= kJoinAttempts) {
    done(absl::UnavailableError(
        "the first request with this request_id is still being submitted; "
        "retry with the same request_id"));
    return;
  }
  PostAfter(
      clock_->Now() + kJoinRecheck,
      [this, id = g.id(), request, done = std::move(done), attempt]() mutable {
        absl::StatusOr<std::optional<store::Record>> r = store_->Get(id);
        if (!r.ok()) {
          done(r.status());
        } else if (!r->has_value()) {
          done(absl::UnavailableError(
              "the first request with this request_id was refused by "
              "the upstream; retry to submit again"));
        } else {
          JoinExisting(**r, request, std::move(done), attempt + 1);
        }
      });
}

// ---- Submit ----------------------------------------------------------------

void Tracker::Impl::QueueSubmit(const std::string& id,
                                const std::string& tenant) {
  submit_queues_[tenant].push_back(id);
  PumpSubmits(tenant);
}

void Tracker::Impl::PumpSubmits(const std::string& tenant) {
  auto queue = submit_queues_.find(tenant);
  if (queue == submit_queues_.end()) return;
  // Per tenant: a tenant whose submits wait long in the upstream (behind
  // its own polls there) holds back only its own creates.
  int& outstanding = outstanding_submits_[tenant];
  while (outstanding < options_.max_outstanding_submits &&
         !queue->second.empty() && !stopping_) {
    const std::string id = queue->second.front();
    queue->second.pop_front();
    auto e = entries_.find(id);
    if (e == entries_.end() || e->second.phase != Phase::kWaitingToSubmit) {
      continue;  // cancelled while waiting
    }
    e->second.phase = Phase::kSubmitting;
    ++outstanding;
    std::shared_ptr<Inbox> inbox = inbox_;
    upstream_->Submit(
        ToSubmit(e->second.record.generation, e->second.traceparent),
        [this, inbox, id](std::shared_ptr<upstream::SubmitGate> gate) {
          const bool posted =
              inbox->Post([this, id, gate] { OnGateOpen(id, gate); });
          if (!posted) gate->Abandon();  // stopping: nothing leaves
          inbox->Wake();
        },
        [this, inbox, id, tenant](absl::StatusOr<upstream::SubmitResult> r) {
          inbox->Post([this, id, tenant, r = std::move(r)]() mutable {
            OnSubmitted(id, tenant, std::move(r));
          });
          inbox->Wake();
        });
  }
  if (queue->second.empty()) submit_queues_.erase(queue);
  if (outstanding == 0) outstanding_submits_.erase(tenant);
}

void Tracker::Impl::OnGateOpen(const std::string& id,
                               std::shared_ptr<upstream::SubmitGate> gate) {
  auto it = entries_.find(id);
  if (it == entries_.end() || stopping_) {
    gate->Abandon();  // cancelled meanwhile: nothing is sent, nothing billed
    return;
  }
  // The intent is durable right before the POST leaves: a crash from here
  // on is reconciled through the usage log, never resubmitted blindly.
  const absl::Time now = clock_->Now();
  bool evicted = false;
  absl::Status s = Write(
      it->second,
      [now](store::Record& r) {
        r.submit = store::SubmitPhase::kSent;
        r.submit_time = now;
      },
      /*bump=*/false, &evicted);
  if (evicted) {
    gate->Abandon();
    return;
  }
  if (!s.ok()) {
    util::Log("error", "submit_intent_not_recorded",
              {{"generation_id", id}, {"error", std::string(s.message())}});
    it->second.rejection = s;
    gate->Abandon();  // OnSubmitted then reports the store error
    return;
  }
  gate->Send();
}

void Tracker::Impl::OnSubmitted(const std::string& id,
                                const std::string& tenant,
                                absl::StatusOr<upstream::SubmitResult> r) {
  if (auto out = outstanding_submits_.find(tenant);
      out != outstanding_submits_.end() && --out->second <= 0) {
    outstanding_submits_.erase(out);
  }
  PumpSubmits(tenant);
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    // Cancelled while the submit ran. If the job was made, keep its id on
    // the cancelled record so what was paid for can be found.
    if (r.ok()) {
      absl::StatusOr<std::optional<store::Record>> rec = store_->Get(id);
      if (rec.ok() && rec->has_value() &&
          (*rec)->generation.upstream_id().empty()) {
        store::Record next = **rec;
        next.generation.set_upstream_id(r->upstream_id);
        next.submit = store::SubmitPhase::kDone;
        ++next.version;
        (void)store_->Update(next, {});
      }
    }
    return;
  }
  Entry& e = it->second;
  if (r.ok()) {
    OnAccepted(e, *r);
  } else if (r.status().code() == absl::StatusCode::kAborted &&
             !e.rejection.ok()) {
    OnRejected(e, absl::UnavailableError(absl::StrCat(
                      "could not record the submit before sending it (",
                      e.rejection.message(), "); nothing was sent")));
  } else if (upstream::ClassifySubmitError(r.status()) ==
             upstream::SubmitOutcome::kNotCreated) {
    if (stopping_) {
      FailWaiters(e, Stopping());
      return;  // kPending/kSent stays; a restart resubmits or reconciles
    }
    OnRejected(e, r.status());
  } else {
    OnUnconfirmed(e, r.status());
  }
}

void Tracker::Impl::OnAccepted(Entry& e, const upstream::SubmitResult& result) {
  const std::string id = e.record.generation.id();
  bool evicted = false;
  absl::Status s = Write(
      e,
      [&result](store::Record& r) {
        v1::Generation& g = r.generation;
        g.set_upstream_id(result.upstream_id);
        g.set_upstream_status(result.status);
        if (result.credits_used > 0) {
          g.mutable_usage()->set_credits_used(result.credits_used);
        }
        if (result.usd_spent > 0) {
          g.mutable_usage()->set_usd_spent(result.usd_spent);
        }
        r.submit = store::SubmitPhase::kDone;
      },
      /*bump=*/true, &evicted);
  if (evicted) return;
  if (!s.ok()) {
    // The job exists but its id could not be recorded. The record still
    // says `sent`, so the usage log will find the job again: reconcile.
    util::Log("error", "store_write_failed",
              {{"generation_id", id}, {"error", std::string(s.message())}});
    OnUnconfirmed(e, s);
    return;
  }
  const std::string& rid = e.record.generation.request().request_id();
  by_request_.erase(RequestKey(e.record.generation.tenant(), rid));
  e.phase = Phase::kPolling;
  Schedule(e, clock_->Now() + options_.poll_initial_delay);
  std::vector<CreateCallback> waiters;
  waiters.swap(e.waiters);
  auto g = std::make_shared<const v1::Generation>(e.record.generation);
  for (CreateCallback& done : waiters) done(g);
}

void Tracker::Impl::OnRejected(Entry& e, absl::Status status) {
  const std::string id = e.record.generation.id();
  util::Log("warn", "submit_rejected",
            {{"generation_id", id},
             {"code", absl::StatusCodeToString(status.code())},
             {"error", std::string(status.message())}});
  // Nothing exists upstream: forget it so the request_id is free again.
  e.phase = Phase::kRejected;
  e.rejection = status;
  FailWaiters(e, status);
  RetryDelete(id);
}

void Tracker::Impl::RetryDelete(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  absl::Status s = store_->Delete(id, e.record.version);
  if (s.ok()) {
    Evict(id);
    return;
  }
  if (s.code() == absl::StatusCode::kAborted && !Reload(e)) return;
  // Until the delete lands, creates with this request_id get the same
  // refusal (kRejected) instead of joining a phantom.
  e.backoff = e.backoff == absl::ZeroDuration()
                  ? options_.error_backoff_initial
                  : std::min(e.backoff * 2, options_.error_backoff_max);
  PostAfter(clock_->Now() + e.backoff, [this, id] { RetryDelete(id); });
}

void Tracker::Impl::OnUnconfirmed(Entry& e, const absl::Status& why) {
  const std::string id = e.record.generation.id();
  util::Log("warn", "submit_unconfirmed",
            {{"generation_id", id},
             {"code", absl::StatusCodeToString(why.code())},
             {"error", std::string(why.message())}});
  const absl::Time now = clock_->Now();
  bool evicted = false;
  absl::Status s = Write(
      e,
      [now](store::Record& r) {
        r.submit = store::SubmitPhase::kUnconfirmed;
        if (r.submit_time == absl::InfinitePast()) r.submit_time = now;
        r.generation.set_upstream_status("submit_unconfirmed");
      },
      /*bump=*/true, &evicted);
  if (evicted) return;
  if (!s.ok()) {
    util::Log("error", "store_write_failed",
              {{"generation_id", id}, {"error", std::string(s.message())}});
  }
  e.phase = Phase::kReconciling;
  reconciler_.Add(id, e.record.generation.request().model(),
                  e.record.submit_time == absl::InfinitePast()
                      ? now
                      : e.record.submit_time);
  ReconcileTick();
  // The creators learn the generation exists; how it ends comes on the
  // stream (adopted and polled, or FAILED SUBMIT_UNCONFIRMED).
  const std::string& rid = e.record.generation.request().request_id();
  by_request_.erase(RequestKey(e.record.generation.tenant(), rid));
  if (s.ok()) {
    std::vector<CreateCallback> waiters;
    waiters.swap(e.waiters);
    auto g = std::make_shared<const v1::Generation>(e.record.generation);
    for (CreateCallback& done : waiters) done(g);
  } else {
    FailWaiters(e, absl::UnavailableError(
                       "the submit's answer was lost and the generation could "
                       "not be recorded; retry with the same request_id"));
  }
}

// ---- Cancel ----------------------------------------------------------------

absl::StatusOr<GenerationPtr> Tracker::Impl::Cancel(const std::string& id,
                                                    const std::string& tenant) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    absl::StatusOr<std::optional<store::Record>> r = store_->Get(id);
    if (!r.ok()) return r.status();
    if (!r->has_value() || (*r)->generation.revision() == 0 ||
        (!tenant.empty() && (*r)->generation.tenant() != tenant)) {
      return absl::NotFoundError(
          absl::StrCat("generation \"", id, "\" not found"));
    }
    store::Record next = **r;
    if (!MarkCancelled(&next.generation)) {
      return std::make_shared<const v1::Generation>(next.generation);
    }
    Bump(clock_->Now(), &next.generation);
    next.generation.clear_estimate();
    ++next.version;
    std::vector<store::Delivery> outbox;
    if (options_.outbox_for) outbox = options_.outbox_for(next.generation);
    absl::Status s = store_->Update(next, outbox);
    if (s.code() == absl::StatusCode::kAborted) continue;  // raced: re-read
    if (!s.ok()) return s;
    if (!outbox.empty() && options_.on_outbox) options_.on_outbox();
    // The loop drops its entry now rather than at its next write.
    inbox_->Post([this, id] {
      if (entries_.contains(id)) {
        Entry& e = entries_.at(id);
        if (!Reload(e)) return;
      }
    });
    inbox_->Wake();
    return std::make_shared<const v1::Generation>(next.generation);
  }
  return absl::AbortedError(absl::StrCat(
      "generation \"", id, "\" kept changing while cancelling; retry"));
}

// ---- Tracker ---------------------------------------------------------------

Tracker::Tracker(TrackerOptions options, upstream::Upstream* upstream,
                 store::Store* store, Clock* clock)
    : impl_(
          std::make_unique<Impl>(std::move(options), upstream, store, clock)) {}
Tracker::~Tracker() = default;
absl::Status Tracker::Recover() { return impl_->Recover(); }
void Tracker::Create(CreateRequest request, CreateCallback done) {
  impl_->Create(std::move(request), std::move(done));
}
absl::StatusOr<GenerationPtr> Tracker::Cancel(const std::string& id,
                                              const std::string& tenant) {
  return impl_->Cancel(id, tenant);
}
absl::Time Tracker::RunUntilIdle() { return impl_->RunUntilIdle(); }
void Tracker::Start() { impl_->Start(); }
void Tracker::Stop() { impl_->Stop(); }
std::map<v1::Generation::State, int64_t> Tracker::CountByState() {
  return impl_->CountByState();
}

}  // namespace videogen::core
