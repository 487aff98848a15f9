#include "server/store/postgres_store.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/store/pg/schema.h"
#include "server/store/store_internal.h"

namespace videogen::store {
namespace {

using pg::Params;
using pg::Row;

// Statement ids: indexes into Statements().
enum Stmt : int {
  kInsert,
  kUpdate,
  kVersionOf,
  kDelete,
  kGet,
  kGetByRequest,
  kTenantLock,
  kAdmission,
  kClaimActive,
  kRenewLeases,
  kPurge,
  kSetWebhookStatus,
  kInsertKey,
  kFindKey,
  kListKeys,
  kRevokeKey,
  kInsertDelivery,
  kClaimDeliveries,
  kFinishDelivery,
  kRetryDelivery,
  kMarkWebhooksGone,
  kDropDeliveries,
  kOutboxStats,
  kAddSample,
  kTrimSamples,
  kRecentSamples,
  kNumStmts,
};

// Namespace of the per-tenant admission lock ("vgad"), the first key of
// pg_advisory_xact_lock(int4, int4); the second is hashtext(tenant). A hash
// collision only serializes two tenants' creates.
constexpr int32_t kAdmissionLockClass = 0x76676164;

constexpr char kKeyColumns[] =
    "key_id, key_hash, tenant, admin, max_concurrent, creates_per_minute, "
    "video_seconds_budget, budget_period_ns, webhook_secret, created_ns, "
    "revoked_ns";
constexpr char kDeliveryColumns[] =
    "seq, generation_id, revision, tenant, url, body, attempts, "
    "next_attempt_ns, created_ns, owner, lease_until_ns";

std::vector<pg::Statement> Statements() {
  const std::string cols = pg::RecordColumns();
  const std::string g_cols = pg::RecordColumns("g.");
  // Record fields as $2..$16, in this order (see AddRecordFields).
  const std::string notify = absl::StrCat("pg_notify('", pg::kChangeChannel,
                                          "', id || ':' || revision)::text");
  // The history row of a revision-raising write (the feed delivers from
  // it); created_ns is the write's update_time. A revision seen before
  // (only if a caller lowered it and raised it again) is overwritten.
  auto record_revision = [](const char* rows) {
    return absl::StrCat(
        " h AS (INSERT INTO generation_revisions (id, revision, created_ns,"
        " body) SELECT id, revision, $9::bigint, body FROM ",
        rows,
        " ON CONFLICT (id, revision) DO UPDATE SET body = excluded.body,"
        " created_ns = excluded.created_ns,"
        " change_seq = videogen_next_change())");
  };
  std::vector<pg::Statement> s(kNumStmts);
  s[kInsert] = {
      "insert",
      absl::StrCat(
          "WITH i AS (INSERT INTO generations (id, tenant, request_id, state,"
          " done, revision, duration_seconds, create_time_ns, update_time_ns,"
          " deadline_ns, submit_phase, submit_time_ns, owner, lease_until_ns,"
          " labels, body, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
          " $10, $11, $12, $13, $14, $15::jsonb, $16, 1)"
          " ON CONFLICT (tenant, request_id) DO NOTHING RETURNING id,"
          " revision, body),",
          record_revision("i WHERE revision > 0"),
          " SELECT id, CASE WHEN revision > 0 THEN ", notify, " END FROM i")};
  // Compare-and-set: the row must hold version $17 - 1. The revision test
  // decides whether this write is a change to announce.
  s[kUpdate] = {
      "update",
      absl::StrCat(
          "WITH old AS (SELECT id, revision FROM generations WHERE id = $1"
          " AND version = $17::bigint - 1 FOR UPDATE),"
          " u AS (UPDATE generations AS g SET tenant = $2, request_id = $3,"
          " state = $4, done = $5, revision = $6, duration_seconds = $7,"
          " create_time_ns = $8, update_time_ns = $9, deadline_ns = $10,"
          " submit_phase = $11, submit_time_ns = $12, owner = $13,"
          // A lease renewed since the caller read the record (RenewLeases
          // does not bump the version) is not shortened by its older copy.
          " lease_until_ns = CASE WHEN g.owner = $13 THEN"
          " greatest(g.lease_until_ns, $14::bigint) ELSE $14::bigint END,"
          " labels = $15::jsonb, body = $16, version = $17"
          " FROM old WHERE g.id = old.id RETURNING g.id, g.revision, g.body,"
          " old.revision AS old_revision),",
          record_revision("u WHERE revision > old_revision"), ",",
          // Superseded revisions past the retention go (the statement's
          // snapshot does not see the one just recorded).
          " p AS (DELETE FROM generation_revisions AS r USING u"
          " WHERE r.id = u.id AND u.revision > u.old_revision"
          " AND r.revision < u.revision AND r.created_ns < $18::bigint)"
          " SELECT old_revision, CASE WHEN revision > old_revision THEN ",
          notify, " END FROM u")};
  s[kVersionOf] = {"version_of",
                   "SELECT version FROM generations WHERE id = $1"};
  // The EXISTS sees the statement's snapshot, from before the DELETE.
  s[kDelete] = {"delete",
                "WITH d AS (DELETE FROM generations WHERE id = $1 AND"
                " version = $2 RETURNING 1) SELECT (SELECT count(*) FROM d),"
                " EXISTS (SELECT 1 FROM generations WHERE id = $1)"};
  s[kGet] = {"get",
             absl::StrCat("SELECT ", cols, " FROM generations WHERE id = $1")};
  s[kGetByRequest] = {"get_by_request",
                      absl::StrCat("SELECT ", cols,
                                   " FROM generations WHERE tenant = $1 AND"
                                   " request_id = $2")};
  s[kTenantLock] = {"tenant_lock",
                    absl::StrCat("SELECT pg_advisory_xact_lock(",
                                 kAdmissionLockClass, ", hashtext($1))")};
  // $3: creates after this count against creates_per_minute; $4: against
  // the budget. FAILED generations give their seconds back.
  const std::string counted =
      absl::StrCat("state <> ", static_cast<int>(v1::Generation::STATE_FAILED),
                   " AND create_time_ns > $4::bigint");
  s[kAdmission] = {
      "admission",
      absl::StrCat(
          "SELECT (SELECT id FROM generations WHERE tenant = $1 AND"
          " request_id = $2),"
          " count(*) FILTER (WHERE NOT done),"
          " count(*) FILTER (WHERE create_time_ns > $3::bigint),"
          " min(create_time_ns) FILTER (WHERE create_time_ns > $3::bigint),"
          " coalesce(sum(duration_seconds) FILTER (WHERE ",
          counted, "), 0)::bigint, min(create_time_ns) FILTER (WHERE ", counted,
          ")"
          " FROM generations WHERE tenant = $1 AND (NOT done OR"
          " create_time_ns > least($3::bigint, $4::bigint))")};
  s[kClaimActive] = {
      "claim_active",
      absl::StrCat(
          "WITH c AS (SELECT id FROM generations WHERE NOT done AND"
          " (owner = '' OR owner = $1 OR lease_until_ns <= $2)"
          " ORDER BY create_time_ns, id LIMIT $4 FOR UPDATE SKIP LOCKED)"
          " UPDATE generations AS g SET owner = $1, lease_until_ns = $3,"
          " version = g.version + 1 FROM c WHERE g.id = c.id RETURNING ",
          g_cols, ", g.create_time_ns")};
  s[kRenewLeases] = {"renew_leases",
                     "UPDATE generations SET lease_until_ns = $3 WHERE"
                     " owner = $1 AND lease_until_ns > $2 AND NOT done"
                     " RETURNING id"};
  s[kPurge] = {"purge",
               "DELETE FROM generations WHERE done AND update_time_ns < $1"
               " RETURNING id"};
  s[kSetWebhookStatus] = {"set_webhook_status",
                          "UPDATE generations SET webhook_status = $2 WHERE"
                          " id = $1"};
  s[kInsertKey] = {"insert_key",
                   absl::StrCat("INSERT INTO api_keys (", kKeyColumns,
                                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                                " $9, $10, $11)")};
  s[kFindKey] = {"find_key",
                 absl::StrCat("SELECT ", kKeyColumns,
                              " FROM api_keys WHERE key_hash = $1")};
  s[kListKeys] = {"list_keys", absl::StrCat("SELECT ", kKeyColumns,
                                            " FROM api_keys ORDER BY"
                                            " created_ns, key_id")};
  s[kRevokeKey] = {"revoke_key",
                   "UPDATE api_keys SET revoked_ns = coalesce(revoked_ns, $2)"
                   " WHERE key_id = $1"};
  // Nothing for a generation whose receiver said 410 (DropDeliveries). Run
  // in Update's transaction, after its compare-and-set locked the
  // generation's row: under READ COMMITTED this statement's snapshot sees
  // a DropDeliveries that committed before that lock was granted, and one
  // that comes later waits for the lock and then deletes what we insert.
  s[kInsertDelivery] = {
      "insert_delivery",
      "INSERT INTO deliveries (generation_id, revision, tenant, url, body,"
      " attempts, next_attempt_ns, created_ns, owner, lease_until_ns)"
      " SELECT $1::text, $2::bigint, $3::text, $4::text, $5::bytea,"
      " $6::integer, $7::bigint, $8::bigint, $9::text, $10::bigint"
      " WHERE NOT EXISTS (SELECT 1 FROM generations WHERE id = $1::text"
      " AND webhooks_gone)"};
  s[kClaimDeliveries] = {
      "claim_deliveries",
      absl::StrCat(
          "WITH c AS (SELECT seq FROM deliveries WHERE next_attempt_ns <= $2"
          " AND (owner = '' OR lease_until_ns <= $2)"
          " ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED)"
          " UPDATE deliveries AS d SET owner = $1, lease_until_ns = $3"
          " FROM c WHERE d.seq = c.seq RETURNING d.seq, d.generation_id,"
          " d.revision, d.tenant, d.url, d.body, d.attempts,"
          " d.next_attempt_ns, d.created_ns, d.owner, d.lease_until_ns")};
  s[kFinishDelivery] = {"finish_delivery",
                        "DELETE FROM deliveries WHERE seq = $1"};
  s[kRetryDelivery] = {
      "retry_delivery",
      absl::StrCat("UPDATE deliveries SET attempts = $2, next_attempt_ns = $3,"
                   " owner = '', lease_until_ns = ",
                   std::numeric_limits<int64_t>::min(), " WHERE seq = $1")};
  // DropDeliveries: first the flag (which takes the generation's row lock,
  // so it waits for an Update in progress), then, in a statement of its own
  // with a fresh snapshot, the deliveries that Update committed.
  s[kMarkWebhooksGone] = {
      "mark_webhooks_gone",
      "UPDATE generations SET webhooks_gone = true WHERE id = $1"};
  s[kDropDeliveries] = {"drop_deliveries",
                        "DELETE FROM deliveries WHERE generation_id = $1"};
  s[kOutboxStats] = {"outbox_stats",
                     "SELECT count(*), min(created_ns) FROM deliveries"};
  s[kAddSample] = {"add_sample",
                   "INSERT INTO duration_samples (model, duration_seconds,"
                   " took_ns, completed_ns) VALUES ($1, $2, $3, $4)"};
  s[kTrimSamples] = {
      "trim_samples",
      "DELETE FROM duration_samples WHERE seq IN (SELECT seq FROM"
      " duration_samples WHERE model = $1 AND duration_seconds = $2"
      " ORDER BY completed_ns DESC, seq DESC OFFSET $3)"};
  s[kRecentSamples] = {
      "recent_samples",
      "SELECT model, duration_seconds, took_ns, completed_ns FROM"
      " duration_samples WHERE model = $1 AND duration_seconds = $2"
      " ORDER BY completed_ns DESC, seq DESC LIMIT $3"};
  return s;
}

int64_t Nanos(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000'000 + t.nanos();
}

std::string LabelsJson(
    const google::protobuf::Map<std::string, std::string>& labels) {
  // Sorted, so the text is the same for the same labels.
  std::vector<std::pair<std::string, std::string>> sorted(labels.begin(),
                                                          labels.end());
  std::sort(sorted.begin(), sorted.end());
  std::string out = "{";
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (i > 0) out.push_back(',');
    pg::AppendJsonString(&out, sorted[i].first);
    out.push_back(':');
    pg::AppendJsonString(&out, sorted[i].second);
  }
  out.push_back('}');
  return out;
}

std::string LabelsJson(const std::map<std::string, std::string>& labels) {
  google::protobuf::Map<std::string, std::string> m(labels.begin(),
                                                    labels.end());
  return LabelsJson(m);
}

// Appends $2..$16 of kInsert/kUpdate. `body` must outlive nothing: Params
// copies.
absl::Status AddRecordFields(const Record& record, Params& p) {
  // The webhook status lives in its own column (SetWebhookStatus), never in
  // the body.
  v1::Generation scratch;
  const v1::Generation& g =
      internal::WithoutWebhookStatus(record.generation, &scratch);
  std::string body;
  if (!g.SerializeToString(&body)) {
    return absl::InternalError(
        absl::StrCat("generation ", g.id(), " does not serialize"));
  }
  p.Text(g.tenant())
      .TextOrNull(g.request().request_id())
      .Int(g.state())
      .Bool(g.done())
      .Int(g.revision())
      .Int(g.request().duration_seconds())
      .Int(Nanos(g.create_time()))
      .Int(Nanos(g.update_time()))
      .Int(pg::ToNs(record.deadline))
      .Int(static_cast<int>(record.submit))
      .Int(pg::ToNs(record.submit_time))
      .Text(record.owner)
      .Int(pg::ToNs(record.lease_until))
      .Text(LabelsJson(g.labels()))
      .Bytes(body);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Record>> OneRecord(const PGresult* r) {
  if (pg::Rows(r) == 0) return std::nullopt;
  absl::StatusOr<Record> record = pg::RecordFromRow(Row(r, 0));
  if (!record.ok()) return record.status();
  return std::optional<Record>(std::move(*record));
}

ApiKey KeyFromRow(const Row& row) {
  ApiKey key;
  key.key_id = row.Text(0);
  key.key_hash = row.Text(1);
  key.tenant = row.Text(2);
  key.admin = row.Bool(3);
  key.limits.max_concurrent = row.Int(4);
  key.limits.creates_per_minute = row.Int(5);
  key.limits.video_seconds_budget = row.Int(6);
  key.limits.budget_period = absl::Nanoseconds(row.Int(7));
  key.webhook_secret = row.Text(8);
  key.created = pg::FromNs(row.Int(9));
  if (!row.IsNull(10)) key.revoked = pg::FromNs(row.Int(10));
  return key;
}

Delivery DeliveryFromRow(const Row& row) {
  Delivery d;
  d.seq = row.Int(0);
  d.generation_id = row.Text(1);
  d.revision = row.Int(2);
  d.tenant = row.Text(3);
  d.url = row.Text(4);
  d.body = row.Text(5);
  d.attempts = static_cast<int>(row.Int(6));
  d.next_attempt = pg::FromNs(row.Int(7));
  d.created = pg::FromNs(row.Int(8));
  d.owner = row.Text(9);
  d.lease_until = pg::FromNs(row.Int(10));
  return d;
}

absl::Status RequestIdTaken(const std::string& request_id,
                            const std::string& owner) {
  return absl::AlreadyExistsError(absl::StrCat(
      "request_id \"", request_id, "\" already belongs to generation ", owner));
}

// BEGIN ... COMMIT on one connection; rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(pg::Connection& conn) : conn_(conn) {}
  ~Transaction() {
    if (open_) (void)conn_.Exec("ROLLBACK");
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  absl::Status Begin() {
    absl::Status s = conn_.Exec("BEGIN");
    open_ = s.ok();
    return s;
  }
  absl::Status Commit() {
    open_ = false;
    return conn_.Exec("COMMIT");
  }
  // Ends the transaction now (a failed statement aborted it, and the
  // follow-up read must run outside it).
  void Rollback() {
    if (open_) (void)conn_.Exec("ROLLBACK");
    open_ = false;
  }

 private:
  pg::Connection& conn_;
  bool open_ = false;
};

std::string Ms(absl::Duration d) {
  return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)), "ms");
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresStore>> PostgresStore::Open(
    const std::string& database_url, const PostgresOptions& options) {
  pg::ConnectParams connect;
  connect.url = database_url;
  connect.application_name = options.application_name;
  connect.connect_timeout = options.connect_timeout;
  int64_t change_head = 0;
  {
    // Migrate on a connection of its own, before any pooled one prepares
    // statements against the tables.
    absl::StatusOr<pg::ConnPtr> conn = pg::Connect(connect);
    if (!conn.ok()) return conn.status();
    if (absl::Status s = pg::Migrate(conn->get()); !s.ok()) return s;
    // The feed delivers every change committed from here on, however late
    // its listener is set.
    absl::StatusOr<int64_t> head = pg::ChangeHead(conn->get());
    if (!head.ok()) return head.status();
    change_head = *head;
  }
  std::vector<std::string> setup = {
      absl::StrCat("SET statement_timeout = '", Ms(options.statement_timeout),
                   "'"),
      // A replica that stalls mid-transaction must not hold row locks (and
      // so leases and admission) forever.
      absl::StrCat(
          "SET idle_in_transaction_session_timeout = '",
          Ms(std::max(absl::Seconds(60), options.statement_timeout * 2)), "'"),
  };
  std::unique_ptr<PostgresStore> store(new PostgresStore(
      options, std::move(connect), std::move(setup), change_head));
  if (absl::Status s = store->CheckIntegrity(); !s.ok()) return s;
  return store;
}

