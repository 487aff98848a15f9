#include "server/store/pg/change_feed.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/store/pg/schema.h"
#include "server/util/thread_name.h"

namespace videogen::store::pg {
namespace {

// Rows per catch-up query; a longer backlog is read in several batches.
constexpr int kScanBatch = 1000;

// One statement, so the rows and the snapshot facts come from the same
// snapshot: its xmin (every older transaction has ended) and the newest
// transaction it saw in progress. The LEFT JOIN keeps one row when nothing
// changed.
constexpr char kScanSql[] =
    "SELECT pg_snapshot_xmin(s.snap)::text,"
    " (SELECT max(x::text::numeric) FROM pg_snapshot_xip(s.snap) AS x)::text,"
    " h.id, h.revision, h.change_seq"
    " FROM (SELECT pg_current_snapshot() AS snap) AS s"
    " LEFT JOIN LATERAL (SELECT id, revision, change_seq FROM"
    " generation_revisions WHERE change_seq > $1 ORDER BY change_seq"
    " LIMIT $2) AS h ON true";

// History rows with what a listener gets: the revision's body and the
// generation's current webhook status (kept beside the record).
constexpr char kRevisionColumns[] =
    "SELECT h.id, h.revision, h.change_seq, h.body, g.webhook_status"
    " FROM generation_revisions AS h LEFT JOIN generations AS g"
    " ON g.id = h.id WHERE ";

// How long a delivered revision is remembered after the cursor passed it,
// so a notification processed right after the scan that delivered its
// revision is not delivered twice.
constexpr absl::Duration kRememberDelivered = absl::Seconds(60);

uint64_t ParseXid(std::string_view text) {
  uint64_t v = 0;
  return absl::SimpleAtoi(absl::string_view(text.data(), text.size()), &v) ? v
                                                                           : 0;
}

}  // namespace

PgChangeFeed::PgChangeFeed(FeedOptions options)
    : options_(std::move(options)),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      cursor_(options_.start_after) {
  cursor_snapshot_.store(cursor_);
}

PgChangeFeed::~PgChangeFeed() {
  stopping_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void PgChangeFeed::SetListener(Listener listener) {
  absl::MutexLock lock(&mu_);
  listener_ =
      listener ? std::make_shared<Listener>(std::move(listener)) : nullptr;
  if (listener_ != nullptr && !started_) {
    started_ = true;
    thread_ = std::thread([this] { Run(); });
    thread_id_ = thread_.get_id();
  }
  if (std::this_thread::get_id() != thread_id_) {
    // The old listener may be mid-call on the feed thread: wait it out so
    // the caller may destroy what it captured.
    mu_.Await(absl::Condition(
        +[](bool* delivering) { return !*delivering; }, &delivering_));
  }
}

FeedStats PgChangeFeed::stats() const {
  FeedStats s;
  s.connects = connects_.load();
  s.notifications = notifications_.load();
  s.scans = scans_.load();
  s.delivered = delivered_count_.load();
  s.delivered_by_scan = delivered_by_scan_.load();
  s.cursor = cursor_snapshot_.load();
  s.connected = connected_.load();
  return s;
}

void PgChangeFeed::Deliver(const Change& change) {
  std::shared_ptr<Listener> listener;
  {
    absl::MutexLock lock(&mu_);
    listener = listener_;
    if (listener == nullptr) return;
    delivering_ = true;
  }
  (*listener)(change);  // outside the lock: it may call SetListener
  delivered_count_.fetch_add(1);
  absl::MutexLock lock(&mu_);
  delivering_ = false;
}

PgChangeFeed::Wait PgChangeFeed::WaitFor(int fd, bool write,
                                         absl::Time deadline) {
  while (!Stopping()) {
    pollfd fds[2] = {
        {fd, static_cast<short>(POLLIN | (write ? POLLOUT : 0)), 0},
        {wake_fd_, POLLIN, 0}};
    int timeout_ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return Wait::kTimeout;
      timeout_ms = static_cast<int>(std::min<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))),
          60'000));
    }
    const int n = ::poll(fds, 2, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Wait::kReady;  // let libpq report the socket's error
    }
    if (fds[1].revents != 0) continue;  // re-check Stopping()
    if (fds[0].revents != 0) return Wait::kReady;
  }
  return Wait::kStop;
}

