#pragma once

// A fresh database per test on the PostgreSQL server named by
// VIDEOGEN_TEST_DATABASE_URL (scripts/pg.sh start DIR prints one), so tests
// are independent and may run in parallel. Without the variable a test
// FAILS (never skips): these tests are only registered when PostgreSQL is
// meant to be there (VIDEOGEN_POSTGRES_TESTS in tests/pgstore and
// tests/cluster, whose harness uses this class too).

#include <libpq-fe.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace videogen::store::pgtest {

class TestDatabase {
 public:
  // Creates the database. On any failure it records a gtest failure that
  // says what to do and returns nullptr.
  static std::unique_ptr<TestDatabase> Create();
  // Drops the database (WITH (FORCE): lingering sessions go too) and any
  // role made by MakeRole.
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  // libpq connection string for the new database, as the server's
  // superuser (or, with `user`, as that role).
  std::string url(const std::string& user = "") const;
  const std::string& name() const { return name_; }

  // A superuser connection to the new database, for the test's own SQL.
  PGconn* admin() { return admin_; }

  // Runs `sql` on admin(); returns every row, each a vector of text
  // columns. Fails the test (and returns an empty vector) on error.
  std::vector<std::vector<std::string>> Rows(const std::string& sql);
  // The first column of every row.
  std::vector<std::string> Query(const std::string& sql);
  // A single value: the first column of the first row ("" when none).
  std::string Scalar(const std::string& sql);
  // Runs `sql` on a new connection to the server's own database (the base
  // URL), for what cannot run inside this one (ALTER DATABASE on it).
  void ServerExec(const std::string& sql);

  // Creates a LOGIN role (non-superuser) that owns this database, so a
  // store connecting as it can migrate the schema. Returns its name.
  std::string MakeRole();

 private:
  TestDatabase(std::string base_url, std::string name, PGconn* admin)
      : base_url_(std::move(base_url)), name_(std::move(name)), admin_(admin) {}

  const std::string base_url_;
  const std::string name_;
  PGconn* admin_;
  std::vector<std::string> roles_;
};

}  // namespace videogen::store::pgtest