PostgresStore::PostgresStore(const PostgresOptions& options,
                             pg::ConnectParams connect,
                             std::vector<std::string> setup,
                             int64_t change_head)
    : options_(options),
      pool_(connect, options.pool_size, Statements(), std::move(setup)),
      feed_([&] {
        pg::FeedOptions f;
        f.connect = connect;
        f.connect.application_name = options.application_name + "-feed";
        f.backstop_interval = options.feed_backstop_interval;
        f.reconnect_min = options.feed_reconnect_min;
        f.reconnect_max = options.feed_reconnect_max;
        f.query_timeout = options.statement_timeout;
        f.on_error = options.on_feed_error;
        f.start_after = change_head;
        return f;
      }()) {}

PostgresStore::~PostgresStore() = default;

template <typename Fn>
auto PostgresStore::WithConnection(bool retry_if_lost, Fn&& fn)
    -> decltype(fn(std::declval<pg::Connection&>())) {
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<pg::Pool::Lease> lease = pool_.Acquire();
    if (!lease.ok()) return lease.status();
    auto result = fn(**lease);
    if (result.ok() || !retry_if_lost || attempt > 0 ||
        !pg::ConnectionLost((*lease)->raw())) {
      return result;
    }
  }
}

// ---- Generations ----

absl::Status PostgresStore::CheckAdmission(pg::Connection& conn,
                                           const Record& record,
                                           const Admission& admission,
                                           std::optional<Record>* existing) {
  const v1::Generation& g = record.generation;
  const int64_t now = Nanos(g.create_time());
  Params lock;
  lock.Text(g.tenant());
  if (absl::StatusOr<pg::Result> r =
          conn.Run(kTenantLock, lock, "locking the tenant's admission");
      !r.ok()) {
    return r.status();
  }
  // After the lock: a fresh snapshot that includes every create of this
  // tenant committed before us.
  Params p;
  p.Text(g.tenant())
      .TextOrNull(g.request().request_id())
      .Int(now - absl::ToInt64Nanoseconds(absl::Minutes(1)))
      .Int(now - absl::ToInt64Nanoseconds(admission.budget_period));
  absl::StatusOr<pg::Result> r =
      conn.Run(kAdmission, p, "checking the tenant's limits");
  if (!r.ok()) return r.status();
  const Row row(r->get(), 0);
  if (!row.IsNull(0)) {
    // A duplicate: report it as such, whatever the limits say.
    Params q;
    q.Text(row.Bytes(0));
    absl::StatusOr<pg::Result> e = conn.Run(kGet, q, "reading a generation");
    if (!e.ok()) return e.status();
    absl::StatusOr<std::optional<Record>> rec = OneRecord(e->get());
    if (!rec.ok()) return rec.status();
    if (existing != nullptr) *existing = std::move(*rec);
    return RequestIdTaken(g.request().request_id(), row.Text(0));
  }
  internal::TenantUsage u;
  u.active = row.Int(1);
  u.recent = row.Int(2);
  u.oldest_recent = pg::FromNs(row.Int(3));
  u.seconds = row.Int(4);
  if (!row.IsNull(5)) u.oldest_counted = pg::FromNs(row.Int(5));
  return internal::AdmitUsage(g.tenant(), admission, u,
                              g.request().duration_seconds(), pg::FromNs(now));
}

