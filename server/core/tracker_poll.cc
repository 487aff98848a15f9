// The Tracker's writes, polls, mirroring, leases and recovery. See
// tracker.h for the threading model: everything here runs on the loop.
#include <algorithm>
#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/generation_record.h"
#include "server/core/tracker_impl.h"
#include "server/util/log.h"

namespace videogen::core {

// ---- Writes ----------------------------------------------------------------

absl::Status Tracker::Impl::Write(
    Entry& e, const std::function<void(store::Record&)>& change, bool bump,
    bool* evicted) {
  *evicted = false;
  absl::Status s;
  for (int attempt = 0; attempt < 3; ++attempt) {
    store::Record next = e.record;
    change(next);
    next.version = e.record.version + 1;
    if (bump) {
      Bump(clock_->Now(), &next.generation);
      if (next.generation.done()) {
        next.generation.clear_estimate();
      } else {
        SetEstimate(next.generation);
      }
    }
    std::vector<store::Delivery> outbox;
    if (bump && options_.outbox_for) {
      outbox = options_.outbox_for(next.generation);
    }
    s = store_->Update(next, outbox);
    if (s.ok()) {
      const auto before = e.record.generation.state();
      const auto after = next.generation.state();
      if (before != after) {
        absl::MutexLock lock(&counts_mu_);
        --active_counts_[before];
        if (next.generation.done()) {
          ++terminal_counts_[after];
        } else {
          ++active_counts_[after];
        }
      }
      if (after == v1::Generation::STATE_COMPLETED &&
          options_.estimator != nullptr) {
        options_.estimator->Observe(next.generation, clock_->Now());
      }
      e.record = std::move(next);
      if (!outbox.empty() && options_.on_outbox) options_.on_outbox();
      return s;
    }
    if (s.code() != absl::StatusCode::kAborted) return s;
    if (!Reload(e)) {
      *evicted = true;
      return s;
    }
  }
  return s;
}

bool Tracker::Impl::Reload(Entry& e) {
  const std::string id = e.record.generation.id();
  absl::StatusOr<std::optional<store::Record>> r = store_->Get(id);
  if (!r.ok()) return true;  // keep it; the next write tries again
  if (!r->has_value()) {
    Evict(id);
    return false;
  }
  store::Record& fresh = **r;
  const bool leased_away =
      fresh.owner != options_.owner && fresh.lease_until > clock_->Now();
  if (fresh.generation.done() || leased_away) {
    if (leased_away) {
      util::Log("warn", "lease_lost",
                {{"generation_id", id}, {"owner", fresh.owner}});
    }
    // Creates still waiting (a cancel won the race with the submit) get
    // what the generation became.
    if (fresh.generation.done()) {
      std::vector<CreateCallback> waiters;
      waiters.swap(e.waiters);
      auto g = std::make_shared<const v1::Generation>(fresh.generation);
      for (CreateCallback& done : waiters) done(g);
    }
    Evict(id);
    return false;
  }
  e.record = std::move(fresh);
  return true;
}

void Tracker::Impl::Evict(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  FailWaiters(e, absl::UnavailableError(
                     "the generation moved on while it was being created; "
                     "get it with the same request_id"));
  if (!e.record.generation.done()) {
    absl::MutexLock lock(&counts_mu_);
    --active_counts_[e.record.generation.state()];
  }
  const v1::Generation& g = e.record.generation;
  auto idx = by_request_.find(
      absl::StrCat(g.tenant(), "\n", g.request().request_id()));
  if (idx != by_request_.end() && idx->second == id) by_request_.erase(idx);
  schedule_.Remove(id);
  reconciler_.Remove(id);
  entries_.erase(it);
}

bool Tracker::Impl::Fail(Entry& e, absl::StatusCode code,
                         const std::string& reason,
                         const std::string& message) {
  const std::string id = e.record.generation.id();
  bool evicted = false;
  absl::Status s = Write(
      e,
      [&](store::Record& r) {
        MarkFailed(code, reason, message, &r.generation);
      },
      /*bump=*/true, &evicted);
  if (evicted) return false;
  if (!s.ok()) {
    util::Log("error", "store_write_failed",
              {{"generation_id", id}, {"error", std::string(s.message())}});
    Backoff(e);  // the deadline check or the next answer tries again
    return true;
  }
  util::Log("info", "generation_failed",
            {{"generation_id", id}, {"reason", reason}});
  Evict(id);
  return false;
}

void Tracker::Impl::SetEstimate(v1::Generation& g) {
  if (options_.estimator == nullptr) return;
  *g.mutable_estimate() = options_.estimator->Estimate(g, clock_->Now());
}

// ---- Schedule --------------------------------------------------------------

absl::Duration Tracker::Impl::Jittered(absl::Duration d) {
  const double j = std::clamp(options_.poll_jitter, 0.0, 1.0);
  if (j == 0) return d;
  std::uniform_real_distribution<double> dist(1.0 - j, 1.0 + j);
  return d * dist(rng_);
}

void Tracker::Impl::Schedule(Entry& e, absl::Time due) {
  // Never sleep past the deadline: the deadline check runs at poll time.
  due = std::min(due, e.record.deadline);
  e.due = due;
  schedule_.Schedule(e.record.generation.id(), due);
}

void Tracker::Impl::Backoff(Entry& e) {
  e.backoff = e.backoff == absl::ZeroDuration()
                  ? options_.error_backoff_initial
                  : std::min(e.backoff * 2, options_.error_backoff_max);
  Schedule(e, clock_->Now() + Jittered(e.backoff));
}

// ---- Polls -----------------------------------------------------------------

void Tracker::Impl::RunDuePolls() {
  const absl::Time now = clock_->Now();
  for (const std::string& id : schedule_.PopDue(now)) {
    auto it = entries_.find(id);
    if (it == entries_.end()) continue;
    Entry& e = it->second;
    if (e.phase != Phase::kPolling || e.poll_in_flight) continue;
    if (now >= e.record.deadline) {
      const absl::Duration limit =
          e.record.deadline - FromTimestamp(e.record.generation.create_time());
      Fail(e, absl::StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED",
           absl::StrCat("the generation did not finish within ",
                        absl::FormatDuration(limit)));
      continue;
    }
    e.poll_in_flight = true;
    e.poll_token = next_poll_token_++;
    if (options_.on_poll_lag) options_.on_poll_lag(now - e.due);
    upstream::PollRequest request{e.record.generation.upstream_id(), id,
                                  e.traceparent, e.record.generation.tenant()};
    std::shared_ptr<Inbox> inbox = inbox_;
    upstream_->Poll(
        std::move(request), [this, inbox, id, token = e.poll_token](
                                absl::StatusOr<upstream::Snapshot> r) {
          inbox->Post([this, id, token, r = std::move(r)]() mutable {
            OnPolled(id, token, std::move(r));
          });
          inbox->Wake();
        });
  }
}

void Tracker::Impl::OnPolled(const std::string& id, uint64_t token,
                             absl::StatusOr<upstream::Snapshot> r) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;  // terminal or cancelled meanwhile
  Entry& e = it->second;
  if (!e.poll_in_flight || e.poll_token != token) return;
  e.poll_in_flight = false;
  if (!r.ok()) {
    if (r.status().code() == absl::StatusCode::kNotFound) {
      Fail(e, absl::StatusCode::kNotFound, "UPSTREAM_NOT_FOUND",
           absl::StrCat("the upstream lost job \"",
                        e.record.generation.upstream_id(),
                        "\": ", r.status().message()));
      return;
    }
    Backoff(e);
    return;
  }
  v1::Generation probe = e.record.generation;
  if (ApplySnapshot(*r, &probe)) {
    if (probe.state() == v1::Generation::STATE_COMPLETED &&
        options_.mirror != nullptr && probe.video().url().size() > 0) {
      StartMirror(e, std::move(probe));
      return;
    }
    bool evicted = false;
    const upstream::Snapshot& snap = *r;
    absl::Status s = Write(
        e,
        [&snap](store::Record& rec) { ApplySnapshot(snap, &rec.generation); },
        /*bump=*/true, &evicted);
    if (evicted) return;
    if (!s.ok()) {
      // Not applied; the next poll sees the same answer and tries again.
      util::Log("error", "store_write_failed",
                {{"generation_id", id}, {"error", std::string(s.message())}});
      Backoff(e);
      return;
    }
    if (e.record.generation.done()) {
      Evict(id);
      return;
    }
  }
  e.backoff = absl::ZeroDuration();
  Schedule(e, clock_->Now() + Jittered(options_.poll_interval));
}

