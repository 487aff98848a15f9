// The SSRF guard on webhook URLs (server/webhooks/url_policy.h). No DNS on
// the test machines: literal addresses, and `localhost` from /etc/hosts.
#include "server/webhooks/url_policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace videogen::webhooks {
namespace {

using ::testing::HasSubstr;

// ForbiddenAddressReason of a literal address.
std::optional<std::string> Reason(const std::string& literal) {
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  if (inet_pton(AF_INET, literal.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    return ForbiddenAddressReason(reinterpret_cast<sockaddr*>(&v4));
  }
  if (inet_pton(AF_INET6, literal.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    return ForbiddenAddressReason(reinterpret_cast<sockaddr*>(&v6));
  }
  ADD_FAILURE() << "not a literal address: " << literal;
  return "?";
}

TEST(ForbiddenAddressTest, RefusesEveryNonPublicRange) {
  const std::pair<const char*, const char*> cases[] = {
      {"127.0.0.1", "loopback"},
      {"127.255.255.254", "loopback"},
      {"10.0.0.1", "private"},
      {"10.255.255.255", "private"},
      {"172.16.0.1", "private"},
      {"172.31.255.255", "private"},
      {"192.168.1.1", "private"},
      {"169.254.169.254", "metadata"},
      {"169.254.1.1", "link-local"},
      {"100.64.0.1", "CGNAT"},
      {"100.127.255.255", "CGNAT"},
      {"0.0.0.0", "unspecified"},
      {"224.0.0.1", "multicast"},
      {"239.255.255.250", "multicast"},
      {"255.255.255.255", "reserved"},
      {"::", "unspecified"},
      {"::1", "loopback"},
      {"fc00::1", "private"},
      {"fdff:ffff::1", "private"},
      {"fd00:ec2::254", "metadata"},
      {"fe80::1", "link-local"},
      {"febf::1", "link-local"},
      {"ff02::1", "multicast"},
      // IPv4 inside IPv6.
      {"::ffff:127.0.0.1", "loopback"},
      {"::ffff:10.1.2.3", "private"},
      {"::ffff:169.254.169.254", "metadata"},
      {"::127.0.0.1", "loopback"},
      {"64:ff9b::10.0.0.1", "private"},
      {"2002:c0a8:0101::1", "private"},  // 6to4 of 192.168.1.1
  };
  for (const auto& [address, what] : cases) {
    std::optional<std::string> why = Reason(address);
    ASSERT_TRUE(why.has_value()) << address << " was allowed";
    EXPECT_THAT(*why, HasSubstr(what)) << address;
  }
}

TEST(ForbiddenAddressTest, AllowsPublicAddresses) {
  for (const char* address :
       {"1.1.1.1", "8.8.8.8", "172.15.255.255", "172.32.0.1", "100.63.255.255",
        "100.128.0.1", "169.253.255.255", "11.0.0.1", "223.255.255.255",
        "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8", "2002:0808:0808::1"}) {
    std::optional<std::string> why = Reason(address);
    EXPECT_FALSE(why.has_value()) << address << ": " << why.value_or("");
  }
}

TEST(ParseWebhookUrlTest, TakesTheUrlApartLikeCurl) {
  absl::StatusOr<WebhookUrl> u =
      ParseWebhookUrl("https://Hooks.Example.COM/path?q=1", false);
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->scheme, "https");
  EXPECT_EQ(u->host, "hooks.example.com");
  EXPECT_EQ(u->port, 443);
  u = ParseWebhookUrl("http://[::1]:8080/x", true);
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 8080);
}

TEST(ParseWebhookUrlTest, RefusesBadSyntaxEvenWhenInsecureIsAllowed) {
  for (bool insecure : {false, true}) {
    for (const char* url :
         {"", "not a url", "/relative/path", "ftp://8.8.8.8/x",
          "file:///etc/passwd", "gopher://8.8.8.8/", "https://",
          "https://user:pw@8.8.8.8/hook", "https://user@8.8.8.8/hook"}) {
      absl::StatusOr<WebhookUrl> u = ParseWebhookUrl(url, insecure);
      EXPECT_EQ(u.status().code(), absl::StatusCode::kInvalidArgument)
          << url << " insecure=" << insecure;
    }
  }
}

TEST(ValidateWebhookUrlTest, PublicHttpsLiteralIsAccepted) {
  EXPECT_TRUE(ValidateWebhookUrl("https://8.8.8.8/hooks/videogen", false).ok());
  EXPECT_TRUE(
      ValidateWebhookUrl("https://[2606:4700:4700::1111]:8443/h", false).ok());
}

TEST(ValidateWebhookUrlTest, HttpIsRefusedWithAHint) {
  absl::Status s = ValidateWebhookUrl("http://8.8.8.8/hook", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("https"));
  EXPECT_THAT(s.message(), HasSubstr("--webhook_allow_insecure"));
}

TEST(ValidateWebhookUrlTest, LocalhostIsRefusedAfterResolution) {
  absl::Status s = ValidateWebhookUrl("https://localhost:8443/hook", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"localhost\" resolves to"));
  EXPECT_THAT(s.message(), HasSubstr("loopback"));
}

TEST(ValidateWebhookUrlTest, PrivateLiteralsAreRefused) {
  for (const char* url :
       {"https://127.0.0.1/", "https://10.0.0.5/hook", "https://172.20.1.1/",
        "https://192.168.0.10:8443/", "https://169.254.169.254/latest/",
        "https://100.64.1.1/", "https://0.0.0.0/", "https://[::1]/",
        "https://[fe80::1]/", "https://[fd00:ec2::254]/",
        "https://[::ffff:127.0.0.1]/", "https://[::ffff:7f00:1]/",
        // Other spellings of 127.0.0.1.
        "https://2130706433/", "https://0x7f.1/", "https://0177.0.0.1/"}) {
    absl::Status s = ValidateWebhookUrl(url, false);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << url;
  }
}

TEST(ValidateWebhookUrlTest, TooLongIsRefused) {
  const std::string url = "https://8.8.8.8/" + std::string(2048, 'a');
  absl::Status s = ValidateWebhookUrl(url, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("2048"));
  EXPECT_TRUE(ValidateWebhookUrl(url.substr(0, 2048), false).ok());
}

TEST(ValidateWebhookUrlTest, UnresolvableHostIsRefused) {
  EXPECT_FALSE(
      ValidateWebhookUrl("https://no-such-host.invalid/hook", false).ok());
}

TEST(ValidateWebhookUrlTest, AllowInsecureLiftsSchemeAndAddressRules) {
  EXPECT_TRUE(ValidateWebhookUrl("http://127.0.0.1:8080/hook", true).ok());
  EXPECT_TRUE(ValidateWebhookUrl("http://localhost/hook", true).ok());
  EXPECT_TRUE(ValidateWebhookUrl("https://10.0.0.1/hook", true).ok());
  // Not the syntax rules.
  EXPECT_FALSE(ValidateWebhookUrl("http://u:p@127.0.0.1/", true).ok());
  EXPECT_FALSE(ValidateWebhookUrl("ftp://127.0.0.1/", true).ok());
}

}  // namespace
}  // namespace videogen::webhooks