absl::Status PostgresStore::InsertLocked(pg::Connection& conn,
                                         const Record& record,
                                         const Admission& admission,
                                         std::optional<Record>* existing) {
  const v1::Generation& g = record.generation;
  const bool limited = admission.max_concurrent > 0 ||
                       admission.creates_per_minute > 0 ||
                       admission.video_seconds_budget > 0;
  Transaction tx(conn);
  if (limited) {
    if (absl::Status s = tx.Begin(); !s.ok()) return s;
    if (absl::Status s = CheckAdmission(conn, record, admission, existing);
        !s.ok()) {
      return s;
    }
  }
  Params p;
  p.Text(g.id());
  if (absl::Status s = AddRecordFields(record, p); !s.ok()) return s;
  absl::StatusOr<pg::Result> r =
      conn.Run(kInsert, p, absl::StrCat("inserting generation ", g.id()));
  if (!r.ok()) {
    if (!absl::IsAlreadyExists(r.status())) return r.status();
    // The id itself is taken (the request_id conflict is DO NOTHING).
    tx.Rollback();
    if (existing != nullptr) {
      Params q;
      q.Text(g.id());
      if (absl::StatusOr<pg::Result> e = conn.Run(kGet, q, "reading"); e.ok()) {
        if (auto rec = OneRecord(e->get()); rec.ok()) *existing = *rec;
      }
    }
    return absl::AlreadyExistsError(
        absl::StrCat("generation ", g.id(), " already exists"));
  }
  if (pg::Rows(r->get()) == 1) return limited ? tx.Commit() : absl::OkStatus();
  // (tenant, request_id) is taken, by a create that committed meanwhile.
  tx.Rollback();
  Params q;
  q.Text(g.tenant()).Text(g.request().request_id());
  absl::StatusOr<pg::Result> e =
      conn.Run(kGetByRequest, q, "reading the generation with that request_id");
  if (!e.ok()) return e.status();
  absl::StatusOr<std::optional<Record>> rec = OneRecord(e->get());
  if (!rec.ok()) return rec.status();
  if (!rec->has_value()) {
    // Deleted between our insert and this read: try again.
    return absl::AbortedError("request_id owner vanished; retry");
  }
  const std::string owner_id = (*rec)->generation.id();
  if (existing != nullptr) *existing = std::move(*rec);
  return RequestIdTaken(g.request().request_id(), owner_id);
}

