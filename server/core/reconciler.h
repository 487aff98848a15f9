#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>

#include "absl/time/time.h"
#include "server/core/clock.h"
#include "server/upstream/upstream.h"

namespace videogen::core {

struct ReconcilerOptions {
  // A submit not found in the usage log this long after it left is given up.
  absl::Duration window = absl::Minutes(15);
  // Usage-log requests per minute, all passes together (the upstream allows
  // 200 per 60 s; stay well below so polls and other replicas keep room).
  double rate_per_minute = 60;
  // Time between passes while anything is pending: the log lags, so a row
  // missing now may appear later.
  absl::Duration interval = absl::Seconds(20);
  // The log's rows carry the upstream's clock; look this far either side of
  // our submit times.
  absl::Duration margin = absl::Minutes(2);
};

// Finds submits whose answer was lost (design.md §5) by matching our
// generation id, sent as X-Client-Request-Id, against `client_request_id` in
// the upstream's usage log. One pass pages through one window that covers
// every pending submit, so N pending generations cost the same requests as
// one. Passes are spaced by `interval`, requests by the rate, and a 429 (or
// any error) backs off, honouring the upstream's Retry-After.
//
// Not thread-safe: owned by the tracker's loop thread. Usage-log answers
// arrive on the upstream's thread and are handed back through `post`.
class Reconciler {
 public:
  using Post = std::function<void(std::function<void()>)>;
  using Found =
      std::function<void(const std::string& id, const upstream::LogRow& row)>;
  using Expired = std::function<void(const std::string& id)>;

  Reconciler(ReconcilerOptions options, upstream::Upstream* upstream,
             Clock* clock, Post post, Found found, Expired expired);

  void Add(const std::string& id, const std::string& model,
           absl::Time submit_time);
  void Remove(const std::string& id);
  bool empty() const { return pending_.empty(); }

  // Starts or continues a pass when one is due and the rate allows. Returns
  // when it wants to be called again (InfiniteFuture: nothing pending).
  absl::Time Tick();

  // Requests sent since construction (tests, metrics).
  int64_t requests() const { return requests_; }

  // Abandons answers still in flight (the loop is stopping).
  void Shutdown() { alive_.reset(); }

 private:
  struct Pending {
    std::string model;
    absl::Time submit_time;
  };

  void Request();
  void OnPage(absl::StatusOr<upstream::LogPage> page);
  void EndPass();
  void BackOff(const absl::Status& status);

  const ReconcilerOptions options_;
  upstream::Upstream* const upstream_;
  Clock* const clock_;
  const Post post_;
  const Found found_;
  const Expired expired_;
  // Lets answers that arrive after Shutdown (or destruction) do nothing.
  std::shared_ptr<Reconciler*> alive_;

  std::map<std::string, Pending> pending_;
  // The pass in progress.
  bool in_pass_ = false;
  bool in_flight_ = false;
  upstream::LogQuery query_;
  absl::Time next_pass_ = absl::InfinitePast();
  absl::Time next_request_ = absl::InfinitePast();
  absl::Duration backoff_ = absl::ZeroDuration();
  int64_t requests_ = 0;
};

}  // namespace videogen::core