void PgChangeFeed::SleepFor(absl::Duration d) {
  pollfd fd = {wake_fd_, POLLIN, 0};
  const absl::Time until = absl::Now() + d;
  while (!Stopping()) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return;
    ::poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
  }
}

PGconn* PgChangeFeed::ConnectAsync(absl::Status* error) {
  PGconn* conn = StartConnect(options_.connect);
  if (conn == nullptr) {
    *error = absl::ResourceExhaustedError("libpq: out of memory");
    return nullptr;
  }
  const absl::Time deadline = absl::Now() + options_.connect.connect_timeout;
  // Per libpq's docs, start as if PQconnectPoll had asked for writing.
  PostgresPollingStatusType st = PQstatus(conn) == CONNECTION_BAD
                                     ? PGRES_POLLING_FAILED
                                     : PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    Wait w = Wait::kReady;
    if (st != PGRES_POLLING_FAILED) {
      w = WaitFor(PQsocket(conn), st == PGRES_POLLING_WRITING, deadline);
    }
    if (st == PGRES_POLLING_FAILED || w != Wait::kReady) {
      *error = absl::UnavailableError(absl::StrCat(
          "change feed cannot connect to PostgreSQL: ",
          w == Wait::kTimeout ? "timed out"
                              : std::string(PQerrorMessage(conn))));
      PQfinish(conn);
      return nullptr;
    }
    st = PQconnectPoll(conn);
  }
  PQsetnonblocking(conn, 1);
  return conn;
}

absl::StatusOr<Result> PgChangeFeed::Query(PGconn* conn, const std::string& sql,
                                           Params& params) {
  auto lost = [conn](const char* doing) {
    return absl::UnavailableError(absl::StrCat(
        "change feed lost PostgreSQL ", doing, ": ", PQerrorMessage(conn)));
  };
  if (!PQsendQueryParams(conn, sql.c_str(), params.size(), nullptr,
                         params.values(), params.lengths(), params.formats(),
                         /*resultFormat=*/1)) {
    return lost("sending a query");
  }
  const absl::Time deadline = absl::Now() + options_.query_timeout;
  const int fd = PQsocket(conn);
  for (int f; (f = PQflush(conn)) != 0;) {
    if (f < 0 || WaitFor(fd, true, deadline) != Wait::kReady ||
        !PQconsumeInput(conn)) {
      return lost("while sending");
    }
  }
  Result first_error, last;
  while (true) {
    while (PQisBusy(conn)) {
      if (WaitFor(fd, false, deadline) != Wait::kReady ||
          !PQconsumeInput(conn)) {
        return lost("while reading");
      }
    }
    PGresult* r = PQgetResult(conn);
    if (r == nullptr) break;
    const ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK &&
        first_error == nullptr) {
      first_error.reset(r);
    } else {
      last.reset(r);
    }
  }
  if (first_error != nullptr) {
    return ResultError(first_error.get(), conn, "reading changes");
  }
  if (last == nullptr) return lost("(no result)");
  return last;
}

void PgChangeFeed::DrainNotifies(PGconn* conn) {
  while (PGnotify* n = PQnotifies(conn)) {
    notifications_.fetch_add(1);
    const std::string_view payload(n->extra ? n->extra : "");
    const size_t colon = payload.rfind(':');
    int64_t revision = 0;
    if (colon != std::string_view::npos &&
        absl::SimpleAtoi(absl::string_view(payload.data() + colon + 1,
                                           payload.size() - colon - 1),
                         &revision)) {
      notified_.emplace(std::string(payload.substr(0, colon)), revision);
    }
    PQfreemem(n);
  }
}

absl::Status PgChangeFeed::DeliverRows(const PGresult* result, bool by_scan) {
  const absl::Time now = absl::Now();
  for (int i = 0; i < Rows(result); ++i) {
    const Row row(result, i);
    const std::string id = row.Text(0);
    const int64_t revision = row.Int(1);
    auto [it, inserted] =
        delivered_.try_emplace(id, Delivered{0, 0, absl::InfinitePast()});
    if (!inserted && it->second.revision >= revision) continue;
    auto generation = std::make_shared<v1::Generation>();
    const std::string_view body = row.Bytes(3);
    if (!generation->ParseFromArray(body.data(),
                                    static_cast<int>(body.size())) ||
        generation->id() != id || generation->revision() != revision) {
      continue;  // a corrupt row: Get reports it
    }
    if (!row.IsNull(4)) {
      const std::string_view ws = row.Bytes(4);
      generation->mutable_webhook_status()->ParseFromArray(
          ws.data(), static_cast<int>(ws.size()));
    }
    it->second = Delivered{revision, row.Int(2), now};
    Change change;
    change.id = id;
    change.revision = revision;
    change.tenant = generation->tenant();
    change.generation = std::move(generation);
    Deliver(change);
    if (by_scan) delivered_by_scan_.fetch_add(1);
  }
  return absl::OkStatus();
}