absl::Status PostgresStore::Insert(const Record& record,
                                   const Admission& admission,
                                   std::optional<Record>* existing) {
  if (record.generation.id().empty()) {
    return absl::InvalidArgumentError("Insert: generation id is empty");
  }
  if (existing != nullptr) existing->reset();
  absl::Status status;
  for (int attempt = 0; attempt < 3; ++attempt) {
    status = WithConnection(false, [&](pg::Connection& conn) {
      return InsertLocked(conn, record, admission, existing);
    });
    if (!absl::IsAborted(status)) break;
  }
  return status;
}

absl::StatusOr<bool> PostgresStore::UpdateLocked(pg::Connection& conn,
                                                 const Record& record) {
  const v1::Generation& g = record.generation;
  Params p;
  p.Text(g.id());
  if (absl::Status s = AddRecordFields(record, p); !s.ok()) return s;
  p.Int(record.version);
  p.Int(absl::ToUnixNanos(
      internal::UpdateTime(record.generation) -
      std::max(options_.revision_retention, absl::ZeroDuration())));
  absl::StatusOr<pg::Result> r =
      conn.Run(kUpdate, p, absl::StrCat("updating generation ", g.id()));
  if (!r.ok()) return r.status();
  return pg::Rows(r->get()) == 1;
}

