// What deploy/k8s/overlays/postgres relies on: a replica's readiness (the
// gRPC health of service videogen.v1.VideoGeneration) goes NOT_SERVING while
// it cannot reach PostgreSQL and back to SERVING when it can, while liveness
// (service "") stays SERVING throughout. The database is made unreachable
// for this test's own database only (ALLOW_CONNECTIONS false, sessions
// terminated), so the shared test server keeps running.

#include <gtest/gtest.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/generic/generic_stub.h"
#include "tests/cluster/harness.h"

namespace videogen::cluster {
namespace {

constexpr char kService[] = "videogen.v1.VideoGeneration";

// grpc.health.v1.Health/Check with a hand-encoded request (field 1 =
// service); "SERVING", "NOT_SERVING" or the RPC error.
std::string Health(const std::shared_ptr<grpc::Channel>& channel,
                   const std::string& service) {
  grpc::GenericStub stub(channel);
  std::string request;
  if (!service.empty()) {
    request = absl::StrCat(
        "\x0a", std::string(1, static_cast<char>(service.size())), service);
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  grpc::CompletionQueue cq;
  auto call =
      stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", in, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&out, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) return absl::StrCat("error ", status.error_code());
  std::vector<grpc::Slice> slices;
  out.Dump(&slices);
  std::string body;
  for (const auto& s : slices) {
    body.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  if (body == std::string("\x08\x01", 2)) return "SERVING";
  if (body == std::string("\x08\x02", 2)) return "NOT_SERVING";
  return "unexpected answer";
}

// Waits until Health(service) == want; returns how long it took, or
// nullopt on timeout.
std::optional<absl::Duration> WaitHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    const std::string& want, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  while (absl::Now() - start < timeout) {
    if (Health(channel, service) == want) return absl::Now() - start;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return std::nullopt;
}

TEST(ClusterReadiness, FollowsTheDatabaseLivenessDoesNot) {
  ClusterOptions o;
  o.replicas = 1;
  o.nginx = false;
  o.replica.auth = "none";
  std::unique_ptr<Cluster> c = Cluster::Start("readiness", o);
  ASSERT_NE(c, nullptr);
  auto channel = NewChannel(c->replica(0).address(), 1);
  EXPECT_EQ(Health(channel, kService), "SERVING");
  EXPECT_EQ(Health(channel, ""), "SERVING");

  // Cut this database off: no new sessions, the replica's sessions ended.
  const std::string db = c->db().name();
  c->db().ServerExec(
      absl::StrCat("ALTER DATABASE ", db, " WITH ALLOW_CONNECTIONS false"));
  c->db().ServerExec(
      absl::StrCat("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = '",
                   db, "' AND application_name LIKE 'videogen%'"));
  auto down = WaitHealth(channel, kService, "NOT_SERVING", absl::Seconds(30));
  EXPECT_TRUE(down.has_value()) << "readiness never went NOT_SERVING";
  EXPECT_EQ(Health(channel, ""), "SERVING") << "liveness must not follow";

  c->db().ServerExec(
      absl::StrCat("ALTER DATABASE ", db, " WITH ALLOW_CONNECTIONS true"));
  auto up = WaitHealth(channel, kService, "SERVING", absl::Seconds(30));
  EXPECT_TRUE(up.has_value()) << "readiness never came back";
  EXPECT_EQ(Health(channel, ""), "SERVING");
  if (down && up) {
    std::cout << "readiness: NOT_SERVING " << *down
              << " after the database went away, SERVING " << *up
              << " after it came back\n";
  }
  c->KeepLogsIfFailed();
}

}  // namespace
}  // namespace videogen::cluster