absl::Status PgChangeFeed::DeliverNotified(PGconn* conn) {
  // The notified revisions themselves, plus whatever else of those
  // generations is past the cursor (in commit order either way).
  std::vector<std::string> ids, pair_ids, pair_revisions;
  for (const auto& [id, revision] : notified_) {
    auto it = delivered_.find(id);
    if (it != delivered_.end() && it->second.revision >= revision) continue;
    if (ids.empty() || ids.back() != id) ids.push_back(id);
    pair_ids.push_back(id);
    pair_revisions.push_back(absl::StrCat(revision));
  }
  notified_.clear();
  if (ids.empty()) return absl::OkStatus();
  static const std::string* const kSql = new std::string(absl::StrCat(
      kRevisionColumns,
      "(h.id, h.revision) IN (SELECT * FROM unnest($1::text[],"
      " $2::bigint[])) OR (h.id = ANY($3::text[]) AND h.change_seq > $4)"
      " ORDER BY h.change_seq"));
  Params params;
  params.Text(TextArrayLiteral(pair_ids))
      .Text(absl::StrCat("{", absl::StrJoin(pair_revisions, ","), "}"))
      .Text(TextArrayLiteral(ids))
      .Int(cursor_);
  absl::StatusOr<Result> r = Query(conn, *kSql, params);
  if (!r.ok()) return r.status();
  return DeliverRows(r->get(), /*by_scan=*/false);
}

absl::Status PgChangeFeed::CatchUp(PGconn* conn) {
  scans_.fetch_add(1);
  if (cursor_ < 0) {
    // No starting point given: start at the head; what committed before is
    // not a change to announce (watchers read it with Get).
    Params none;
    absl::StatusOr<Result> r = Query(
        conn, "SELECT coalesce(max(change_seq), 0) FROM generation_revisions",
        none);
    if (!r.ok()) return r.status();
    cursor_ = Row(r->get(), 0).Int(0);
    cursor_snapshot_.store(cursor_);
    return absl::OkStatus();
  }
  int64_t from = cursor_;
  // The first batch's snapshot is the observation the cursor may later
  // move to; further batches only read ahead.
  Pending observed{cursor_, 0};
  bool first_batch = true;
  uint64_t xmin = 0;
  while (true) {
    Params params;
    params.Int(from).Int(kScanBatch);
    absl::StatusOr<Result> r = Query(conn, kScanSql, params);
    if (!r.ok()) return r.status();
    std::vector<std::string> seqs;  // of the revisions to deliver
    int found = 0;
    int64_t max_seq = from;
    for (int i = 0; i < Rows(r->get()); ++i) {
      const Row row(r->get(), i);
      if (i == 0) {
        xmin = ParseXid(row.Bytes(0));
        if (first_batch && !row.IsNull(1)) {
          observed.max_xip = ParseXid(row.Bytes(1));
        }
      }
      if (row.IsNull(2)) continue;  // nothing changed
      ++found;
      const std::string id = row.Text(2);
      const int64_t revision = row.Int(3);
      const int64_t seq = row.Int(4);
      max_seq = std::max(max_seq, seq);
      auto it = delivered_.find(id);
      if (it == delivered_.end() || it->second.revision < revision) {
        seqs.push_back(absl::StrCat(seq));
      }
    }
    if (first_batch) observed.seq = max_seq;
    first_batch = false;
    if (!seqs.empty()) {
      static const std::string* const kSql = new std::string(
          absl::StrCat(kRevisionColumns,
                       "h.change_seq = ANY($1::bigint[]) ORDER BY"
                       " h.change_seq"));
      Params fetch;
      fetch.Text(absl::StrCat("{", absl::StrJoin(seqs, ","), "}"));
      absl::StatusOr<Result> rows = Query(conn, *kSql, fetch);
      if (!rows.ok()) return rows.status();
      if (absl::Status s = DeliverRows(rows->get(), /*by_scan=*/true);
          !s.ok()) {
        return s;
      }
    }
    if (found < kScanBatch) break;
    from = max_seq;
  }
  pending_.push_back(observed);
  Advance(xmin);
  return absl::OkStatus();
}