absl::Status PostgresStore::Update(const Record& record,
                                   const std::vector<Delivery>& outbox) {
  const v1::Generation& g = record.generation;
  if (g.id().empty()) {
    return absl::InvalidArgumentError("Update: generation id is empty");
  }
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Transaction tx(conn);
    if (!outbox.empty()) {
      if (absl::Status s = tx.Begin(); !s.ok()) return s;
    }
    absl::StatusOr<bool> updated = UpdateLocked(conn, record);
    if (!updated.ok()) return updated.status();
    if (!*updated) {
      tx.Rollback();
      Params q;
      q.Text(g.id());
      absl::StatusOr<pg::Result> v =
          conn.Run(kVersionOf, q, "reading a generation's version");
      if (!v.ok()) return v.status();
      if (pg::Rows(v->get()) == 0) {
        return absl::NotFoundError(
            absl::StrCat("generation ", g.id(), " is gone"));
      }
      return absl::AbortedError(absl::StrFormat(
          "generation %s is at version %d, not %d: someone else wrote it; "
          "re-read",
          g.id(), Row(v->get(), 0).Int(0), record.version - 1));
    }
    for (const Delivery& d : outbox) {
      Params dp;
      dp.Text(d.generation_id.empty() ? g.id() : d.generation_id)
          .Int(d.revision)
          .Text(d.tenant)
          .Text(d.url)
          .Bytes(d.body)
          .Int(d.attempts)
          .Int(pg::ToNs(d.next_attempt))
          .Int(pg::ToNs(d.created == absl::InfinitePast() ? absl::Now()
                                                          : d.created))
          .Text(d.owner)
          .Int(pg::ToNs(d.lease_until));
      if (absl::StatusOr<pg::Result> r =
              conn.Run(kInsertDelivery, dp, "queueing a webhook delivery");
          !r.ok()) {
        return r.status();
      }
    }
    return outbox.empty() ? absl::OkStatus() : tx.Commit();
  });
}

