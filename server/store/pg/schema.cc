#include "server/store/pg/schema.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace videogen::store::pg {
namespace {

// Key of the advisory lock that serializes migrations ("vgmigrat"). The
// lock is per database, so clusters shared by several videogen databases
// do not serialize each other.
constexpr int64_t kMigrationLock = 0x76676d6967726174;

// Schema migrations, applied in order; videogen_schema_migrations records
// each. Never edit a released step: append a new one.
//
// Times are BIGINT Unix nanoseconds (the Cursor is exact to the
// nanosecond); absl's infinities are the int64 limits. Columns beside `body`
// (the serialized v1::Generation) copy what the queries filter on.
const char* const kMigrations[] = {
    // 1: everything the Store interface carries.
    R"sql(
CREATE SEQUENCE videogen_change_seq;

-- Every revision-raising write numbers its history row from here. The
-- transaction takes its id first: a transaction that holds a change_seq is
-- therefore always listed as in progress in a concurrent snapshot, which is
-- what lets the change feed's catch-up know when no smaller number can
-- still commit.
CREATE FUNCTION videogen_next_change() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_current_xact_id();
  RETURN nextval('videogen_change_seq');
END
$$;

CREATE TABLE generations (
  id text PRIMARY KEY,
  tenant text NOT NULL,
  request_id text,                 -- NULL when the request had none
  state integer NOT NULL,
  done boolean NOT NULL,
  revision bigint NOT NULL,
  version bigint NOT NULL,         -- compare-and-set counter and fence
  duration_seconds integer NOT NULL,
  create_time_ns bigint NOT NULL,
  update_time_ns bigint NOT NULL,
  deadline_ns bigint NOT NULL,
  submit_phase integer NOT NULL,
  submit_time_ns bigint NOT NULL,
  owner text NOT NULL,             -- poll lease holder; '' = free
  lease_until_ns bigint NOT NULL,
  labels jsonb NOT NULL,
  body bytea NOT NULL,
  webhook_status bytea,            -- v1::WebhookStatus; beside the version
  UNIQUE (tenant, request_id)
);
CREATE INDEX generations_by_create
  ON generations (create_time_ns DESC, id DESC);
CREATE INDEX generations_by_tenant
  ON generations (tenant, create_time_ns DESC, id DESC);
CREATE INDEX generations_active ON generations (create_time_ns, id)
  WHERE NOT done;
CREATE INDEX generations_active_owner ON generations (owner) WHERE NOT done;
CREATE INDEX generations_terminal ON generations (update_time_ns) WHERE done;
CREATE INDEX generations_labels ON generations USING gin (labels jsonb_path_ops);

-- Every revision clients can see, written with the change that raised it:
-- the change feed delivers each revision (not just the latest state) and
-- catches up by change_seq after a reconnect. Superseded revisions are
-- pruned once older than the store's revision_retention; the latest stays.
CREATE TABLE generation_revisions (
  id text NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
  revision bigint NOT NULL,
  change_seq bigint NOT NULL DEFAULT videogen_next_change(),
  created_ns bigint NOT NULL,
  body bytea NOT NULL,
  PRIMARY KEY (id, revision)
);
CREATE INDEX generation_revisions_by_seq ON generation_revisions (change_seq);

CREATE TABLE api_keys (
  key_id text PRIMARY KEY,
  key_hash text NOT NULL UNIQUE,
  tenant text NOT NULL,
  admin boolean NOT NULL,
  max_concurrent bigint NOT NULL,
  creates_per_minute bigint NOT NULL,
  video_seconds_budget bigint NOT NULL,
  budget_period_ns bigint NOT NULL,
  webhook_secret text NOT NULL,
  created_ns bigint NOT NULL,
  revoked_ns bigint                -- NULL while valid
);

CREATE TABLE deliveries (
  seq bigserial PRIMARY KEY,
  generation_id text NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
  revision bigint NOT NULL,
  tenant text NOT NULL,
  url text NOT NULL,
  body bytea NOT NULL,
  attempts integer NOT NULL,
  next_attempt_ns bigint NOT NULL,
  created_ns bigint NOT NULL,
  owner text NOT NULL,
  lease_until_ns bigint NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_ns, seq);
CREATE INDEX deliveries_by_generation ON deliveries (generation_id);

CREATE TABLE duration_samples (
  seq bigserial PRIMARY KEY,
  model text NOT NULL,
  duration_seconds integer NOT NULL,
  took_ns bigint NOT NULL,
  completed_ns bigint NOT NULL
);
CREATE INDEX duration_samples_by_key
  ON duration_samples (model, duration_seconds, completed_ns DESC, seq DESC);
)sql",
    // 2: set when a generation's webhook receiver answered 410 Gone
    // (DropDeliveries); its later changes queue no deliveries.
    R"sql(
ALTER TABLE generations
  ADD COLUMN webhooks_gone boolean NOT NULL DEFAULT false;
)sql",
};
constexpr int kNumMigrations = sizeof(kMigrations) / sizeof(kMigrations[0]);