// ---- Mirror ----------------------------------------------------------------

void Tracker::Impl::StartMirror(Entry& e, v1::Generation completed) {
  e.phase = Phase::kMirroring;
  media::MirrorJob job;
  job.generation_id = completed.id();
  job.tenant = completed.tenant();
  job.url = completed.video().url();
  job.expected_size = completed.video().file_size_bytes();
  job.expected_content_type = completed.video().content_type();
  std::shared_ptr<Inbox> inbox = inbox_;
  const std::string id = completed.id();
  options_.mirror->Copy(
      std::move(job), [this, inbox, id, completed = std::move(completed)](
                          absl::StatusOr<media::MirrorResult> r) mutable {
        inbox->Post([this, id, completed = std::move(completed),
                     r = std::move(r)]() mutable {
          OnMirrored(id, std::move(completed), std::move(r));
        });
        inbox->Wake();
      });
}

void Tracker::Impl::OnMirrored(const std::string& id, v1::Generation completed,
                               absl::StatusOr<media::MirrorResult> r) {
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.phase != Phase::kMirroring) return;
  Entry& e = it->second;
  v1::Video video = completed.video();
  if (r.ok()) {
    video.set_mirror_url(r->mirror_url);
    video.set_sha256(r->sha256);
  } else {
    video.set_mirror_error(std::string(r.status().message()));
    util::Log(
        "warn", "mirror_failed",
        {{"generation_id", id}, {"error", std::string(r.status().message())}});
  }
  bool evicted = false;
  absl::Status s = Write(
      e,
      [&completed, &video](store::Record& rec) {
        v1::Generation& g = rec.generation;
        g.set_state(completed.state());
        g.set_done(completed.done());
        g.set_upstream_status(completed.upstream_status());
        *g.mutable_usage() = completed.usage();
        *g.mutable_video() = video;
      },
      /*bump=*/true, &evicted);
  if (evicted) return;
  if (!s.ok()) {
    // Poll again: the upstream still says completed, and the mirror of the
    // same generation is idempotent.
    util::Log("error", "store_write_failed",
              {{"generation_id", id}, {"error", std::string(s.message())}});
    e.phase = Phase::kPolling;
    Backoff(e);
    return;
  }
  Evict(id);
}

