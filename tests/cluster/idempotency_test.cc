// Issue 16: 20 concurrent creates with one request_id, spread over the three
// replicas, make one generation and one upstream job; every caller gets that
// generation (never ALREADY_EXISTS for identical parameters).

#include <gtest/gtest.h>

#include <iostream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "tests/cluster/harness.h"

namespace videogen::cluster {
namespace {

constexpr int kCallers = 20;

// Fires kCallers CreateGeneration calls at once, caller i on stubs[i % n],
// each on its own connection. Returns the ids answered.
std::vector<std::string> Race(
    std::vector<std::unique_ptr<v1::VideoGeneration::Stub>>& stubs,
    const std::string& key, const v1::GenerateRequest& request) {
  std::vector<std::string> ids(kCallers);
  std::vector<std::string> errors(kCallers);
  absl::Barrier* start = new absl::Barrier(kCallers);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      grpc::ClientContext ctx;
      Authorize(&ctx, key);
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
      v1::Generation g;
      if (start->Block()) delete start;
      grpc::Status s =
          stubs[i % stubs.size()]->CreateGeneration(&ctx, request, &g);
      if (s.ok()) {
        ids[i] = g.id();
      } else {
        errors[i] = absl::StrCat(s.error_code(), ": ", s.error_message());
      }
    });
  }
  for (auto& t : callers) t.join();
  for (int i = 0; i < kCallers; ++i) {
    EXPECT_EQ(errors[i], "") << "caller " << i;
  }
  return ids;
}

// Waits until generation `id` is done in the database.
void WaitGenerationDone(TestDatabase& db, const std::string& id) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (db.Scalar(absl::StrCat("SELECT done FROM generations WHERE id = '", id,
                                "'")) != "t") {
    ASSERT_LT(absl::Now(), deadline) << id << " never finished";
    absl::SleepFor(absl::Milliseconds(100));
  }
}

class ClusterIdempotency : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterOptions o;
    o.replicas = 3;
    o.sim_flags = {"--queued_for=500ms", "--generating_for=1s"};
    o.replica.poll_initial_delay = absl::Milliseconds(200);
    o.replica.poll_interval = absl::Milliseconds(300);
    cluster_ = Cluster::Start("idempotency", o);
    ASSERT_NE(cluster_, nullptr);
  }
  void TearDown() override {
    if (cluster_) cluster_->KeepLogsIfFailed();
  }

  // One request_id raced by kCallers callers over `stubs`: one generation,
  // one job, every caller answered with it.
  void ExpectOne(std::vector<std::unique_ptr<v1::VideoGeneration::Stub>> stubs,
                 const std::string& request_id) {
    v1::GenerateRequest req = SimpleRequest("one request, many callers");
    req.set_request_id(request_id);
    const std::vector<std::string> ids = Race(stubs, cluster_->key(), req);
    const std::set<std::string> distinct(ids.begin(), ids.end());
    ASSERT_EQ(distinct.size(), 1u) << "callers got different generations";
    const std::string id = *distinct.begin();
    ASSERT_FALSE(id.empty());
    EXPECT_EQ(cluster_->db().Scalar(absl::StrCat(
                  "SELECT count(*) FROM generations WHERE request_id = '",
                  request_id, "'")),
              "1");
    // Finished, so a late second submit would have shown up by now.
    WaitGenerationDone(cluster_->db(), id);
    const UpstreamJobs jobs = JobsByGeneration(cluster_->sim().Stats());
    EXPECT_EQ(jobs.jobs.count(id) ? jobs.jobs.at(id) : 0, 1)
        << "upstream jobs for " << id;
  }

  std::unique_ptr<Cluster> cluster_;
};

TEST_F(ClusterIdempotency, RacingCreatesSpreadOverReplicasMakeOneJob) {
  std::vector<std::unique_ptr<v1::VideoGeneration::Stub>> stubs;
  for (int i = 0; i < kCallers; ++i) {
    // Caller i straight to replica i % 3, on a connection of its own.
    stubs.push_back(v1::VideoGeneration::NewStub(
        NewChannel(cluster_->replica(i % 3).address(), 200 + i)));
  }
  ExpectOne(std::move(stubs), "race-direct");
  EXPECT_EQ(cluster_->sim().Stats().value("submits", 0), 1);
}

TEST_F(ClusterIdempotency, RacingCreatesThroughNginxMakeOneJob) {
  std::vector<std::unique_ptr<v1::VideoGeneration::Stub>> stubs;
  for (int i = 0; i < kCallers; ++i) {
    stubs.push_back(
        v1::VideoGeneration::NewStub(NewChannel(cluster_->address(), 300 + i)));
  }
  ExpectOne(std::move(stubs), "race-proxy");
  EXPECT_EQ(cluster_->sim().Stats().value("submits", 0), 1);
}

}  // namespace
}  // namespace videogen::cluster