// Moves the cursor to the newest observation whose in-progress transactions
// have all ended (xmin is past them): no change_seq at or below its `seq`
// can still appear. An observation whose transactions ended implies the
// same for every older one (a transaction still running then would still
// be in progress at the newer snapshot), so the older ones go too.
void PgChangeFeed::Advance(uint64_t xmin) {
  for (size_t i = pending_.size(); i-- > 0;) {
    const Pending& p = pending_[i];
    if (p.max_xip == 0 || p.max_xip < xmin) {
      cursor_ = std::max(cursor_, p.seq);
      pending_.erase(pending_.begin(), pending_.begin() + i + 1);
      break;
    }
  }
  // A transaction that never ends (an idle session holding an xid) keeps
  // the cursor still; bound the bookkeeping by forgetting middle entries
  // (only ever delays the cursor).
  while (pending_.size() > 64) pending_.erase(pending_.begin() + 1);
  const absl::Time forget_before = absl::Now() - kRememberDelivered;
  for (auto it = delivered_.begin(); it != delivered_.end();) {
    auto next = std::next(it);
    if (it->second.seq <= cursor_ && it->second.at < forget_before) {
      delivered_.erase(it);
    }
    it = next;
  }
  cursor_snapshot_.store(cursor_);
}

absl::Status PgChangeFeed::Session(PGconn* conn) {
  Params none;
  if (absl::StatusOr<Result> r =
          Query(conn, absl::StrCat("LISTEN ", kChangeChannel), none);
      !r.ok()) {
    return r.status();
  }
  // LISTEN before the catch-up read: a change committed in between is
  // either in that read or notified afterwards.
  if (absl::Status s = CatchUp(conn); !s.ok()) return s;
  connects_.fetch_add(1);
  connected_.store(true);
  absl::Time next_scan = absl::Now() + options_.backstop_interval;
  while (!Stopping()) {
    // Queries read whatever arrived meanwhile, notifications included:
    // drain libpq's buffer before waiting on the socket again.
    DrainNotifies(conn);
    if (!notified_.empty()) {
      if (absl::Status s = DeliverNotified(conn); !s.ok()) return s;
      continue;
    }
    if (absl::Now() >= next_scan) {
      if (absl::Status s = CatchUp(conn); !s.ok()) return s;
      next_scan = absl::Now() + options_.backstop_interval;
      continue;
    }
    const Wait w = WaitFor(PQsocket(conn), false, next_scan);
    if (w == Wait::kStop) break;
    if (w == Wait::kReady && !PQconsumeInput(conn)) {
      return absl::UnavailableError(
          absl::StrCat("change feed lost PostgreSQL: ", PQerrorMessage(conn)));
    }
  }
  return absl::OkStatus();
}

void PgChangeFeed::Run() {
  util::NameThisThread("vg-pg-listen");
  std::minstd_rand jitter(
      static_cast<unsigned>(::getpid()) ^
      static_cast<unsigned>(absl::ToUnixNanos(absl::Now())));
  absl::Duration backoff = options_.reconnect_min;
  while (!Stopping()) {
    absl::Status error;
    const int64_t connects_before = connects_.load();
    if (PGconn* conn = ConnectAsync(&error)) {
      error = Session(conn);
      PQfinish(conn);
      connected_.store(false);
      notified_.clear();  // the catch-up on reconnect covers them
    }
    if (Stopping()) break;
    if (connects_.load() != connects_before) {
      backoff = options_.reconnect_min;  // that session worked
    }
    if (options_.on_error && !error.ok()) options_.on_error(error);
    // Up to +50% jitter so replicas do not reconnect in lockstep.
    const absl::Duration wait =
        backoff + backoff * (static_cast<double>(jitter() % 500) / 1000.0);
    SleepFor(wait);
    backoff = std::min(backoff * 2, options_.reconnect_max);
  }
}

}  // namespace videogen::store::pg
