// Standard Webhooks signing and verification (server/webhooks/signature.h).
#include "server/webhooks/signature.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::webhooks {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The published Standard Webhooks test vector (the same one the Svix and
// standard-webhooks libraries' own tests sign, e.g. svix-webhooks' PHP
// testSignFunctionWorks); also checked with Python's hmac.
constexpr char kSpecSecret[] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
constexpr char kSpecId[] = "msg_p5jXN8AQM9LWM0D4loKWxJek";
constexpr int64_t kSpecTimestamp = 1614265330;
constexpr char kSpecBody[] = R"({"test": 2432232314})";
constexpr char kSpecSignature[] =
    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

TEST(SignatureTest, MatchesTheSpecVector) {
  absl::StatusOr<std::string> sig =
      Sign(kSpecSecret, kSpecId, kSpecTimestamp, kSpecBody);
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ(*sig, kSpecSignature);
}

TEST(SignatureTest, PrefixIsOptional) {
  absl::StatusOr<std::string> with = Sign(kSpecSecret, kSpecId, 1, "x");
  absl::StatusOr<std::string> without =
      Sign(absl::StripPrefix(kSpecSecret, "whsec_"), kSpecId, 1, "x");
  ASSERT_TRUE(with.ok());
  ASSERT_TRUE(without.ok());
  EXPECT_EQ(*with, *without);
}

// Runs Python's hmac on the same input, as a second implementation.
std::string PythonSignature(const std::string& secret, const std::string& id,
                            int64_t ts, const std::string& body) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/webhook_body_", getpid());
  {
    std::ofstream out(path, std::ios::binary);
    out << body;
  }
  const std::string cmd = absl::StrCat(
      "/usr/bin/python3 -c '"
      "import base64,hashlib,hmac,sys;"
      "k=base64.b64decode(sys.argv[1].split(\"_\",1)[1]);"
      "m=(sys.argv[2]+\".\"+sys.argv[3]+\".\").encode()+open(sys.argv[4],"
      "\"rb\").read();"
      "print(\"v1,\"+base64.b64encode(hmac.new(k,m,hashlib.sha256).digest())."
      "decode())"
      "' ",
      secret, " ", id, " ", ts, " ", path);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return "";
  char buf[256] = {};
  std::string out;
  while (fgets(buf, sizeof(buf), pipe) != nullptr) out += buf;
  pclose(pipe);
  std::remove(path.c_str());
  return std::string(absl::StripSuffix(out, "\n"));
}

TEST(SignatureTest, AgreesWithPythonHmacOnAnEventBody) {
  const std::string secret =
      absl::StrCat("whsec_", absl::Base64Escape("0123456789abcdef0123456789"));
  const std::string body =
      "{\"type\":\"TYPE_UPDATE\",\"generation\":{\"id\":\"gen-1\","
      "\"prompt\":\"caf\xc3\xa9 \\\"quoted\\\"\\n\"}}\n";
  const std::string id = WebhookId("8Jq2mQ0cT3u9eX1bYp4sKw", 7);
  EXPECT_EQ(id, "8Jq2mQ0cT3u9eX1bYp4sKw.7");
  absl::StatusOr<std::string> ours = Sign(secret, id, 1767225600, body);
  ASSERT_TRUE(ours.ok());
  const std::string theirs = PythonSignature(secret, id, 1767225600, body);
  ASSERT_FALSE(theirs.empty()) << "python3 did not run";
  EXPECT_EQ(*ours, theirs);
}

TEST(SignatureTest, MalformedSecretIsRefusedWithoutEchoingIt) {
  for (const char* bad : {"", "whsec_", "whsec_@@not base64@@", "plain!"}) {
    absl::StatusOr<std::string> sig = Sign(bad, "id", 1, "body");
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    if (std::string(bad).size() > 6) {
      EXPECT_THAT(sig.status().message(), Not(HasSubstr(bad)));
    }
  }
}

class VerifyTest : public ::testing::Test {
 protected:
  const absl::Time now_ = absl::FromUnixSeconds(kSpecTimestamp);
};