// ---- Reconciliation --------------------------------------------------------

void Tracker::Impl::ReconcileTick() {
  if (stopping_) return;
  const absl::Time due = reconciler_.Tick();
  reconcile_timer_set_ = due != absl::InfiniteFuture();
  reconcile_due_ = due;
}

void Tracker::Impl::OnFoundInLog(const std::string& id,
                                 const upstream::LogRow& row) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  bool evicted = false;
  absl::Status s = Write(
      e,
      [&row](store::Record& r) {
        v1::Generation& g = r.generation;
        g.set_upstream_id(row.inference_id);
        g.set_upstream_status("submit_confirmed");
        if (row.cost_credits > 0) {
          g.mutable_usage()->set_credits_used(row.cost_credits);
        }
        if (row.cost_usd > 0) g.mutable_usage()->set_usd_spent(row.cost_usd);
        r.submit = store::SubmitPhase::kDone;
      },
      /*bump=*/true, &evicted);
  if (evicted) return;
  if (!s.ok()) {
    util::Log("error", "store_write_failed",
              {{"generation_id", id}, {"error", std::string(s.message())}});
    reconciler_.Add(id, e.record.generation.request().model(),
                    e.record.submit_time);
    return;
  }
  util::Log("info", "submit_reconciled",
            {{"generation_id", id}, {"upstream_id", row.inference_id}});
  e.phase = Phase::kPolling;
  Schedule(e, clock_->Now());
}

void Tracker::Impl::OnNotFoundInLog(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Fail(it->second, absl::StatusCode::kUnknown, "SUBMIT_UNCONFIRMED",
       absl::StrCat(
           "the upstream never answered the submit and its usage log shows no "
           "job for this generation after ",
           absl::FormatDuration(options_.reconcile_window),
           "; the upstream may still have run (and billed) it: check the "
           "AI/ML API dashboard before retrying with a new request_id"));
}

// ---- Leases and recovery ---------------------------------------------------

