#pragma once

// Delivers the store's webhook outbox (design.md §8).

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/store/store.h"

namespace videogen::webhooks {

// One finished attempt, for metrics.
struct AttemptReport {
  // Why it ended, a short label for a metric: "delivered", "gone" (410),
  // "redirect", "http_4xx", "http_5xx", "timeout", "connect",
  // "address_refused", "dns", "tls", "no_secret", "invalid_url",
  // "transport".
  std::string reason;
  int http_status = 0;       // 0 when no answer arrived
  int attempt = 0;           // 1 for the first attempt of a delivery
  absl::Duration latency;    // request sent -> answer (or failure)
  absl::Duration queue_age;  // delivery created -> this attempt started
};

// Metric hooks the caller connects to its Metrics. All run on the
// dispatcher's thread and must not block; any may be empty.
struct DispatcherHooks {
  std::function<void(const AttemptReport&)> on_attempt;
  // A delivery ended: outcome "delivered", "gave_up" or "gone"; `delay` runs
  // from its creation (the change it announces) to now.
  std::function<void(std::string_view outcome, absl::Duration delay)>
      on_settled;
  // A store call failed; the delivery's lease expires and it is retried.
  std::function<void(std::string_view operation, const absl::Status&)>
      on_store_error;
};

// Returns the tenant's "whsec_..." secret (with --auth=none: the one from
// --webhook_secret_file, whatever the tenant). Runs on the dispatcher's
// thread.
using SecretLookup =
    std::function<absl::StatusOr<std::string>(const std::string& tenant)>;

struct DispatcherOptions {
  std::string owner;  // lease holder: the replica id (--replica_id)
  SecretLookup secret_for;
  // --webhook_allow_insecure: http and any address. Off: https only, and
  // every address curl is about to connect to is checked (DNS rebinding
  // cannot swap in a private address after the edge check).
  bool allow_insecure = false;
  // Delays before the 2nd, 3rd, ... attempt (ParseRetrySchedule).
  std::vector<absl::Duration> retry_schedule = {
      absl::Seconds(5), absl::Minutes(5), absl::Minutes(30), absl::Hours(2),
      absl::Hours(5),   absl::Hours(10),  absl::Hours(10)};
  double jitter = 0.2;  // each delay is spread by +-20%
  // A Retry-After longer than the schedule's delay wins, up to this.
  absl::Duration max_retry_after = absl::Hours(24);
  absl::Duration timeout = absl::Seconds(15);  // per attempt, connect included
  // How long a claimed delivery is ours. An attempt starts only if it can
  // end (timeout included) 5 s before the lease does; a delivery that waited
  // too long for a slot is handed back unattempted. Create() raises it to
  // 2 * timeout + 10 s if shorter.
  absl::Duration lease = absl::Seconds(60);
  // How often the outbox is read when nobody calls Kick().
  absl::Duration poll_interval = absl::Seconds(1);
  int max_in_flight = 64;  // attempts at once, in total
  int max_per_host = 4;    // attempts at once per destination host
  // Claimed deliveries wait here for their host's slots only as long as
  // that host's measured latency says they start within about 2 s (and at
  // most a quarter of the 8 * max_in_flight waiting room per host). The
  // rest are handed back, due again after this, so a slow receiver's
  // backlog never takes the room other receivers' deliveries need.
  absl::Duration host_busy_defer = absl::Seconds(2);
  std::string user_agent = "videogen";
  uint64_t seed = 0;  // jitter seed; 0 = random
  DispatcherHooks hooks;
};

// Counters for gauges.
struct DispatcherStats {
  int64_t in_flight = 0;  // attempts running
  int64_t waiting = 0;    // claimed, waiting for a slot
  int64_t attempts = 0;   // attempts finished since start
};

// Delivers webhook deliveries from the store's outbox: claims due ones with
// a lease (owner = the replica), POSTs each signed (Standard Webhooks),
// and records the outcome in the outbox and in the generation's
// webhook_status. At least once: a delivery whose attempt is cut short (a
// crash, Stop()) is retried when its lease expires, with the same
// webhook-id.
//
// Threading: one thread, started by Create(), runs a libcurl multi loop and
// makes every store call, secret lookup and hook call; it is the only thread
// that touches curl handles. Kick(), stats() and Stop() may be called from
// any thread. One delivery of a generation is attempted at a time (so its
// webhook_status is written by one attempt at a time on this replica).
// Store calls are synchronous on that thread: four per attempt (a read of
// the generation before it, then finish or retry, read and write the
// webhook_status), so a slow store (fsync) slows every transfer: SQLite
// with sync=full gave about 460 deliveries/s on the 2-core test machine
// (tests/webhooks/webhooks_bench.cc --n=1000, 2026-12-02).
//
// 410 Gone stops the generation: DropDeliveries marks it in the store,
// which then queues none of its later events, and a delivery of it that
// was claimed before (here or on another replica) is dropped unsent when
// its attempt would start.
//
// webhook_status.settled is true when this attempt ended its delivery and
// this replica holds no other delivery of the generation; a later event's
// first attempt sets it false again.
class Dispatcher {
 public:
  // Starts the thread. INVALID_ARGUMENT for an empty owner, a missing
  // secret_for, or non-positive limits. `store` must outlive the
  // dispatcher.
  static absl::StatusOr<std::unique_ptr<Dispatcher>> Create(
      store::Store* store, DispatcherOptions options);
  ~Dispatcher();  // Stop()
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Reads the outbox now instead of at the next poll_interval: call it after
  // a write that enqueued deliveries. Cheap; never blocks on the network.
  void Kick();

  // Ends the thread promptly. Attempts in flight are abandoned (their leases
  // expire and they are retried later, by this or another replica);
  // deliveries claimed but not started are handed back at once. Idempotent.
  void Stop();

  DispatcherStats stats() const;

 private:
  class Loop;  // dispatcher.cc
  explicit Dispatcher(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
};

}  // namespace videogen::webhooks
