#pragma once

// A fake Gateway and Authenticator for the HTTP server tests: in-memory
// generations with tenants, revisions and watchers, delivering events to
// sinks under the fake's own lock as the real tracker does (so a sink that
// called back into the gateway would deadlock the test).

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "server/api/gateway.h"
#include "server/auth/authenticator.h"
#include "server/http/media_source.h"

namespace videogen::http::testing {

// "Bearer k-acme" -> tenant acme, "Bearer k-other" -> tenant other,
// "Bearer k-admin" -> admin; anything else is UNAUTHENTICATED.
class FakeAuthenticator : public auth::Authenticator {
 public:
  absl::StatusOr<auth::Principal> Authenticate(
      std::string_view authorization) override {
    calls_++;
    auth::Principal p;
    if (authorization == "Bearer k-acme") {
      p.tenant = "acme";
    } else if (authorization == "Bearer k-other") {
      p.tenant = "other";
    } else if (authorization == "Bearer k-admin") {
      p.tenant = "ops";
      p.admin = true;
    } else {
      return absl::UnauthenticatedError(
          "missing or unknown API key: send Authorization: Bearer KEY");
    }
    p.key_id = p.tenant;
    return p;
  }
  std::atomic<int> calls_{0};
};

class FakeGateway : public api::Gateway {
 public:
  ~FakeGateway() override {
    for (auto& t : threads_) t.join();
  }

  // The next call of any method fails with this status.
  void FailNext(absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_next_ = std::move(s);
  }
  // Watch hands the sink the current revision as an UPDATE before the
  // SNAPSHOT, as the real hub does when the last change raced Subscribe.
  void set_watch_race(bool v) { watch_race_ = v; }
  // Create answers from another thread, later (as the tracker may).
  void set_async_create(bool v) { async_create_ = v; }
  // New generations carry an estimate this far after their creation.
  void set_estimate(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    estimate_ = d;
  }
  // Every generation, oldest first.
  std::vector<core::GenerationPtr> All() {
    absl::MutexLock lock(&mu_);
    std::vector<core::GenerationPtr> out;
    for (const auto& id : order_) out.push_back(gens_[id]);
    return out;
  }

  void Create(const auth::Principal& who, v1::GenerateRequest request,
              const core::RequestContext& ctx,
              core::CreateCallback done) override {
    absl::StatusOr<core::GenerationPtr> result = DoCreate(who, request, ctx);
    if (async_create_) {
      absl::MutexLock lock(&threads_mu_);
      threads_.emplace_back([done = std::move(done), result] {
        absl::SleepFor(absl::Milliseconds(20));
        done(result);
      });
      return;
    }
    done(result);
  }

  absl::StatusOr<core::GenerationPtr> Get(const auth::Principal& who,
                                          const std::string& id) override {
    absl::MutexLock lock(&mu_);
    if (auto s = TakeFailure(); !s.ok()) return s;
    auto it = gens_.find(id);
    if (it == gens_.end() || !Visible(who, *it->second)) return NotFound(id);
    return it->second;
  }

  absl::StatusOr<v1::ListGenerationsResponse> List(
      const auth::Principal& who,
      const v1::ListGenerationsRequest& request) override {
    absl::MutexLock lock(&mu_);
    if (auto s = TakeFailure(); !s.ok()) return s;
    last_list_ = request;
    if (request.page_size() < 0) {
      return absl::InvalidArgumentError("page_size must not be negative");
    }
    int size = request.page_size() == 0 ? 50 : request.page_size();
    int start = 0;
    if (!request.page_token().empty() &&
        !absl::SimpleAtoi(request.page_token(), &start)) {
      return absl::InvalidArgumentError("bad page_token");
    }
    std::vector<core::GenerationPtr> match;
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) {  // newest
      const auto& g = gens_[*it];
      if (Visible(who, *g) && Matches(request.states(), request.labels(), *g)) {
        match.push_back(g);
      }
    }
    v1::ListGenerationsResponse out;
    for (int i = start; i < static_cast<int>(match.size()) && i < start + size;
         ++i) {
      *out.add_generations() = *match[i];
    }
    if (start + size < static_cast<int>(match.size())) {
      out.set_next_page_token(absl::StrCat(start + size));
    }
    return out;
  }

  absl::StatusOr<core::GenerationPtr> Cancel(const auth::Principal& who,
                                             const std::string& id) override {
    absl::MutexLock lock(&mu_);
    if (auto s = TakeFailure(); !s.ok()) return s;
    auto it = gens_.find(id);
    if (it == gens_.end() || !Visible(who, *it->second)) return NotFound(id);
    if (it->second->done()) return it->second;
    return ChangeLocked(id, v1::Generation::STATE_CANCELLED, "cancelled");
  }

