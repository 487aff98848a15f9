#pragma once

// Where webhooks may go (design.md §8): a webhook URL is chosen by a tenant,
// so without these rules the server would POST into its own network
// (server-side request forgery). Every function is thread-safe.

#include <sys/socket.h>

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace videogen::webhooks {

inline constexpr size_t kMaxWebhookUrlLength = 2048;

// A webhook URL taken apart by libcurl's own parser, so the checks and the
// request that follows can never read the URL differently.
struct WebhookUrl {
  std::string scheme;  // "https" (or "http" when insecure is allowed)
  std::string host;    // lowercase; an IPv6 literal without brackets
  int port = 0;        // explicit or the scheme's default
};

// Syntax only, no DNS: an absolute http(s) URL of at most 2048 characters
// with a host and without userinfo; https unless `allow_insecure`.
// INVALID_ARGUMENT naming `webhook_url` otherwise.
absl::StatusOr<WebhookUrl> ParseWebhookUrl(absl::string_view url,
                                           bool allow_insecure);

// Why nothing may be sent to `address` ("a loopback address",
// "a private address", ...), or nullopt when it is a public unicast address.
// IPv4 and IPv6; IPv6 forms that embed an IPv4 address (mapped ::ffff:a.b.c.d,
// compatible ::a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by
// the embedded address.
std::optional<std::string> ForbiddenAddressReason(const sockaddr* address);

// The numeric form of `address` ("10.0.0.1", "::1") for messages.
std::string AddressToString(const sockaddr* address);

// The edge check of GenerateRequest.webhook_url: ParseWebhookUrl, then the
// host is resolved (getaddrinfo; blocks) and refused when ANY of its
// addresses is forbidden. `allow_insecure` (--webhook_allow_insecure) lifts
// the https rule and the address rules, and then nothing is resolved.
// INVALID_ARGUMENT for a refused URL or a host that does not exist,
// UNAVAILABLE when the resolver failed temporarily (retry later).
absl::Status ValidateWebhookUrl(absl::string_view url, bool allow_insecure);

}  // namespace videogen::webhooks
