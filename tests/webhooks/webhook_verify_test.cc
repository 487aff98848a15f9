// `videogen webhook verify` (client/webhook_verify.h): the command line
// wiring and the checks, on deliveries signed by the server's own Sign().
#include "client/webhook_verify.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/webhooks/signature.h"

namespace videogen::client {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

class WebhookVerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    secret_ = absl::StrCat(
        "whsec_", absl::Base64Escape("a tenant key 32 bytes long......"));
    timestamp_ = absl::ToUnixSeconds(now_);
    body_ = R"({"type":"TYPE_UPDATE","generation":{"id":"gen-9"}})";
    signature_ = *webhooks::Sign(secret_, "gen-9.4", timestamp_, body_);
    options_.secret = secret_;
    options_.id = "gen-9.4";
    options_.timestamp = absl::StrCat(timestamp_);
    options_.signature = signature_;
  }

  int Run(const std::string& body, absl::Time now) {
    std::istringstream in(body);
    out_.str("");
    err_.str("");
    return RunWebhookVerify(options_, in, out_, err_, now);
  }
  int Run(const std::string& body) { return Run(body, now_); }

  std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/", name);
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  const absl::Time now_ = absl::FromUnixSeconds(1767225600);
  std::string secret_, body_, signature_;
  int64_t timestamp_ = 0;
  WebhookVerifyOptions options_;
  std::ostringstream out_, err_;
};

TEST_F(WebhookVerifyTest, ValidDeliveryExitsZero) {
  EXPECT_EQ(Run(body_), 0) << err_.str();
  EXPECT_THAT(out_.str(), HasSubstr("valid: webhook-id gen-9.4"));
  EXPECT_THAT(err_.str(), IsEmpty());
}

TEST_F(WebhookVerifyTest, TamperedBodyExitsOne) {
  EXPECT_EQ(Run(R"({"type":"TYPE_UPDATE","generation":{"id":"gen-8"}})"), 1);
  EXPECT_THAT(err_.str(), HasSubstr("invalid: none of the 1 v1 signature"));
  EXPECT_THAT(out_.str(), IsEmpty());
}

TEST_F(WebhookVerifyTest, WrongSecretExitsOneAndNeverPrintsTheSecret) {
  options_.secret =
      absl::StrCat("whsec_", absl::Base64Escape("another tenant's key......"));
  EXPECT_EQ(Run(body_), 1);
  EXPECT_THAT(err_.str(), ::testing::Not(HasSubstr(options_.secret)));
  EXPECT_THAT(err_.str(), ::testing::Not(HasSubstr(secret_)));
}

TEST_F(WebhookVerifyTest, AddedNewlineGetsAHint) {
  EXPECT_EQ(Run(body_ + "\n"), 1);
  EXPECT_THAT(err_.str(), HasSubstr("without the body's final newline"));
}

TEST_F(WebhookVerifyTest, StaleTimestampFailsUnlessIgnored) {
  const absl::Time later = now_ + absl::Minutes(10);
  EXPECT_EQ(Run(body_, later), 1);
  EXPECT_THAT(err_.str(), HasSubstr("beyond the tolerance of 5m"));
  options_.tolerance = "15m";
  EXPECT_EQ(Run(body_, later), 0) << err_.str();
  options_.tolerance = "5m";
  options_.ignore_timestamp = true;
  EXPECT_EQ(Run(body_, later), 0) << err_.str();
}

TEST_F(WebhookVerifyTest, HeadersAndBodyFromFiles) {
  options_.id.clear();
  options_.timestamp.clear();
  options_.signature.clear();
  // What `curl -D` writes: a status line, CRLF, other headers, any case.
  options_.headers_file =
      WriteFile("headers.txt",
                absl::StrCat("POST /hook HTTP/1.1\r\nHost: example.com\r\n"
                             "Content-Type: application/json\r\n"
                             "Webhook-Id: gen-9.4\r\nwebhook-timestamp: ",
                             timestamp_, "\r\nWEBHOOK-SIGNATURE: v1a,ignored ",
                             signature_, "\r\n\r\n"));
  options_.body_file = WriteFile("body.json", body_);
  EXPECT_EQ(Run("stdin is not read"), 0) << err_.str();
}

TEST_F(WebhookVerifyTest, FlagsWinOverTheHeadersFile) {
  options_.headers_file = WriteFile(
      "other_headers.txt", "webhook-id: gen-1.1\nwebhook-timestamp: 1\n");
  EXPECT_EQ(Run(body_), 0) << err_.str();
}

TEST_F(WebhookVerifyTest, UsageErrorsExitTwo) {
  options_.id.clear();
  EXPECT_EQ(Run(body_), 2);
  EXPECT_THAT(err_.str(), HasSubstr("webhook-id (--id)"));
  options_.id = "gen-9.4";
  options_.secret = "whsec_***";
  EXPECT_EQ(Run(body_), 2);
  EXPECT_THAT(err_.str(), HasSubstr("not \"whsec_\" followed by base64"));
  options_.secret = secret_;
  options_.body_file = "/nonexistent/body.json";
  EXPECT_EQ(Run(body_), 2);
  options_.body_file = "-";
  options_.tolerance = "soon";
  EXPECT_EQ(Run(body_), 2);
}

TEST(WebhookVerifyCliTest, FlagsAndEnvironmentFillTheOptions) {
  WebhookVerifyOptions options;
  CLI::App app{"test"};
  CLI::App* webhook = app.add_subcommand("webhook", "Webhook tools");
  CLI::App* verify = AddWebhookVerify(*webhook, options);
  setenv("VIDEOGEN_WEBHOOK_SECRET", "whsec_ZnJvbS1lbnY=", 1);
  std::vector<std::string> args = {"webhook",
                                   "verify",
                                   "--id",
                                   "g.2",
                                   "--timestamp",
                                   "1767225600",
                                   "--signature",
                                   "v1,abc",
                                   "--ignore-timestamp",
                                   "--body",
                                   "-"};
  std::reverse(args.begin(), args.end());
  app.parse(args);
  unsetenv("VIDEOGEN_WEBHOOK_SECRET");
  EXPECT_TRUE(*verify);
  EXPECT_EQ(options.secret, "whsec_ZnJvbS1lbnY=");
  EXPECT_EQ(options.id, "g.2");
  EXPECT_EQ(options.timestamp, "1767225600");
  EXPECT_EQ(options.signature, "v1,abc");
  EXPECT_TRUE(options.ignore_timestamp);
  EXPECT_EQ(options.body_file, "-");
  EXPECT_EQ(options.tolerance, "5m");
}

}  // namespace
}  // namespace videogen::client
