// The store conformance suite (tests/store/store_conformance.h) against
// PostgresStore on a real server: every case gets a fresh database on the
// server named by VIDEOGEN_TEST_DATABASE_URL. Without that variable each
// case FAILS (the factory records the failure before returning nullptr).
#include <memory>
#include <utility>

#include "gtest/gtest.h"
#include "server/store/postgres_store.h"
#include "tests/pgstore/postgres_test_db.h"
#include "tests/store/store_conformance.h"

namespace videogen::store {
namespace {

// The current case's database. The suite destroys a case's store at the
// end of the case, so the previous database is idle by the time the next
// factory call drops it; the environment drops the last one.
std::unique_ptr<pgtest::TestDatabase>& CurrentDatabase() {
  static auto* db = new std::unique_ptr<pgtest::TestDatabase>();
  return *db;
}

class DropLastDatabase : public ::testing::Environment {
 public:
  void TearDown() override { CurrentDatabase().reset(); }
};
const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new DropLastDatabase);

std::unique_ptr<Store> MakeFreshPostgresStore() {
  CurrentDatabase().reset();
  CurrentDatabase() = pgtest::TestDatabase::Create();
  if (CurrentDatabase() == nullptr) return nullptr;  // failure recorded
  PostgresOptions options;
  options.application_name = "conformance";
  absl::StatusOr<std::unique_ptr<PostgresStore>> store =
      PostgresStore::Open(CurrentDatabase()->url(), options);
  if (!store.ok()) {
    ADD_FAILURE() << "PostgresStore::Open: " << store.status();
    return nullptr;
  }
  return std::move(*store);
}

}  // namespace

VIDEOGEN_INSTANTIATE_STORE_CONFORMANCE(Postgres, MakeFreshPostgresStore);

}  // namespace videogen::store