void Tracker::Impl::Adopt(store::Record record) {
  const std::string id = record.generation.id();
  if (auto it = entries_.find(id); it != entries_.end()) {
    // Ours already: the claim only moved the version and the lease.
    Entry& e = it->second;
    if (record.generation.revision() != e.record.generation.revision() ||
        record.generation.done()) {
      e.record.version = record.version - 1;  // force a conflict + reload
      Reload(e);
      return;
    }
    e.record.version = record.version;
    e.record.lease_until = record.lease_until;
    e.record.owner = record.owner;
    return;
  }
  if (record.generation.done()) return;
  Entry& e = entries_[id];
  e.record = std::move(record);
  {
    absl::MutexLock lock(&counts_mu_);
    ++active_counts_[e.record.generation.state()];
  }
  const v1::Generation& g = e.record.generation;
  if (!g.request().request_id().empty() && g.revision() == 0) {
    by_request_[absl::StrCat(g.tenant(), "\n", g.request().request_id())] = id;
  }
  switch (e.record.submit) {
    case store::SubmitPhase::kPending:
      // Recorded but never sent (the kSent write comes before the POST):
      // sending it now is still the first and only submit.
      util::Log("info", "recover_submit_not_sent", {{"generation_id", id}});
      e.phase = Phase::kWaitingToSubmit;
      QueueSubmit(id, g.tenant());
      return;
    case store::SubmitPhase::kSent:
      util::Log("info", "recover_submit_in_flight", {{"generation_id", id}});
      OnUnconfirmed(e, absl::UnknownError(
                           "the server stopped with the submit in flight"));
      return;
    case store::SubmitPhase::kUnconfirmed:
      util::Log("info", "recover_submit_unconfirmed", {{"generation_id", id}});
      e.phase = Phase::kReconciling;
      reconciler_.Add(id, g.request().model(), e.record.submit_time);
      ReconcileTick();
      return;
    case store::SubmitPhase::kDone:
      e.phase = Phase::kPolling;
      Schedule(e, clock_->Now());
      return;
  }
}

absl::Status Tracker::Impl::Recover() {
  const absl::Time now = clock_->Now();
  const int limit = options_.shared_store ? options_.claim_batch : INT_MAX;
  absl::StatusOr<std::vector<store::Record>> claimed = store_->ClaimActive(
      options_.owner, now, now + options_.lease_duration, limit);
  if (!claimed.ok()) return claimed.status();
  for (store::Record& record : *claimed) Adopt(std::move(record));
  if (options_.shared_store) {
    PostAfter(now + options_.lease_duration / 3, [this] { LeaseTick(); });
  }
  return absl::OkStatus();
}

// Another replica then claims these generations at its next lease tick
// instead of waiting out --lease_duration, so a rolling update (SIGTERM)
// resumes polling within lease_duration / 3. Nothing here polls or writes
// after Stop, so there is no second poller; a submit still in flight is
// recorded as sent and the new owner reconciles it, as after a crash.
void Tracker::Impl::ReleaseLeases() {
  const absl::Time now = clock_->Now();
  absl::StatusOr<std::vector<std::string>> released =
      store_->RenewLeases(options_.owner, now, now);
  if (!released.ok()) {
    util::Log("warn", "lease_release_failed",
              {{"error", std::string(released.status().message())}});
    return;
  }
  util::Log("info", "leases_released",
            {{"count", absl::StrCat(released->size())}});
}

void Tracker::Impl::LeaseTick() {
  if (stopping_) return;
  const absl::Time now = clock_->Now();
  const absl::Time until = now + options_.lease_duration;
  absl::StatusOr<std::vector<std::string>> held =
      store_->RenewLeases(options_.owner, now, until);
  if (held.ok()) {
    absl::flat_hash_set<std::string> keep(held->begin(), held->end());
    std::vector<std::string> lost;
    for (auto& [id, e] : entries_) {
      if (keep.contains(id)) {
        e.record.lease_until = until;
      } else {
        lost.push_back(id);
      }
    }
    for (const std::string& id : lost) {
      util::Log("warn", "lease_lost", {{"generation_id", id}});
      Evict(id);
    }
  } else {
    util::Log("warn", "lease_renew_failed",
              {{"error", std::string(held.status().message())}});
  }
  absl::StatusOr<std::vector<store::Record>> claimed =
      store_->ClaimActive(options_.owner, now, until, options_.claim_batch);
  if (claimed.ok()) {
    for (store::Record& record : *claimed) Adopt(std::move(record));
  }
  PostAfter(now + options_.lease_duration / 3, [this] { LeaseTick(); });
}

}  // namespace videogen::core
