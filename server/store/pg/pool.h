#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/store/pg/pq.h"

namespace videogen::store::pg {

// A SQL text with a stable name, prepared lazily on each connection the
// first time that connection runs it.
struct Statement {
  std::string name;
  std::string sql;
};

// One pooled connection. Not thread-safe: only the thread holding its
// Pool::Lease uses it. Results come back in binary format (see Row).
class Connection {
 public:
  Connection(ConnPtr conn, const std::vector<Statement>* statements);

  // Runs statement `id` (an index into the pool's table).
  absl::StatusOr<Result> Run(int id, Params& params, std::string_view doing);
  // Runs ad-hoc SQL as an unnamed statement (for queries of many shapes).
  absl::StatusOr<Result> RunSql(const std::string& sql, Params& params,
                                std::string_view doing);
  // Runs a parameterless command such as BEGIN or COMMIT.
  absl::Status Exec(const char* sql);

  // True once the server went away or a transaction was left open: the
  // pool then drops this connection instead of reusing it.
  bool Unusable() const;
  // True when the server closed this idle connection (checked without
  // blocking before it is handed out again).
  bool ClosedByServer();
  PGconn* raw() { return conn_.get(); }

 private:
  absl::StatusOr<Result> Finish(PGresult* result, std::string_view doing);

  ConnPtr conn_;
  const std::vector<Statement>* statements_;
  std::vector<bool> prepared_;
};

// Up to `size` connections to one database, opened on demand and reused
// LIFO (so a quiet store keeps few warm). A connection that broke is dropped
// on release and replaced by the next Acquire, so the pool heals after the
// server restarts. Thread-safe; Acquire blocks while all are leased.
class Pool {
 public:
  // `setup` runs once on every new connection (SET statement_timeout ...).
  Pool(ConnectParams params, int size, std::vector<Statement> statements,
       std::vector<std::string> setup);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Exclusive use of one connection until destroyed.
  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<Connection> conn)
        : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (conn_ != nullptr) pool_->Release(std::move(conn_));
    }
    Connection* operator->() { return conn_.get(); }
    Connection& operator*() { return *conn_; }

   private:
    Pool* pool_;
    std::unique_ptr<Connection> conn_;
  };

  // UNAVAILABLE when a new connection cannot be opened.
  absl::StatusOr<Lease> Acquire();

  // Connections open right now (idle + leased). For tests and metrics.
  int open() const;

 private:
  void Release(std::unique_ptr<Connection> conn);
  absl::StatusOr<std::unique_ptr<Connection>> Open();

  const ConnectParams params_;
  const int size_;
  const std::vector<Statement> statements_;
  const std::vector<std::string> setup_;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  // Idle, leased and being opened.
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace videogen::store::pg
