// The store conformance suite: one set of gtest cases that every
// store::Store implementation must pass (MemoryStore, SqliteStore, the
// PostgreSQL store, ...). It pins down the behaviour of store.h, plus the few
// choices store.h leaves open (listed below), so the tracker can rely on the
// same semantics whichever store it runs on.
//
// HOW TO USE IT for a new store, in one test .cc file of that store:
//
//   #include "tests/store/store_conformance.h"
//
//   // Called once per test case; must return an EMPTY store (no
//   // generations, keys, deliveries or samples). Returning nullptr skips
//   // the case (e.g. no database server available), with a message.
//   std::unique_ptr<videogen::store::Store> MakeFreshPostgresStore() {...}
//
//   VIDEOGEN_INSTANTIATE_STORE_CONFORMANCE(Postgres, MakeFreshPostgresStore);
//
// and in that test's CMakeLists.txt (the cases live in an OBJECT library,
// so the linker keeps their registrations):
//
//   target_link_libraries(my_store_test PRIVATE videogen_store_conformance
//                         GTest::gmock GTest::gtest_main)
//
// The macro's first argument is the instantiation prefix
// (`Postgres/StoreConformanceTest.CasConflictOneWriterWins/0`), so
// `--gtest_filter='Postgres/*'` runs one store's cases. The store is
// destroyed at the end of each case, after SetListener(nullptr).
//
// Nothing here sleeps to assert timing: leases and quota windows take
// explicit times, and feed tests wait (up to 10 s) for what must arrive, so
// a store whose feed is asynchronous (LISTEN/NOTIFY) passes too.
//
// CHOICES THIS SUITE FIXES (beyond the comments in server/store/store.h):
//  - Insert stores version 1 whatever record.version says; owner and
//    lease_until are stored as given (the creating replica may hold the
//    lease from the start).
//  - Admission's "now" is the new record's generation.create_time:
//    creates_per_minute counts the tenant's stored generations with
//    create_time > now - 60 s; video_seconds_budget sums
//    request.duration_seconds of the tenant's generations with create_time
//    > now - budget_period and state != FAILED, plus the new one's.
//    The (tenant, request_id) check comes before the admission checks: a
//    retried create joins its generation even when the tenant is at a limit.
//  - An Insert whose generation.id is taken is ALREADY_EXISTS too, with
//    `*existing` set to that record.
//  - Update and Delete of a missing id: Update NOT_FOUND, Delete OK.
//  - ClaimActive returns oldest create_time first.
//  - Get, GetByRequestId, List and ClaimActive merge the stored webhook
//    status into generation.webhook_status; a webhook_status written
//    through Insert/Update is ignored (SetWebhookStatus owns it).
//    SetWebhookStatus on a missing id is NOT_FOUND.
//  - Update assigns Delivery::seq (the caller's value is ignored); seqs
//    grow with insertion order. Deliveries go with their generation on
//    Delete and PurgeTerminalBefore.
//  - FinishDelivery and RetryDelivery of an unknown seq are OK (it was
//    dropped or purged meanwhile). ClaimDeliveries returns lowest seq first.
//  - DropDeliveries sets Record::webhooks_gone (no new version or revision;
//    an unknown id is OK); every later Update leaves that generation's
//    deliveries out, also one from a copy read before, and racing ones
//    leave none queued. Insert and Update ignore the caller's
//    webhooks_gone; Get and ClaimActive report it.
//  - InsertKey: ALREADY_EXISTS when key_id or key_hash is taken.
//    FindKeyByHash returns revoked keys too (with `revoked` set).
//  - The feed announces each committed revision rise (and each Insert with
//    revision > 0) with `tenant` set; `generation`, when set, is the
//    committed one. Nothing for refused writes, revision-0 inserts, or
//    writes that keep the revision. Per generation, revisions never go
//    back (repeats are allowed). The listener may call into the store
//    (Get, SetWebhookStatus) and sees at least the announced revision.
//  - OutboxStats on an empty outbox: count 0 (the time is InfinitePast in
//    the in-process stores; not checked).
//  - Samples: a store keeps the newest kSamplesKept (500) samples per
//    (model, duration_seconds) and drops older ones, so the table stays
//    bounded; RecentSamples orders by `completed`, newest first.
#pragma once

#include <functional>
#include <memory>

#include "gtest/gtest.h"
#include "server/store/store.h"

namespace videogen::store::conformance {

// How many estimator samples a store keeps per (model, duration_seconds).
inline constexpr int kSamplesKept = 500;

// Makes a fresh, empty store for one test case; nullptr skips the case.
using StoreFactory = std::function<std::unique_ptr<Store>()>;

// The fixture of every conformance case. Thread-compatible like any gtest
// fixture; the cases themselves start threads against `store_`.
class StoreConformanceTest : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override;
  void TearDown() override;

  std::unique_ptr<Store> store_;
};

}  // namespace videogen::store::conformance

// Instantiates every conformance case for the store that `factory` (anything
// convertible to StoreFactory) makes. Use once per store, at namespace scope
// outside namespace videogen::store::conformance (gtest pastes the suite
// name into identifiers, so the macro brings it in with a using-alias).
#define VIDEOGEN_INSTANTIATE_STORE_CONFORMANCE(prefix, factory) \
  using StoreConformanceTest =                                  \
      ::videogen::store::conformance::StoreConformanceTest;     \
  INSTANTIATE_TEST_SUITE_P(                                     \
      prefix, StoreConformanceTest,                             \
      ::testing::Values(                                        \
          ::videogen::store::conformance::StoreFactory(factory)))
