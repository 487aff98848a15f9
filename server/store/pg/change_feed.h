#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/pg/pq.h"
#include "server/store/store.h"

namespace videogen::store::pg {

struct FeedOptions {
  ConnectParams connect;
  // How often the feed re-reads changes even without a notification, to
  // cover any it missed.
  absl::Duration backstop_interval = absl::Seconds(2);
  // Reconnect back-off after the connection fails: doubles from min to max.
  absl::Duration reconnect_min = absl::Milliseconds(100);
  absl::Duration reconnect_max = absl::Seconds(5);
  // Upper bound for one query on the feed connection.
  absl::Duration query_timeout = absl::Seconds(30);
  // Changes with a change_seq above this are delivered (the store reads the
  // head at Open, so a listener set later still gets everything committed
  // since). -1: start at the head when the feed first connects.
  int64_t start_after = -1;
  // Called on the feed thread, outside every lock, each time the
  // connection fails (the feed reconnects by itself). May be empty.
  std::function<void(const absl::Status&)> on_error;
};

struct FeedStats {
  int64_t connects = 0;           // successful LISTENs
  int64_t notifications = 0;      // NOTIFY messages received
  int64_t scans = 0;              // catch-up passes (reconnects + backstop)
  int64_t delivered = 0;          // listener calls
  int64_t delivered_by_scan = 0;  // ... of which a catch-up pass found
  int64_t cursor = -1;            // every change_seq <= cursor was delivered
  bool connected = false;
};

// The change feed of PostgresStore: LISTEN on a dedicated connection, driven
// by libpq's asynchronous API from one thread (poll on the socket and an
// eventfd; no busy loop).
//
// Every revision-raising write records the revision in
// generation_revisions, numbered by a global, increasing change_seq, and
// sends NOTIFY "ID:REVISION" in the same transaction. A notification makes
// the thread read that revision (and any other of that generation past the
// cursor) and hand each to the listener, so listeners see every revision,
// in order, once.
//
// Nothing is lost across a dropped connection or a lost notification: the
// thread re-reads the history above a cursor after every (re)connect and
// every `backstop_interval`. The cursor only moves past a number once every
// transaction that was in progress when that number was seen has ended
// (tracked with pg_current_snapshot()), because sequence numbers are taken
// before commit and so commit out of order.
//
// Limits: a feed cut off for longer than the store's revision_retention
// gets each generation's latest revision but may skip superseded ones that
// were pruned meanwhile. A transaction that took its change_seq before the
// starting point (FeedOptions::start_after) but committed after it is
// delivered by its notification only.
//
class PgChangeFeed final : public ChangeFeed {
 public:
  explicit PgChangeFeed(FeedOptions options);
  ~PgChangeFeed() override;  // stops and joins the thread
  PgChangeFeed(const PgChangeFeed&) = delete;
  PgChangeFeed& operator=(const PgChangeFeed&) = delete;

  // Replaces the listener. Once it returns, the previous listener is not
  // running and will not be called again (unless called from within a
  // listener call, which cannot wait for itself).
  void SetListener(Listener listener) override;

  FeedStats stats() const;

 private:
  enum class Wait { kReady, kTimeout, kStop };
  struct Pending {     // a catch-up observation, see Advance()
    int64_t seq;       // highest change_seq seen in that snapshot
    uint64_t max_xip;  // newest transaction then in progress (0: none)
  };
  struct Delivered {
    int64_t revision;
    int64_t seq;
    absl::Time at;
  };

  void Run();
  PGconn* ConnectAsync(absl::Status* error);
  // Returns why the session ended (OK when stopping).
  absl::Status Session(PGconn* conn);
  Wait WaitFor(int fd, bool write, absl::Time deadline);
  absl::StatusOr<Result> Query(PGconn* conn, const std::string& sql,
                               Params& params);
  void DrainNotifies(PGconn* conn);
  absl::Status DeliverNotified(PGconn* conn);
  absl::Status CatchUp(PGconn* conn);
  // Delivers rows of kRevisionColumns whose revision is new for their id.
  absl::Status DeliverRows(const PGresult* result, bool by_scan);
  void Advance(uint64_t xmin);
  void Deliver(const Change& change);
  bool Stopping() const { return stopping_.load(std::memory_order_acquire); }
  void SleepFor(absl::Duration d);

  const FeedOptions options_;
  const int wake_fd_;  // eventfd; written by the destructor
  std::atomic<bool> stopping_{false};

  mutable absl::Mutex mu_;
  std::shared_ptr<Listener> listener_ ABSL_GUARDED_BY(mu_);
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // set once, under mu_, by SetListener
  std::thread::id thread_id_ ABSL_GUARDED_BY(mu_);

  std::atomic<int64_t> connects_{0}, notifications_{0}, scans_{0},
      delivered_count_{0}, delivered_by_scan_{0}, cursor_snapshot_{-1};
  std::atomic<bool> connected_{false};

  // Feed-thread state.
  int64_t cursor_;  // -1 until the first connect reads the head
  std::deque<Pending> pending_;
  absl::flat_hash_map<std::string, Delivered> delivered_;
  std::set<std::pair<std::string, int64_t>> notified_;  // (id, revision)
};

}  // namespace videogen::store::pg