absl::Status PostgresStore::Delete(std::string_view id, int64_t version) {
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Text(id).Int(version);
    absl::StatusOr<pg::Result> r =
        conn.Run(kDelete, p, "deleting a generation");
    if (!r.ok()) return r.status();
    const Row row(r->get(), 0);
    if (row.Int(0) == 0 && row.Bool(1)) {
      return absl::AbortedError(absl::StrFormat(
          "generation %s is not at version %d: someone else wrote it", id,
          version));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::optional<Record>> PostgresStore::Get(std::string_view id) {
  return WithConnection(
      true, [&](pg::Connection& conn) -> absl::StatusOr<std::optional<Record>> {
        Params p;
        p.Text(id);
        absl::StatusOr<pg::Result> r =
            conn.Run(kGet, p, "reading a generation");
        if (!r.ok()) return r.status();
        return OneRecord(r->get());
      });
}

absl::StatusOr<std::optional<Record>> PostgresStore::GetByRequestId(
    std::string_view tenant, std::string_view request_id) {
  if (request_id.empty()) return std::nullopt;
  return WithConnection(
      true, [&](pg::Connection& conn) -> absl::StatusOr<std::optional<Record>> {
        Params p;
        p.Text(tenant).Text(request_id);
        absl::StatusOr<pg::Result> r =
            conn.Run(kGetByRequest, p, "reading a generation by request_id");
        if (!r.ok()) return r.status();
        return OneRecord(r->get());
      });
}

absl::StatusOr<std::vector<Record>> PostgresStore::ClaimActive(
    std::string_view owner, absl::Time now, absl::Time until, int limit) {
  if (owner.empty()) {
    return absl::InvalidArgumentError("ClaimActive: owner is empty");
  }
  if (limit == 0) return std::vector<Record>{};
  return WithConnection(
      false, [&](pg::Connection& conn) -> absl::StatusOr<std::vector<Record>> {
        Params p;
        p.Text(owner).Int(pg::ToNs(now)).Int(pg::ToNs(until));
        if (limit < 0) {
          p.Null();  // LIMIT NULL: no limit
        } else {
          p.Int(limit);
        }
        absl::StatusOr<pg::Result> r =
            conn.Run(kClaimActive, p, "claiming generations");
        if (!r.ok()) return r.status();
        std::vector<std::pair<int64_t, Record>> claimed;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          const Row row(r->get(), i);
          absl::StatusOr<Record> rec = pg::RecordFromRow(row);
          if (!rec.ok()) return rec.status();
          claimed.emplace_back(row.Int(pg::kRecordColumnCount),
                               std::move(*rec));
        }
        // Oldest first, like the claim's own order (RETURNING has none).
        std::sort(claimed.begin(), claimed.end(),
                  [](const auto& a, const auto& b) {
                    return std::tie(a.first, a.second.generation.id()) <
                           std::tie(b.first, b.second.generation.id());
                  });
        std::vector<Record> out;
        out.reserve(claimed.size());
        for (auto& [t, rec] : claimed) out.push_back(std::move(rec));
        return out;
      });
}

absl::StatusOr<std::vector<std::string>> PostgresStore::RenewLeases(
    std::string_view owner, absl::Time now, absl::Time until) {
  return WithConnection(
      false,
      [&](pg::Connection& conn) -> absl::StatusOr<std::vector<std::string>> {
        Params p;
        p.Text(owner).Int(pg::ToNs(now)).Int(pg::ToNs(until));
        absl::StatusOr<pg::Result> r =
            conn.Run(kRenewLeases, p, "renewing leases");
        if (!r.ok()) return r.status();
        std::vector<std::string> ids;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          ids.push_back(Row(r->get(), i).Text(0));
        }
        std::sort(ids.begin(), ids.end());
        return ids;
      });
}

absl::StatusOr<ListPage> PostgresStore::List(const ListQuery& query) {
  if (query.page_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("List: page_size must be > 0, got ", query.page_size));
  }
  // Few shapes and not a hot path: ad-hoc SQL, so each shape gets a plan
  // for its own filters.
  std::string sql = absl::StrCat("SELECT ", pg::RecordColumns(),
                                 ", create_time_ns FROM generations WHERE"
                                 " true");
  Params p;
  int n = 0;
  if (!query.tenant.empty()) {
    absl::StrAppend(&sql, " AND tenant = $", ++n);
    p.Text(query.tenant);
  }
  if (!query.states.empty()) {
    std::string list = "{";
    for (size_t i = 0; i < query.states.size(); ++i) {
      absl::StrAppend(&list, i ? "," : "", static_cast<int>(query.states[i]));
    }
    absl::StrAppend(&sql, " AND state = ANY($", ++n, "::integer[])");
    p.Text(list + "}");
  }
  if (!query.labels.empty()) {
    absl::StrAppend(&sql, " AND labels @> $", ++n, "::jsonb");
    p.Text(LabelsJson(query.labels));
  }
  if (query.after.has_value()) {
    absl::StrAppend(&sql, " AND (create_time_ns, id) < ($", n + 1,
                    "::bigint, $", n + 2, "::text)");
    n += 2;
    p.Int(absl::ToUnixNanos(query.after->create_time)).Text(query.after->id);
  }
  // One extra row tells whether another page may follow.
  absl::StrAppend(&sql, " ORDER BY create_time_ns DESC, id DESC LIMIT $", ++n);
  p.Int(int64_t{query.page_size} + 1);
  return WithConnection(
      true, [&](pg::Connection& conn) -> absl::StatusOr<ListPage> {
        absl::StatusOr<pg::Result> r =
            conn.RunSql(sql, p, "listing generations");
        if (!r.ok()) return r.status();
        ListPage page;
        int64_t last_time = 0;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          const Row row(r->get(), i);
          if (static_cast<int>(page.generations.size()) == query.page_size) {
            page.next = Cursor{absl::FromUnixNanos(last_time),
                               page.generations.back().id()};
            break;
          }
          absl::StatusOr<Record> rec = pg::RecordFromRow(row);
          if (!rec.ok()) return rec.status();
          last_time = row.Int(pg::kRecordColumnCount);
          page.generations.push_back(std::move(rec->generation));
        }
        return page;
      });
}