TEST_F(VerifyTest, AcceptsTheSpecVector) {
  EXPECT_TRUE(Verify(kSpecSecret, kSpecId, absl::StrCat(kSpecTimestamp),
                     kSpecBody, kSpecSignature, now_)
                  .ok());
}

TEST_F(VerifyTest, RejectsAnyChangedInput) {
  const std::string ts = absl::StrCat(kSpecTimestamp);
  const auto code = [&](const std::string& secret, const std::string& id,
                        const std::string& t, const std::string& body,
                        const std::string& sig) {
    return Verify(secret, id, t, body, sig, now_).code();
  };
  const absl::StatusCode bad = absl::StatusCode::kUnauthenticated;
  EXPECT_EQ(
      code(kSpecSecret, kSpecId, ts, "{\"test\": 2432232315}", kSpecSignature),
      bad);
  EXPECT_EQ(code(kSpecSecret, "msg_other", ts, kSpecBody, kSpecSignature), bad);
  EXPECT_EQ(code(kSpecSecret, kSpecId, absl::StrCat(kSpecTimestamp + 1),
                 kSpecBody, kSpecSignature),
            bad);
  EXPECT_EQ(code(absl::StrCat("whsec_", absl::Base64Escape("another key")),
                 kSpecId, ts, kSpecBody, kSpecSignature),
            bad);
  EXPECT_EQ(code(kSpecSecret, kSpecId, ts, kSpecBody,
                 "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
            bad);
  // Same digest bytes, non-canonical padding bits: refused like the
  // reference libraries, which compare the text.
  EXPECT_EQ(code(kSpecSecret, kSpecId, ts, kSpecBody,
                 "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF="),
            bad);
  EXPECT_EQ(code(kSpecSecret, kSpecId, ts, kSpecBody, "v1,"), bad);
  EXPECT_EQ(code(kSpecSecret, kSpecId, ts, kSpecBody, "v1"), bad);
}

TEST_F(VerifyTest, AcceptsWhenAnyOfSeveralSignaturesMatches) {
  const std::string ts = absl::StrCat(kSpecTimestamp);
  const std::string several =
      absl::StrCat("v1,Zm9vYmFy v1a,somethingelse ", kSpecSignature, " v2,xyz");
  EXPECT_TRUE(Verify(kSpecSecret, kSpecId, ts, kSpecBody, several, now_).ok());
}

TEST_F(VerifyTest, SaysWhenThereIsNoV1Signature) {
  absl::Status s = Verify(kSpecSecret, kSpecId, absl::StrCat(kSpecTimestamp),
                          kSpecBody, "v1a,abc v2,def", now_);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("no \"v1,"));
}

TEST_F(VerifyTest, TimestampToleranceBothWays) {
  const std::string ts = absl::StrCat(kSpecTimestamp);
  const auto at = [&](absl::Duration offset) {
    return Verify(kSpecSecret, kSpecId, ts, kSpecBody, kSpecSignature,
                  now_ + offset);
  };
  EXPECT_TRUE(at(absl::Minutes(4)).ok());
  EXPECT_TRUE(at(-absl::Minutes(4)).ok());
  absl::Status old = at(absl::Minutes(6));
  EXPECT_EQ(old.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(old.message(), HasSubstr("in the past"));
  absl::Status future = at(-absl::Minutes(6));
  EXPECT_EQ(future.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(future.message(), HasSubstr("in the future"));
  // Tolerance 0 skips the check (replaying a saved delivery).
  EXPECT_TRUE(Verify(kSpecSecret, kSpecId, ts, kSpecBody, kSpecSignature,
                     now_ + absl::Hours(24 * 365), absl::ZeroDuration())
                  .ok());
}

TEST_F(VerifyTest, NonNumericTimestampIsRejected) {
  EXPECT_EQ(
      Verify(kSpecSecret, kSpecId, "yesterday", kSpecBody, kSpecSignature, now_)
          .code(),
      absl::StatusCode::kUnauthenticated);
}

TEST_F(VerifyTest, MalformedSecretIsAUsageError) {
  EXPECT_EQ(Verify("whsec_!!!", kSpecId, absl::StrCat(kSpecTimestamp),
                   kSpecBody, kSpecSignature, now_)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace videogen::webhooks