absl::Status Exec(PGconn* conn, const std::string& sql,
                  std::string_view doing) {
  Result r(PQexec(conn, sql.c_str()));
  return CheckResult(r.get(), conn, doing);
}

absl::Status MigrateLocked(PGconn* conn) {
  if (absl::Status s = Exec(
          conn,
          absl::StrCat("SELECT pg_advisory_xact_lock(", kMigrationLock, ")"),
          "waiting for the migration lock");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Exec(conn,
                            "CREATE TABLE IF NOT EXISTS "
                            "videogen_schema_migrations (version integer "
                            "PRIMARY KEY, applied_at timestamptz NOT NULL "
                            "DEFAULT now())",
                            "creating the migrations table");
      !s.ok()) {
    return s;
  }
  absl::StatusOr<int> version = StoredSchemaVersion(conn);
  if (!version.ok()) return version.status();
  if (*version > kNumMigrations) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the database has schema version %d, newer than this videogen "
        "knows (%d); run a newer videogen or point --database_url elsewhere",
        *version, kNumMigrations));
  }
  for (int v = *version; v < kNumMigrations; ++v) {
    if (absl::Status s = Exec(conn, kMigrations[v],
                              absl::StrCat("running schema migration ", v + 1));
        !s.ok()) {
      return s;
    }
    if (absl::Status s = Exec(conn,
                              absl::StrCat("INSERT INTO "
                                           "videogen_schema_migrations "
                                           "(version) VALUES (",
                                           v + 1, ")"),
                              "recording a migration");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace

int SchemaVersion() { return kNumMigrations; }

absl::StatusOr<int> StoredSchemaVersion(PGconn* conn) {
  Result r(PQexecParams(conn,
                        "SELECT coalesce(max(version), 0)::bigint FROM "
                        "videogen_schema_migrations",
                        0, nullptr, nullptr, nullptr, nullptr, 1));
  if (absl::Status s = CheckResult(r.get(), conn, "reading the schema version");
      !s.ok()) {
    return s;
  }
  return static_cast<int>(Row(r.get(), 0).Int(0));
}

absl::StatusOr<int64_t> ChangeHead(PGconn* conn) {
  Result r(PQexecParams(
      conn, "SELECT coalesce(max(change_seq), 0) FROM generation_revisions", 0,
      nullptr, nullptr, nullptr, nullptr, 1));
  if (absl::Status s = CheckResult(r.get(), conn, "reading the change head");
      !s.ok()) {
    return s;
  }
  return Row(r.get(), 0).Int(0);
}

absl::Status Migrate(PGconn* conn) {
  if (absl::Status s = Exec(conn, "BEGIN", "starting the migration"); !s.ok()) {
    return s;
  }
  absl::Status status = MigrateLocked(conn);
  if (status.ok()) status = Exec(conn, "COMMIT", "committing the migration");
  if (!status.ok()) PQclear(PQexec(conn, "ROLLBACK"));
  return status;
}

std::string RecordColumns(const std::string& alias) {
  static const char* const kColumns[] = {
      "id",           "body",         "webhook_status",
      "deadline_ns",  "submit_phase", "submit_time_ns",
      "version",      "owner",        "lease_until_ns",
      "webhooks_gone"};
  static_assert(sizeof(kColumns) / sizeof(kColumns[0]) == kRecordColumnCount);
  std::string out;
  for (int i = 0; i < kRecordColumnCount; ++i) {
    absl::StrAppend(&out, i ? ", " : "", alias, kColumns[i]);
  }
  return out;
}

absl::StatusOr<Record> RecordFromRow(const Row& row, int first) {
  const std::string id = row.Text(first);
  Record record;
  const std::string_view body = row.Bytes(first + 1);
  if (!record.generation.ParseFromArray(body.data(),
                                        static_cast<int>(body.size())) ||
      record.generation.id() != id) {
    return absl::DataLossError(absl::StrFormat(
        "generation %s in PostgreSQL is corrupt (its stored body does not "
        "parse); delete that row or restore the database from a backup",
        id));
  }
  if (!row.IsNull(first + 2)) {
    const std::string_view ws = row.Bytes(first + 2);
    if (!record.generation.mutable_webhook_status()->ParseFromArray(
            ws.data(), static_cast<int>(ws.size()))) {
      return absl::DataLossError(absl::StrFormat(
          "generation %s in PostgreSQL has a corrupt webhook status", id));
    }
  }
  record.deadline = FromNs(row.Int(first + 3));
  record.submit = static_cast<SubmitPhase>(row.Int(first + 4));
  record.submit_time = FromNs(row.Int(first + 5));
  record.version = row.Int(first + 6);
  record.owner = row.Text(first + 7);
  record.lease_until = FromNs(row.Int(first + 8));
  record.webhooks_gone = row.Bool(first + 9);
  return record;
}

}  // namespace videogen::store::pg