  absl::StatusOr<core::Subscription> Watch(
      const auth::Principal& who, const std::string& id, int64_t after_revision,
      std::shared_ptr<core::EventSink> sink) override {
    absl::MutexLock lock(&mu_);
    if (auto s = TakeFailure(); !s.ok()) return s;
    auto it = gens_.find(id);
    if (it == gens_.end() || !Visible(who, *it->second)) return NotFound(id);
    const core::GenerationPtr& g = it->second;
    if (g->revision() > after_revision && watch_race_) {
      // The hub's UPDATE of a change that raced Subscribe comes first.
      sink->OnEvent(MakeEvent(v1::GenerationEvent::TYPE_UPDATE, *g));
    }
    if (g->revision() > after_revision) {
      sink->OnEvent(MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, *g));
    }
    core::Subscription sub;
    sub.finished = g->done();
    if (sub.finished) return sub;
    sub.id = ++next_sub_;
    watchers_[sub.id] = Watcher{id, who, {}, {}, std::move(sink)};
    return sub;
  }

  absl::StatusOr<core::Subscription> WatchAll(
      const auth::Principal& who, const v1::WatchGenerationsRequest& request,
      std::shared_ptr<core::EventSink> sink) override {
    absl::MutexLock lock(&mu_);
    if (auto s = TakeFailure(); !s.ok()) return s;
    for (const std::string& id : order_) {
      const auto& g = gens_[id];
      if (!g->done() && Visible(who, *g) &&
          Matches(request.states(), request.labels(), *g)) {
        sink->OnEvent(MakeEvent(v1::GenerationEvent::TYPE_SNAPSHOT, *g));
      }
    }
    core::Subscription sub;
    sub.id = ++next_sub_;
    Watcher w{"", who, {}, {}, std::move(sink)};
    w.states.assign(request.states().begin(), request.states().end());
    w.labels.insert(request.labels().begin(), request.labels().end());
    watchers_[sub.id] = std::move(w);
    return sub;
  }

  void Unwatch(uint64_t subscription_id) override {
    absl::MutexLock lock(&mu_);
    if (watchers_.erase(subscription_id) > 0) unwatched_++;
  }

  // ---- Test controls ----

  // Moves a generation on: revision + 1, an UPDATE to its watchers.
  void Advance(const std::string& id, v1::Generation::State state,
               const std::string& upstream_status, int64_t padding = 0) {
    absl::MutexLock lock(&mu_);
    ChangeLocked(id, state, upstream_status, padding);
  }
  size_t watchers() {
    absl::MutexLock lock(&mu_);
    return watchers_.size();
  }
  int unwatched() {
    absl::MutexLock lock(&mu_);
    return unwatched_;
  }
  std::vector<std::shared_ptr<core::EventSink>> sinks() {
    absl::MutexLock lock(&mu_);
    std::vector<std::shared_ptr<core::EventSink>> out;
    for (auto& [id, w] : watchers_) out.push_back(w.sink);
    return out;
  }
  v1::ListGenerationsRequest last_list() {
    absl::MutexLock lock(&mu_);
    return last_list_;
  }
  // Adds a generation directly (no Create), for a given tenant.
  core::GenerationPtr Insert(const std::string& tenant,
                             v1::Generation::State state,
                             std::map<std::string, std::string> labels = {}) {
    absl::MutexLock lock(&mu_);
    auto g = std::make_shared<v1::Generation>();
    g->set_id(absl::StrCat("g", ++next_id_));
    g->set_tenant(tenant);
    g->set_state(state);
    g->set_revision(1);
    g->set_done(state >= v1::Generation::STATE_COMPLETED);
    for (auto& [k, v] : labels) (*g->mutable_labels())[k] = v;
    gens_[g->id()] = g;
    order_.push_back(g->id());
    return g;
  }

 private:
  struct Watcher {
    std::string id;  // "" = firehose
    auth::Principal who;
    std::vector<int> states;
    std::map<std::string, std::string> labels;
    std::shared_ptr<core::EventSink> sink;
  };

  static google::protobuf::Timestamp Ts(absl::Time t) {
    return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        absl::ToUnixNanos(t));
  }
  static absl::Status NotFound(const std::string& id) {
    return absl::NotFoundError(absl::StrCat("generation ", id, " not found"));
  }
  static bool Visible(const auth::Principal& who, const v1::Generation& g) {
    return who.admin || g.tenant() == who.tenant;
  }
  template <class States, class Labels>
  static bool Matches(const States& states, const Labels& labels,
                      const v1::Generation& g) {
    bool state_ok = states.empty();
    for (int s : states) state_ok |= (s == g.state());
    if (!state_ok) return false;
    for (const auto& [k, v] : labels) {
      auto it = g.labels().find(k);
      if (it == g.labels().end() || it->second != v) return false;
    }
    return true;
  }
  static core::EventPtr MakeEvent(v1::GenerationEvent::Type type,
                                  const v1::Generation& g) {
    auto e = std::make_shared<v1::GenerationEvent>();
    e->set_type(type);
    *e->mutable_generation() = g;
    return e;
  }
  absl::Status TakeFailure() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Status s = fail_next_;
    fail_next_ = absl::OkStatus();
    return s;
  }

  absl::StatusOr<core::GenerationPtr> DoCreate(
      const auth::Principal& who, const v1::GenerateRequest& request,
      const core::RequestContext& ctx) {
    absl::MutexLock lock(&mu_);
    if (auto s = TakeFailure(); !s.ok()) return s;
    last_traceparent_ = ctx.traceparent;
    if (request.prompt().empty()) {
      return absl::InvalidArgumentError("prompt: must not be empty");
    }
    if (!request.request_id().empty()) {
      auto it = by_request_.find(who.tenant + "/" + request.request_id());
      if (it != by_request_.end()) return gens_[it->second];
    }
    auto g = std::make_shared<v1::Generation>();
    g->set_id(absl::StrCat("g", ++next_id_));
    g->set_tenant(who.tenant);
    g->set_state(v1::Generation::STATE_QUEUED);
    g->set_revision(1);
    g->set_upstream_status("queued");
    const absl::Time now = absl::Now();
    *g->mutable_create_time() = Ts(now);
    *g->mutable_update_time() = Ts(now);
    if (estimate_ > absl::ZeroDuration()) {
      auto* e = g->mutable_estimate();
      *e->mutable_expected_complete_time() = Ts(now + estimate_);
      *e->mutable_p90_complete_time() = Ts(now + estimate_ * 1.5);
    }
    *g->mutable_request() = request;
    *g->mutable_labels() = request.labels();
    gens_[g->id()] = g;
    order_.push_back(g->id());
    if (!request.request_id().empty()) {
      by_request_[who.tenant + "/" + request.request_id()] = g->id();
    }
    NotifyLocked(MakeEvent(v1::GenerationEvent::TYPE_UPDATE, *g));
    return core::GenerationPtr(g);
  }

  core::GenerationPtr ChangeLocked(const std::string& id,
                                   v1::Generation::State state,
                                   const std::string& upstream_status,
                                   int64_t padding = 0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto g = std::make_shared<v1::Generation>(*gens_.at(id));
    g->set_state(state);
    g->set_upstream_status(upstream_status);
    g->set_revision(g->revision() + 1);
    g->set_done(state >= v1::Generation::STATE_COMPLETED);
    *g->mutable_update_time() = Ts(absl::Now());
    if (g->done()) g->clear_estimate();
    if (padding > 0) {
      g->mutable_request()->set_negative_prompt(std::string(padding, 'x'));
    }
    if (state == v1::Generation::STATE_COMPLETED) {
      g->mutable_video()->set_url("https://cdn.example/v.mp4");
      g->mutable_video()->set_mirror_url(absl::StrCat("/v1/media/", id));
    }
    gens_[id] = g;
    NotifyLocked(MakeEvent(v1::GenerationEvent::TYPE_UPDATE, *g));
    return g;
  }

  void NotifyLocked(const core::EventPtr& e)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const v1::Generation& g = e->generation();
    for (auto& [sid, w] : watchers_) {
      if (!w.id.empty() ? w.id == g.id()
                        : Visible(w.who, g) && Matches(w.states, w.labels, g)) {
        w.sink->OnEvent(e);  // under our lock, like the tracker
      }
    }
  }

  absl::Mutex mu_;
  std::map<std::string, core::GenerationPtr> gens_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // creation order
  std::map<std::string, std::string> by_request_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Watcher> watchers_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_next_ ABSL_GUARDED_BY(mu_);
  v1::ListGenerationsRequest last_list_ ABSL_GUARDED_BY(mu_);
  std::string last_traceparent_ ABSL_GUARDED_BY(mu_);
  absl::Duration estimate_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  uint64_t next_sub_ ABSL_GUARDED_BY(mu_) = 0;
  int next_id_ ABSL_GUARDED_BY(mu_) = 0;
  int unwatched_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> async_create_{false};
  std::atomic<bool> watch_race_{false};
  absl::Mutex threads_mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(threads_mu_);
};

// Serves files registered per generation id, scoped by tenant.
class FakeMedia : public MediaSource {
 public:
  void Put(const std::string& id, MediaFile file) {
    absl::MutexLock lock(&mu_);
    files_[id] = std::move(file);
  }
  absl::StatusOr<MediaFile> Open(std::string_view tenant_scope,
                                 std::string_view generation_id) override {
    absl::MutexLock lock(&mu_);
    last_scope_ = std::string(tenant_scope);
    auto it = files_.find(std::string(generation_id));
    if (it == files_.end()) return absl::NotFoundError("no mirrored copy");
    return it->second;
  }
  std::string last_scope() {
    absl::MutexLock lock(&mu_);
    return last_scope_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, MediaFile> files_ ABSL_GUARDED_BY(mu_);
  std::string last_scope_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videogen::http::testing
