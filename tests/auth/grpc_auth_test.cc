#include "server/auth/grpc_auth.h"

#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::auth {
namespace {

using ::testing::HasSubstr;

// GetGeneration answers with the quota error the request's name selects and
// remembers the authorization it saw.
class QuotaService final : public v1::VideoGeneration::CallbackService {
 public:
  grpc::ServerUnaryReactor* GetGeneration(
      grpc::CallbackServerContext* context,
      const v1::GetGenerationRequest* request, v1::Generation*) override {
    {
      absl::MutexLock lock(&mu_);
      authorization_ = AuthorizationOf(*context);
    }
    grpc::Status status;
    if (request->id() == "concurrent") {
      status = QuotaExceededStatus(
          absl::ResourceExhaustedError("max_concurrent: 5 running"),
          "tenant:acme", "max_concurrent", absl::ZeroDuration());
    } else {
      status = QuotaExceededStatus(
          absl::ResourceExhaustedError(
              "video_seconds_budget: 20 of 20 seconds used"),
          "tenant:acme", "video_seconds_budget", absl::Milliseconds(41'200));
    }
    auto* reactor = context->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

  std::string authorization() {
    absl::MutexLock lock(&mu_);
    return authorization_;
  }

 private:
  absl::Mutex mu_;
  std::string authorization_ ABSL_GUARDED_BY(mu_);
};

class GrpcAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    stub_ = v1::VideoGeneration::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                            grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  grpc::Status Call(const std::string& name, const std::string& authorization,
                    grpc::ClientContext* ctx) {
    if (!authorization.empty())
      ctx->AddMetadata("authorization", authorization);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(10));
    v1::GetGenerationRequest req;
    req.set_id(name);
    v1::Generation out;
    return stub_->GetGeneration(ctx, req, &out);
  }

  QuotaService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::VideoGeneration::Stub> stub_;
};

TEST_F(GrpcAuthTest, AuthorizationOfReadsTheMetadata) {
  grpc::ClientContext with;
  Call("budget", "Bearer vgk_test", &with);
  EXPECT_EQ(service_.authorization(), "Bearer vgk_test");
  grpc::ClientContext without;
  Call("budget", "", &without);
  EXPECT_EQ(service_.authorization(), "");
}

TEST_F(GrpcAuthTest, ClientParsesQuotaDetailsFromTheTrailer) {
  grpc::ClientContext ctx;
  grpc::Status status = Call("budget", "", &ctx);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("video_seconds_budget"));
  EXPECT_THAT(status.error_message(), HasSubstr("retry in 42s"));

  // What arrived in grpc-status-details-bin, decoded as a client would.
  ASSERT_FALSE(status.error_details().empty());
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(details.message(), status.error_message());

  google::rpc::QuotaFailure quota;
  google::rpc::RetryInfo retry;
  google::rpc::ErrorInfo info;
  int found = 0;
  for (const google::protobuf::Any& any : details.details()) {
    if (any.Is<google::rpc::QuotaFailure>()) found += any.UnpackTo(&quota);
    if (any.Is<google::rpc::RetryInfo>()) found += any.UnpackTo(&retry);
    if (any.Is<google::rpc::ErrorInfo>()) found += any.UnpackTo(&info);
  }
  ASSERT_EQ(found, 3);
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(quota.violations(0).subject(), "tenant:acme");
  EXPECT_THAT(quota.violations(0).description(),
              HasSubstr("video_seconds_budget"));
  EXPECT_EQ(retry.retry_delay().seconds(), 42);  // 41.2 s rounded up
  EXPECT_EQ(retry.retry_delay().nanos(), 0);
  EXPECT_EQ(info.reason(), "QUOTA_EXCEEDED");
  EXPECT_EQ(info.domain(), "videogen");
  EXPECT_EQ(info.metadata().at("limit"), "video_seconds_budget");
}

TEST_F(GrpcAuthTest, NoRetryInfoWhenTheResetTimeIsUnknown) {
  grpc::ClientContext ctx;
  grpc::Status status = Call("concurrent", "", &ctx);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), Not(HasSubstr("retry in")));
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  bool has_quota = false, has_retry = false;
  for (const google::protobuf::Any& any : details.details()) {
    has_quota |= any.Is<google::rpc::QuotaFailure>();
    has_retry |= any.Is<google::rpc::RetryInfo>();
  }
  EXPECT_TRUE(has_quota);
  EXPECT_FALSE(has_retry);
}

TEST(QuotaExceededStatusTest, MessageAlwaysNamesTheLimit) {
  grpc::Status s =
      QuotaExceededStatus(absl::ResourceExhaustedError("too many"), "tenant:a",
                          "creates_per_minute", absl::Seconds(12));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "creates_per_minute: too many (retry in 12s)");
}

TEST(LimitNamedInTest, FindsTheLimit) {
  EXPECT_EQ(LimitNamedIn("max_concurrent (5) reached"), "max_concurrent");
  EXPECT_EQ(LimitNamedIn("creates_per_minute: 30"), "creates_per_minute");
  EXPECT_EQ(LimitNamedIn("video_seconds_budget spent"), "video_seconds_budget");
  EXPECT_EQ(LimitNamedIn("disk full"), "");
}

}  // namespace
}  // namespace videogen::auth
