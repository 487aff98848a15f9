#include "server/core/reconciler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "server/util/log.h"

namespace videogen::core {
namespace {

constexpr int kPageSize = 100;
constexpr absl::Duration kFirstBackoff = absl::Seconds(5);
constexpr absl::Duration kMaxBackoff = absl::Minutes(2);

// The Retry-After the upstream layer put in a 429's payload, if any.
absl::Duration RetryAfter(const absl::Status& status) {
  auto v = status.GetPayload("videogen/retry-after");
  double seconds = 0;
  if (v.has_value() && absl::SimpleAtod(std::string(*v), &seconds) &&
      seconds > 0) {
    return absl::Seconds(seconds);
  }
  return absl::ZeroDuration();
}

}  // namespace

Reconciler::Reconciler(ReconcilerOptions options, upstream::Upstream* upstream,
                       Clock* clock, Post post, Found found, Expired expired)
    : options_(options),
      upstream_(upstream),
      clock_(clock),
      post_(std::move(post)),
      found_(std::move(found)),
      expired_(std::move(expired)),
      alive_(std::make_shared<Reconciler*>(this)) {}

void Reconciler::Add(const std::string& id, const std::string& model,
                     absl::Time submit_time) {
  pending_[id] = Pending{model, submit_time};
}

void Reconciler::Remove(const std::string& id) { pending_.erase(id); }

absl::Time Reconciler::Tick() {
  if (pending_.empty() && !in_pass_) return absl::InfiniteFuture();
  if (in_flight_) return absl::InfiniteFuture();  // the answer re-ticks
  const absl::Time now = clock_->Now();
  if (!in_pass_) {
    if (now < next_pass_) return next_pass_;
    // One window around every pending submit, one model filter per model.
    absl::Time first = absl::InfiniteFuture();
    std::set<std::string> models;
    for (const auto& [id, p] : pending_) {
      first = std::min(first, p.submit_time);
      models.insert(p.model);
    }
    query_ = upstream::LogQuery{};
    query_.start = first - options_.margin;
    query_.end = now;
    query_.models.assign(models.begin(), models.end());
    query_.limit = kPageSize;
    query_.offset = 0;
    in_pass_ = true;
  }
  if (now < next_request_) return next_request_;
  Request();
  return absl::InfiniteFuture();
}

void Reconciler::Request() {
  in_flight_ = true;
  ++requests_;
  const double rate = std::max(options_.rate_per_minute, 0.1);
  next_request_ = clock_->Now() + absl::Minutes(1) / rate;
  std::weak_ptr<Reconciler*> alive = alive_;
  upstream_->ListLogs(
      query_, [alive, post = post_](absl::StatusOr<upstream::LogPage> page) {
        post([alive, page = std::move(page)]() mutable {
          if (auto self = alive.lock()) (*self)->OnPage(std::move(page));
        });
      });
}

void Reconciler::OnPage(absl::StatusOr<upstream::LogPage> page) {
  in_flight_ = false;
  if (!page.ok()) {
    BackOff(page.status());
    return;
  }
  backoff_ = absl::ZeroDuration();
  for (const upstream::LogRow& row : page->rows) {
    auto it = pending_.find(row.client_request_id);
    if (row.client_request_id.empty() || it == pending_.end() ||
        row.inference_id.empty()) {
      continue;
    }
    const std::string id = it->first;
    pending_.erase(it);
    found_(id, row);
  }
  if (page->has_more && !pending_.empty() && !page->rows.empty()) {
    query_.offset += static_cast<int>(page->rows.size());
    return;  // the next Tick requests the next page
  }
  EndPass();
}

void Reconciler::EndPass() {
  in_pass_ = false;
  const absl::Time now = clock_->Now();
  next_pass_ = now + options_.interval;
  std::vector<std::string> gone;
  for (const auto& [id, p] : pending_) {
    if (now - p.submit_time >= options_.window) gone.push_back(id);
  }
  for (const std::string& id : gone) {
    pending_.erase(id);
    expired_(id);
  }
}

void Reconciler::BackOff(const absl::Status& status) {
  backoff_ = backoff_ == absl::ZeroDuration()
                 ? kFirstBackoff
                 : std::min(backoff_ * 2, kMaxBackoff);
  const absl::Duration wait = std::max(backoff_, RetryAfter(status));
  next_request_ = clock_->Now() + wait;
  util::Log("warn", "reconcile_backoff",
            {{"code", absl::StatusCodeToString(status.code())},
             {"error", std::string(status.message())},
             {"wait_ms", absl::ToInt64Milliseconds(wait)}});
  // The pass stays open: the same page is asked again after the wait. A
  // submit that could not be looked up for a long while past its window is
  // given up too, or an upstream that keeps failing would hold it forever.
  const absl::Time now = clock_->Now();
  std::vector<std::string> gone;
  for (const auto& [id, p] : pending_) {
    if (now - p.submit_time >= options_.window + kMaxBackoff) {
      gone.push_back(id);
    }
  }
  for (const std::string& id : gone) {
    pending_.erase(id);
    expired_(id);
  }
}

}  // namespace videogen::core
