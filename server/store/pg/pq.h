#pragma once

// Thin, allocation-light helpers over libpq: owning handles, query
// parameters, binary result decoding and SQLSTATE -> absl::Status mapping.
// Nothing here is shared between threads: a PGconn and its results belong to
// the thread that uses them.

#include <libpq-fe.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videogen::store::pg {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;

// Positional parameters ($1, $2, ...) for PQexecPrepared/PQsendQueryParams.
// Numbers and text go as text (the server parses them into the column's
// type); bytea goes binary so bodies are not hex-escaped.
class Params {
 public:
  Params& Text(std::string_view v);
  Params& Bytes(std::string_view v);
  Params& Int(int64_t v);
  Params& Bool(bool v);
  Params& Null();
  // Text, or NULL when `v` is empty.
  Params& TextOrNull(std::string_view v);

  int size() const { return static_cast<int>(values_.size()); }
  // Pointer arrays for libpq; valid until the next Add or destruction.
  const char* const* values();
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  std::vector<std::string> values_;
  std::vector<bool> null_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
  std::vector<const char*> pointers_;
};

// One row of a result fetched in binary format (resultFormat = 1). The
// accessors decode PostgreSQL's network-order binary representations of
// int2/int4/int8, bool, text and bytea.
class Row {
 public:
  Row(const PGresult* result, int row) : result_(result), row_(row) {}
  bool IsNull(int col) const;
  std::string_view Bytes(int col) const;  // text or bytea; empty for NULL
  std::string Text(int col) const { return std::string(Bytes(col)); }
  int64_t Int(int col) const;  // int2/int4/int8; 0 for NULL
  bool Bool(int col) const;

 private:
  const PGresult* result_;
  int row_;
};

inline int Rows(const PGresult* r) { return PQntuples(r); }
inline int64_t Affected(const PGresult* r) {
  const char* n = PQcmdTuples(const_cast<PGresult*>(r));
  return n && *n ? std::strtoll(n, nullptr, 10) : 0;
}

// Maps a failed result (or a null result / broken connection) to a Status:
// unique violations are ALREADY_EXISTS, serialization failures and deadlocks
// ABORTED, lost connections and shutdowns UNAVAILABLE, statement timeouts
// DEADLINE_EXCEEDED. The message names what we were doing and the server's
// primary message; never the connection string.
absl::Status ResultError(const PGresult* result, PGconn* conn,
                         std::string_view doing);
// OK when `result` finished with COMMAND_OK or TUPLES_OK.
absl::Status CheckResult(const PGresult* result, PGconn* conn,
                         std::string_view doing);
// The SQLSTATE of a failed result ("" when none).
std::string SqlState(const PGresult* result);
// True when the error means the connection itself is unusable.
bool ConnectionLost(PGconn* conn);

// Connection keywords, applied before the caller's URL so that whatever the
// URL says wins (libpq processes keywords in order; later ones override).
struct ConnectParams {
  std::string url;  // libpq URI or key=value string; may hold a password
  std::string application_name = "videogen";
  absl::Duration connect_timeout = absl::Seconds(10);
};

// Blocking connect. The error never contains the URL (it may hold a
// password); libpq's own message names host and port only.
absl::StatusOr<ConnPtr> Connect(const ConnectParams& params);
// Non-blocking connect start (PQconnectStartParams); drive it with
// PQconnectPoll. Null only when libpq is out of memory.
PGconn* StartConnect(const ConnectParams& params);

// absl::Time <-> BIGINT nanoseconds. The infinities map to the int64 limits
// so that comparisons in SQL keep working (a lease until InfinitePast is
// always expired).
int64_t ToNs(absl::Time t);
absl::Time FromNs(int64_t ns);

// `s` as a JSON string literal (quotes included), for jsonb parameters.
void AppendJsonString(std::string* out, std::string_view s);
// `items` as a PostgreSQL array literal of text: {"a","b"}.
std::string TextArrayLiteral(const std::vector<std::string>& items);

}  // namespace videogen::store::pg