absl::StatusOr<std::vector<std::string>> PostgresStore::PurgeTerminalBefore(
    absl::Time cutoff) {
  return WithConnection(
      false,
      [&](pg::Connection& conn) -> absl::StatusOr<std::vector<std::string>> {
        Params p;
        p.Int(pg::ToNs(cutoff));
        absl::StatusOr<pg::Result> r =
            conn.Run(kPurge, p, "purging old generations");
        if (!r.ok()) return r.status();
        std::vector<std::string> ids;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          ids.push_back(Row(r->get(), i).Text(0));
        }
        std::sort(ids.begin(), ids.end());
        return ids;
      });
}

absl::Status PostgresStore::SetWebhookStatus(std::string_view id,
                                             const v1::WebhookStatus& status) {
  std::string bytes;
  if (!status.SerializeToString(&bytes)) {
    return absl::InternalError("webhook status does not serialize");
  }
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Text(id).Bytes(bytes);
    absl::StatusOr<pg::Result> r =
        conn.Run(kSetWebhookStatus, p, "recording a webhook status");
    if (!r.ok()) return r.status();
    if (pg::Affected(r->get()) == 0) {
      return absl::NotFoundError(
          absl::StrCat("generation ", std::string(id), " not found"));
    }
    return absl::OkStatus();
  });
}

absl::Status PostgresStore::CheckIntegrity() {
  return WithConnection(true, [&](pg::Connection& conn) -> absl::Status {
    absl::StatusOr<int> version = pg::StoredSchemaVersion(conn.raw());
    if (!version.ok()) return version.status();
    if (*version != pg::SchemaVersion()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "the database has schema version %d; this videogen needs %d (it "
          "migrates at startup: restart it, or run a matching version)",
          *version, pg::SchemaVersion()));
    }
    return absl::OkStatus();
  });
}

// ---- API keys ----

absl::Status PostgresStore::InsertKey(const ApiKey& key) {
  if (key.key_id.empty() || key.key_hash.empty()) {
    return absl::InvalidArgumentError("InsertKey: key_id and key_hash needed");
  }
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Text(key.key_id)
        .Text(key.key_hash)
        .Text(key.tenant)
        .Bool(key.admin)
        .Int(key.limits.max_concurrent)
        .Int(key.limits.creates_per_minute)
        .Int(key.limits.video_seconds_budget)
        .Int(absl::ToInt64Nanoseconds(key.limits.budget_period))
        .Text(key.webhook_secret)
        .Int(pg::ToNs(key.created));
    if (key.revoked.has_value()) {
      p.Int(pg::ToNs(*key.revoked));
    } else {
      p.Null();
    }
    // The message names the key id only: the hash is a secret's stand-in.
    absl::StatusOr<pg::Result> r =
        conn.Run(kInsertKey, p, absl::StrCat("inserting key ", key.key_id));
    return r.status();
  });
}

absl::StatusOr<std::optional<ApiKey>> PostgresStore::FindKeyByHash(
    std::string_view key_hash) {
  return WithConnection(
      true, [&](pg::Connection& conn) -> absl::StatusOr<std::optional<ApiKey>> {
        Params p;
        p.Text(key_hash);
        absl::StatusOr<pg::Result> r =
            conn.Run(kFindKey, p, "looking up an API key");
        if (!r.ok()) return r.status();
        if (pg::Rows(r->get()) == 0) return std::nullopt;
        return std::optional<ApiKey>(KeyFromRow(Row(r->get(), 0)));
      });
}

absl::StatusOr<std::vector<ApiKey>> PostgresStore::ListKeys() {
  return WithConnection(
      true, [&](pg::Connection& conn) -> absl::StatusOr<std::vector<ApiKey>> {
        Params p;
        absl::StatusOr<pg::Result> r = conn.Run(kListKeys, p, "listing keys");
        if (!r.ok()) return r.status();
        std::vector<ApiKey> keys;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          keys.push_back(KeyFromRow(Row(r->get(), i)));
        }
        return keys;
      });
}

