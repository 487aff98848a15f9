#include "server/webhooks/url_policy.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace videogen::webhooks {
namespace {

constexpr char kInsecureHint[] =
    " (the server's --webhook_allow_insecure lifts this rule, for tests)";

// IPv4 in host byte order against prefix/bits.
bool In(uint32_t ip, uint32_t prefix, int bits) {
  const uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
  return (ip & mask) == (prefix & mask);
}

constexpr uint32_t V4(int a, int b, int c, int d) {
  return (uint32_t(a) << 24) | (uint32_t(b) << 16) | (uint32_t(c) << 8) |
         uint32_t(d);
}

std::optional<std::string> ForbiddenV4(uint32_t ip) {
  if (ip == V4(169, 254, 169, 254)) return "a cloud metadata address";
  if (In(ip, V4(0, 0, 0, 0), 8)) return "an unspecified address";
  if (In(ip, V4(127, 0, 0, 0), 8)) return "a loopback address";
  if (In(ip, V4(10, 0, 0, 0), 8) || In(ip, V4(172, 16, 0, 0), 12) ||
      In(ip, V4(192, 168, 0, 0), 16)) {
    return "a private address";
  }
  if (In(ip, V4(169, 254, 0, 0), 16)) return "a link-local address";
  if (In(ip, V4(100, 64, 0, 0), 10)) return "a shared (CGNAT) address";
  if (In(ip, V4(224, 0, 0, 0), 4)) return "a multicast address";
  // Broadcast, class E, IETF protocol assignments and benchmarking: never a
  // public receiver.
  if (In(ip, V4(240, 0, 0, 0), 4) || In(ip, V4(192, 0, 0, 0), 24) ||
      In(ip, V4(198, 18, 0, 0), 15)) {
    return "a reserved address";
  }
  return std::nullopt;
}

uint32_t V4At(const uint8_t* b) {
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) |
         (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

bool AllZero(const uint8_t* b, int n) {
  for (int i = 0; i < n; ++i) {
    if (b[i] != 0) return false;
  }
  return true;
}

std::optional<std::string> ForbiddenV6(const in6_addr& addr) {
  const uint8_t* b = addr.s6_addr;
  // fd00:ec2::254, the EC2 metadata service over IPv6.
  static const uint8_t kMetadata[16] = {
      0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
  if (std::memcmp(b, kMetadata, 16) == 0) return "a cloud metadata address";
  if (AllZero(b, 16)) return "an unspecified address";
  if (AllZero(b, 15) && b[15] == 1) return "a loopback address";
  // Forms that carry an IPv4 address are judged by it, or ::ffff:127.0.0.1
  // would walk past every IPv4 rule.
  if (AllZero(b, 10) && b[10] == 0xff && b[11] == 0xff) {
    return ForbiddenV4(V4At(b + 12));  // mapped ::ffff:a.b.c.d
  }
  if (AllZero(b, 12)) return ForbiddenV4(V4At(b + 12));  // ::a.b.c.d
  static const uint8_t kNat64[12] = {0, 0x64, 0xff, 0x9b};
  if (std::memcmp(b, kNat64, 12) == 0) return ForbiddenV4(V4At(b + 12));
  if (b[0] == 0x20 && b[1] == 0x02) return ForbiddenV4(V4At(b + 2));  // 6to4
  if ((b[0] & 0xfe) == 0xfc) return "a private (unique local) address";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "a link-local address";
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return "a site-local address";
  if (b[0] == 0xff) return "a multicast address";
  return std::nullopt;
}

struct CurlUrlDeleter {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};

// One part of a parsed URL; empty when absent.
std::string Part(CURLU* url, CURLUPart part, unsigned int flags = 0) {
  char* value = nullptr;
  if (curl_url_get(url, part, &value, flags) != CURLUE_OK || value == nullptr) {
    return "";
  }
  std::string out(value);
  curl_free(value);
  return out;
}

absl::Status Invalid(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("webhook_url ", why));
}

}  // namespace

absl::StatusOr<WebhookUrl> ParseWebhookUrl(absl::string_view url,
                                           bool allow_insecure) {
  if (url.size() > kMaxWebhookUrlLength) {
    return Invalid(
        absl::StrCat("is longer than ", kMaxWebhookUrlLength, " characters"));
  }
  if (url.find('\0') != absl::string_view::npos) {
    return Invalid("contains a NUL byte");
  }
  std::unique_ptr<CURLU, CurlUrlDeleter> parsed(curl_url());
  if (parsed == nullptr) return absl::ResourceExhaustedError("curl_url");
  const std::string text(url);
  const CURLUcode code =
      curl_url_set(parsed.get(), CURLUPART_URL, text.c_str(), /*flags=*/0);
  if (code != CURLUE_OK) {
    return Invalid(
        absl::StrCat("is not an absolute URL (", curl_url_strerror(code), ")"));
  }
  WebhookUrl out;
  out.scheme = absl::AsciiStrToLower(Part(parsed.get(), CURLUPART_SCHEME));
  if (out.scheme != "https" && !(allow_insecure && out.scheme == "http")) {
    return Invalid(absl::StrCat("must use https, not \"", out.scheme, "\"",
                                out.scheme == "http" ? kInsecureHint : ""));
  }
  if (!Part(parsed.get(), CURLUPART_USER).empty() ||
      !Part(parsed.get(), CURLUPART_PASSWORD).empty() ||
      !Part(parsed.get(), CURLUPART_OPTIONS).empty()) {
    return Invalid("must not carry a user name or password");
  }
  std::string host = Part(parsed.get(), CURLUPART_HOST);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) return Invalid("has no host");
  out.host = absl::AsciiStrToLower(host);
  const std::string port =
      Part(parsed.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT);
  if (!absl::SimpleAtoi(port, &out.port) || out.port <= 0 || out.port > 65535) {
    return Invalid("has no valid port");
  }
  return out;
}

