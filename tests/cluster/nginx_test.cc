// scripts/cluster.sh nginx-conf against Debian's nginx: the generated config
// loads (`nginx -t`), and nginx started from it proxies gRPC over HTTP/2 to
// live replicas, skipping one that refuses connections. No PostgreSQL: the
// replicas here run on SQLite with --auth=none, each its own island.

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/cluster/harness.h"

namespace videogen::cluster {
namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(NginxConf, GeneratedConfigPassesNginxCheck) {
  TempDir dir("videogen-nginx-conf");
  Process gen({"/bin/bash", Bins().cluster_sh, "nginx-conf",
               dir.path() + "/nginx", "127.0.0.1:18080", "127.0.0.1:18081",
               "127.0.0.1:18082", "127.0.0.1:18083"},
              {}, dir.path() + "/gen");
  ASSERT_EQ(gen.Wait(absl::Seconds(10)), 0) << gen.Stderr();
  const std::string conf = Read(dir.path() + "/nginx/nginx.conf");
  // The parts the scale-out story depends on.
  EXPECT_NE(conf.find("listen 127.0.0.1:18080 http2;"), std::string::npos);
  EXPECT_NE(conf.find("grpc_pass grpc://videogen;"), std::string::npos);
  EXPECT_NE(conf.find("server 127.0.0.1:18083 "), std::string::npos);
  EXPECT_NE(conf.find("grpc_read_timeout 1h;"), std::string::npos);
  EXPECT_EQ(conf.find("/etc/nginx"), std::string::npos);

  Process which({"/bin/bash", Bins().cluster_sh, "nginx-bin"}, {},
                dir.path() + "/which");
  ASSERT_EQ(which.Wait(absl::Seconds(10)), 0) << which.Stderr();
  std::string nginx = which.Stdout();
  nginx.erase(nginx.find_last_not_of("\n") + 1);
  Process check({nginx, "-t", "-p", dir.path() + "/nginx/", "-c",
                 dir.path() + "/nginx/nginx.conf"},
                {}, dir.path() + "/check");
  EXPECT_EQ(check.Wait(absl::Seconds(20)), 0) << check.Stderr();
  EXPECT_NE(check.Stderr().find("test is successful"), std::string::npos)
      << check.Stderr();
}

TEST(NginxConf, ProxiesGrpcAndSkipsARefusingReplica) {
  ClusterOptions o;
  o.replicas = 2;
  o.replica.store = "sqlite";
  o.replica.auth = "none";
  o.sim_flags = {"--queued_for=200ms", "--generating_for=300ms"};
  std::unique_ptr<Cluster> c = Cluster::Start("nginx", o);
  ASSERT_NE(c, nullptr);
  auto stub = c->Stub();
  // Stop replica 2: nginx must send every call to replica 1 (a refused
  // connection moves on to the next server).
  c->replica(1).Stop();
  std::string first_id;
  for (int i = 0; i < 6; ++i) {
    grpc::ClientContext ctx;
    v1::Generation g;
    grpc::Status s = stub->CreateGeneration(
        &ctx, SimpleRequest(absl::StrCat("through nginx ", i)), &g);
    ASSERT_TRUE(s.ok()) << i << ": " << s.error_code() << " "
                        << s.error_message();
    if (i == 0) first_id = g.id();
  }
  // A stream through nginx reaches the end.
  grpc::ClientContext ctx;
  v1::WatchGenerationRequest req;
  req.set_id(first_id);
  auto reader = stub->WatchGeneration(&ctx, req);
  v1::GenerationEvent e;
  v1::Generation last;
  while (reader->Read(&e)) {
    if (e.type() != v1::GenerationEvent::TYPE_HEARTBEAT) {
      EXPECT_GT(e.generation().revision(), last.revision());
      last = e.generation();
    }
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(last.done());
  EXPECT_EQ(last.state(), v1::Generation::STATE_COMPLETED);
  c->KeepLogsIfFailed();
}

}  // namespace
}  // namespace videogen::cluster