absl::Status PostgresStore::RevokeKey(std::string_view key_id,
                                      absl::Time when) {
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Text(key_id).Int(pg::ToNs(when));
    absl::StatusOr<pg::Result> r = conn.Run(kRevokeKey, p, "revoking a key");
    if (!r.ok()) return r.status();
    if (pg::Affected(r->get()) == 0) {
      return absl::NotFoundError(
          absl::StrCat("no key with id ", std::string(key_id)));
    }
    return absl::OkStatus();
  });
}

// ---- Webhook outbox ----

absl::StatusOr<std::vector<Delivery>> PostgresStore::ClaimDeliveries(
    std::string_view owner, absl::Time now, absl::Time until, int limit) {
  if (owner.empty()) {
    return absl::InvalidArgumentError("ClaimDeliveries: owner is empty");
  }
  if (limit == 0) return std::vector<Delivery>{};
  return WithConnection(
      false,
      [&](pg::Connection& conn) -> absl::StatusOr<std::vector<Delivery>> {
        Params p;
        p.Text(owner).Int(pg::ToNs(now)).Int(pg::ToNs(until));
        if (limit < 0) {
          p.Null();  // LIMIT NULL: no limit
        } else {
          p.Int(limit);
        }
        absl::StatusOr<pg::Result> r =
            conn.Run(kClaimDeliveries, p, "claiming webhook deliveries");
        if (!r.ok()) return r.status();
        std::vector<Delivery> out;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          out.push_back(DeliveryFromRow(Row(r->get(), i)));
        }
        std::sort(
            out.begin(), out.end(),
            [](const Delivery& a, const Delivery& b) { return a.seq < b.seq; });
        return out;
      });
}

absl::Status PostgresStore::FinishDelivery(int64_t seq) {
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Int(seq);
    return conn.Run(kFinishDelivery, p, "finishing a webhook delivery")
        .status();
  });
}

absl::Status PostgresStore::RetryDelivery(int64_t seq, int attempts,
                                          absl::Time next_attempt) {
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Int(seq).Int(attempts).Int(pg::ToNs(next_attempt));
    absl::StatusOr<pg::Result> r =
        conn.Run(kRetryDelivery, p, "rescheduling a webhook delivery");
    if (!r.ok()) return r.status();
    return absl::OkStatus();  // a finished delivery stays finished
  });
}

absl::Status PostgresStore::DropDeliveries(std::string_view generation_id) {
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Transaction tx(conn);
    if (absl::Status s = tx.Begin(); !s.ok()) return s;
    Params p;
    p.Text(generation_id);
    if (absl::StatusOr<pg::Result> r =
            conn.Run(kMarkWebhooksGone, p, "stopping a generation's webhooks");
        !r.ok()) {
      return r.status();
    }
    if (absl::StatusOr<pg::Result> r =
            conn.Run(kDropDeliveries, p, "dropping webhook deliveries");
        !r.ok()) {
      return r.status();
    }
    return tx.Commit();
  });
}

absl::StatusOr<std::pair<int64_t, absl::Time>> PostgresStore::OutboxStats() {
  return WithConnection(
      true,
      [&](pg::Connection& conn)
          -> absl::StatusOr<std::pair<int64_t, absl::Time>> {
        Params p;
        absl::StatusOr<pg::Result> r =
            conn.Run(kOutboxStats, p, "counting webhook deliveries");
        if (!r.ok()) return r.status();
        const Row row(r->get(), 0);
        const absl::Time oldest =
            row.IsNull(1) ? absl::InfinitePast() : pg::FromNs(row.Int(1));
        return std::make_pair(row.Int(0), oldest);
      });
}

// ---- Estimator samples ----

absl::Status PostgresStore::AddSample(const DurationSample& sample) {
  return WithConnection(false, [&](pg::Connection& conn) -> absl::Status {
    Params p;
    p.Text(sample.model)
        .Int(sample.duration_seconds)
        .Int(absl::ToInt64Nanoseconds(sample.took))
        .Int(pg::ToNs(sample.completed));
    if (absl::StatusOr<pg::Result> r =
            conn.Run(kAddSample, p, "recording a duration sample");
        !r.ok()) {
      return r.status();
    }
    // Keep the newest samples_per_key; a racing AddSample only trims late.
    Params t;
    t.Text(sample.model)
        .Int(sample.duration_seconds)
        .Int(std::max(1, options_.samples_per_key));
    return conn.Run(kTrimSamples, t, "trimming duration samples").status();
  });
}

absl::StatusOr<std::vector<DurationSample>> PostgresStore::RecentSamples(
    std::string_view model, int duration_seconds, int limit) {
  if (limit <= 0) return std::vector<DurationSample>{};
  return WithConnection(
      true,
      [&](pg::Connection& conn) -> absl::StatusOr<std::vector<DurationSample>> {
        Params p;
        p.Text(model).Int(duration_seconds).Int(limit);
        absl::StatusOr<pg::Result> r =
            conn.Run(kRecentSamples, p, "reading duration samples");
        if (!r.ok()) return r.status();
        std::vector<DurationSample> out;
        for (int i = 0; i < pg::Rows(r->get()); ++i) {
          const Row row(r->get(), i);
          DurationSample s;
          s.model = row.Text(0);
          s.duration_seconds = static_cast<int>(row.Int(1));
          s.took = absl::Nanoseconds(row.Int(2));
          s.completed = pg::FromNs(row.Int(3));
          out.push_back(std::move(s));
        }
        return out;
      });
}

}  // namespace videogen::store