std::optional<std::string> ForbiddenAddressReason(const sockaddr* address) {
  if (address == nullptr) return "no address";
  if (address->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address);
    return ForbiddenV4(ntohl(in->sin_addr.s_addr));
  }
  if (address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    return ForbiddenV6(in6->sin6_addr);
  }
  return "not an IP address";
}

std::string AddressToString(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address == nullptr) return "?";
  if (address->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(address)->sin_addr,
              text, sizeof(text));
  } else if (address->sa_family == AF_INET6) {
    inet_ntop(AF_INET6,
              &reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr, text,
              sizeof(text));
  } else {
    return "?";
  }
  return text;
}

absl::Status ValidateWebhookUrl(absl::string_view url, bool allow_insecure) {
  absl::StatusOr<WebhookUrl> parsed = ParseWebhookUrl(url, allow_insecure);
  if (!parsed.ok()) return parsed.status();
  if (allow_insecure) return absl::OkStatus();

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(parsed->host.c_str(), nullptr, &hints, &found);
  if (rc == EAI_AGAIN) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve the webhook_url host \"", parsed->host,
                     "\" right now (", gai_strerror(rc), "); try again"));
  }
  if (rc != 0) {
    return Invalid(absl::StrCat("host \"", parsed->host,
                                "\" does not resolve (", gai_strerror(rc),
                                ")"));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(found,
                                                           &freeaddrinfo);
  // ANY forbidden address refuses the URL: a resolver may hand out any of
  // them at delivery time.
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    std::optional<std::string> why = ForbiddenAddressReason(a->ai_addr);
    if (why.has_value()) {
      return Invalid(absl::StrCat("host \"", parsed->host, "\" resolves to ",
                                  AddressToString(a->ai_addr), ", ", *why,
                                  "; webhooks go to public addresses only",
                                  kInsecureHint));
    }
  }
  return absl::OkStatus();
}

}  // namespace videogen::webhooks
