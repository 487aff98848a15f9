#include "tests/pgstore/postgres_test_db.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace videogen::store::pgtest {
namespace {

constexpr char kEnv[] = "VIDEOGEN_TEST_DATABASE_URL";

// 'value' quoted for a libpq key=value connection string.
std::string Quote(const std::string& v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// `base` (URI or key=value) with dbname (and, if given, user) replaced.
std::string WithDatabase(const std::string& base, const std::string& dbname,
                         const std::string& user) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(base.c_str(), &err);
  if (opts == nullptr) {
    if (err) PQfreemem(err);
    return "";
  }
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    const std::string key = o->keyword;
    if (key == "dbname" || (key == "user" && !user.empty())) continue;
    if (o->val == nullptr || *o->val == '\0') continue;
    absl::StrAppend(&out, key, "=", Quote(o->val), " ");
  }
  PQconninfoFree(opts);
  absl::StrAppend(&out, "dbname=", Quote(dbname));
  if (!user.empty()) absl::StrAppend(&out, " user=", Quote(user));
  return out;
}

PGconn* ConnectOrFail(const std::string& conninfo) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    ADD_FAILURE() << "cannot connect to the test PostgreSQL: "
                  << PQerrorMessage(c);
    PQfinish(c);
    return nullptr;
  }
  return c;
}

bool Exec(PGconn* c, const std::string& sql) {
  PGresult* r = PQexec(c, sql.c_str());
  const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK ||
                  PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok) ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
  PQclear(r);
  return ok;
}

std::string UniqueName(const char* prefix) {
  static std::atomic<int> counter{0};
  std::random_device rd;
  return absl::StrCat(prefix, ::getpid(), "_", counter.fetch_add(1), "_",
                      rd() % 1000000);
}

}  // namespace

std::unique_ptr<TestDatabase> TestDatabase::Create() {
  const char* base = std::getenv(kEnv);
  if (base == nullptr || *base == '\0') {
    ADD_FAILURE() << kEnv
                  << " is not set: these tests need a PostgreSQL server. "
                     "Run `scripts/pg.sh start DIR` and export "
                     "VIDEOGEN_TEST_DATABASE_URL=$(cat DIR/url), or build "
                     "with -DVIDEOGEN_POSTGRES_TESTS=OFF to leave them out.";
    return nullptr;
  }
  PGconn* root = ConnectOrFail(base);
  if (root == nullptr) return nullptr;
  const std::string name = UniqueName("vgtest_");
  const bool made = Exec(root, absl::StrCat("CREATE DATABASE ", name));
  PQfinish(root);
  if (!made) return nullptr;
  PGconn* admin = ConnectOrFail(WithDatabase(base, name, ""));
  if (admin == nullptr) return nullptr;
  Exec(admin, "SET client_min_messages = warning");
  return std::unique_ptr<TestDatabase>(new TestDatabase(base, name, admin));
}

TestDatabase::~TestDatabase() {
  PQfinish(admin_);
  PGconn* root = PQconnectdb(base_url_.c_str());
  if (PQstatus(root) == CONNECTION_OK) {
    PQclear(PQexec(
        root, absl::StrCat("DROP DATABASE IF EXISTS ", name_, " WITH (FORCE)")
                  .c_str()));
    for (const std::string& role : roles_) {
      PQclear(PQexec(root, absl::StrCat("DROP ROLE IF EXISTS ", role).c_str()));
    }
  }
  PQfinish(root);
}

std::string TestDatabase::url(const std::string& user) const {
  return WithDatabase(base_url_, name_, user);
}

std::vector<std::vector<std::string>> TestDatabase::Rows(
    const std::string& sql) {
  std::vector<std::vector<std::string>> rows;
  PGresult* r = PQexec(admin_, sql.c_str());
  if (PQresultStatus(r) != PGRES_TUPLES_OK &&
      PQresultStatus(r) != PGRES_COMMAND_OK) {
    ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
  } else {
    for (int i = 0; i < PQntuples(r); ++i) {
      std::vector<std::string> row;
      for (int j = 0; j < PQnfields(r); ++j) row.push_back(PQgetvalue(r, i, j));
      rows.push_back(std::move(row));
    }
  }
  PQclear(r);
  return rows;
}

std::vector<std::string> TestDatabase::Query(const std::string& sql) {
  std::vector<std::string> out;
  for (std::vector<std::string>& row : Rows(sql)) {
    out.push_back(row.empty() ? "" : std::move(row[0]));
  }
  return out;
}

std::string TestDatabase::Scalar(const std::string& sql) {
  std::vector<std::string> rows = Query(sql);
  return rows.empty() ? "" : rows[0];
}

void TestDatabase::ServerExec(const std::string& sql) {
  PGconn* root = ConnectOrFail(base_url_);
  if (root == nullptr) return;
  Exec(root, sql);
  PQfinish(root);
}

std::string TestDatabase::MakeRole() {
  const std::string role = UniqueName("vgrole_");
  Query(absl::StrCat("CREATE ROLE ", role, " LOGIN"));
  Query(absl::StrCat("ALTER DATABASE ", name_, " OWNER TO ", role));
  roles_.push_back(role);
  return role;
}

}  // namespace videogen::store::pgtest
