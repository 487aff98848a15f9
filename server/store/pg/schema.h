#pragma once

// The PostgreSQL schema: versioned migrations and the mapping between a
// generations row and store::Record, shared by the store and its change feed.

#include <libpq-fe.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/store/pg/pq.h"
#include "server/store/store.h"

namespace videogen::store::pg {

// The NOTIFY channel; payload "ID:REVISION".
inline constexpr char kChangeChannel[] = "videogen_changes";

// How many migrations this code knows (the schema version it writes).
int SchemaVersion();

// Brings the database to SchemaVersion() in one transaction, under a
// transaction-level advisory lock, so replicas that start together run each
// step exactly once (the others wait, then find nothing to do). Refuses a
// database migrated by a newer videogen (FAILED_PRECONDITION).
absl::Status Migrate(PGconn* conn);

// The schema version recorded in the database (0 when none).
absl::StatusOr<int> StoredSchemaVersion(PGconn* conn);

// The newest change_seq in the revision history (0 when empty).
absl::StatusOr<int64_t> ChangeHead(PGconn* conn);

// The columns a Record is read from, in the order RecordFromRow expects,
// optionally qualified by a table alias ("g." ...).
std::string RecordColumns(const std::string& alias = "");
inline constexpr int kRecordColumnCount = 10;

// Decodes RecordColumns() starting at column `first`. DATA_LOSS naming the
// id when the stored body does not parse. The separately stored webhook
// status, when set, replaces the body's.
absl::StatusOr<Record> RecordFromRow(const Row& row, int first = 0);

}  // namespace videogen::store::pg
