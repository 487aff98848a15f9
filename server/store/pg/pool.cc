#include "server/store/pg/pool.h"

#include <poll.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace videogen::store::pg {

Connection::Connection(ConnPtr conn, const std::vector<Statement>* statements)
    : conn_(std::move(conn)),
      statements_(statements),
      prepared_(statements->size(), false) {}

absl::StatusOr<Result> Connection::Finish(PGresult* raw,
                                          std::string_view doing) {
  Result result(raw);
  if (absl::Status s = CheckResult(result.get(), conn_.get(), doing); !s.ok()) {
    return s;
  }
  return result;
}

absl::StatusOr<Result> Connection::Run(int id, Params& params,
                                       std::string_view doing) {
  const Statement& stmt = (*statements_)[id];
  if (!prepared_[id]) {
    Result prep(PQprepare(conn_.get(), stmt.name.c_str(), stmt.sql.c_str(), 0,
                          nullptr));
    if (absl::Status s = CheckResult(prep.get(), conn_.get(),
                                     absl::StrCat("preparing ", stmt.name));
        !s.ok()) {
      return s;
    }
    prepared_[id] = true;
  }
  return Finish(PQexecPrepared(conn_.get(), stmt.name.c_str(), params.size(),
                               params.values(), params.lengths(),
                               params.formats(), /*resultFormat=*/1),
                doing);
}

absl::StatusOr<Result> Connection::RunSql(const std::string& sql,
                                          Params& params,
                                          std::string_view doing) {
  return Finish(PQexecParams(conn_.get(), sql.c_str(), params.size(), nullptr,
                             params.values(), params.lengths(),
                             params.formats(), /*resultFormat=*/1),
                doing);
}

absl::Status Connection::Exec(const char* sql) {
  Result result(PQexec(conn_.get(), sql));
  return CheckResult(result.get(), conn_.get(), sql);
}

bool Connection::ClosedByServer() {
  // An idle connection has nothing to read, unless the server closed it
  // (restart, failover, pg_terminate_backend): then the socket is readable
  // and consuming the input turns the status to CONNECTION_BAD. One
  // non-blocking poll saves the first call after a restart from failing.
  pollfd fd = {PQsocket(conn_.get()), POLLIN, 0};
  if (fd.fd < 0) return true;
  if (::poll(&fd, 1, 0) > 0) {
    PQconsumeInput(conn_.get());
    while (PGnotify* n = PQnotifies(conn_.get())) PQfreemem(n);
  }
  return PQstatus(conn_.get()) != CONNECTION_OK;
}

bool Connection::Unusable() const {
  return PQstatus(conn_.get()) != CONNECTION_OK ||
         PQtransactionStatus(conn_.get()) != PQTRANS_IDLE;
}

Pool::Pool(ConnectParams params, int size, std::vector<Statement> statements,
           std::vector<std::string> setup)
    : params_(std::move(params)),
      size_(size < 1 ? 1 : size),
      statements_(std::move(statements)),
      setup_(std::move(setup)) {}

Pool::~Pool() {
  absl::MutexLock lock(&mu_);
  idle_.clear();  // every Lease must be gone by now
}

absl::StatusOr<std::unique_ptr<Connection>> Pool::Open() {
  absl::StatusOr<ConnPtr> conn = Connect(params_);
  if (!conn.ok()) return conn.status();
  for (const std::string& sql : setup_) {
    Result r(PQexec(conn->get(), sql.c_str()));
    if (absl::Status s = CheckResult(r.get(), conn->get(),
                                     "setting up a "
                                     "connection");
        !s.ok()) {
      return s;
    }
  }
  return std::make_unique<Connection>(std::move(*conn), &statements_);
}

absl::StatusOr<Pool::Lease> Pool::Acquire() {
  while (true) {
    std::unique_ptr<Connection> conn;
    {
      absl::MutexLock lock(&mu_);
      auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !idle_.empty() || open_ < size_;
      };
      mu_.Await(absl::Condition(&available));
      if (idle_.empty()) {
        ++open_;  // reserve the slot while connecting without the lock
      } else {
        conn = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (conn == nullptr) {
      absl::StatusOr<std::unique_ptr<Connection>> opened = Open();
      if (!opened.ok()) {
        absl::MutexLock lock(&mu_);
        --open_;
        return opened.status();
      }
      return Lease(this, std::move(*opened));
    }
    if (conn->ClosedByServer()) {
      conn.reset();
      absl::MutexLock lock(&mu_);
      --open_;
      continue;  // take another, or open a fresh one
    }
    return Lease(this, std::move(conn));
  }
}

void Pool::Release(std::unique_ptr<Connection> conn) {
  if (conn->Unusable()) {
    conn.reset();  // PQfinish outside the lock
    absl::MutexLock lock(&mu_);
    --open_;
    return;
  }
  absl::MutexLock lock(&mu_);
  idle_.push_back(std::move(conn));
}

int Pool::open() const {
  absl::MutexLock lock(&mu_);
  return open_;
}

}  // namespace videogen::store::pg
