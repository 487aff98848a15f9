#pragma once

// `videogen webhook verify`: checks a webhook delivery the way a receiver
// must (Standard Webhooks, design.md §8), so a user can test a receiver's
// setup or a captured request.

#include <iosfwd>
#include <string>

#include "absl/time/time.h"

namespace CLI {
class App;
}  // namespace CLI

namespace videogen::client {

struct WebhookVerifyOptions {
  std::string secret;        // "whsec_..." (also env VIDEOGEN_WEBHOOK_SECRET)
  std::string id;            // webhook-id
  std::string timestamp;     // webhook-timestamp
  std::string signature;     // webhook-signature (space-separated list)
  std::string headers_file;  // "Name: value" lines, e.g. `curl -D` output
  std::string body_file = "-";    // the raw body; "-" = stdin
  std::string tolerance = "5m";   // accepted clock difference
  bool ignore_timestamp = false;  // replaying an old, saved delivery
};

// Registers the `verify` subcommand and its flags under `webhook`.
CLI::App* AddWebhookVerify(CLI::App& webhook, WebhookVerifyOptions& options);

// Verifies one delivery. Header values given as flags win over the headers
// file. Prints "valid: ..." on `out` and returns 0, or prints why on `err`
// and returns 1 (not authentic, or not fresh) or 2 (usage: a missing header,
// a malformed secret, an unreadable file). The body is read byte for byte
// from `body_file`, or from `stdin_body` when it is "-".
int RunWebhookVerify(const WebhookVerifyOptions& options,
                     std::istream& stdin_body, std::ostream& out,
                     std::ostream& err, absl::Time now);

// The same on std::cin, std::cout and std::cerr, at the current time.
int RunWebhookVerify(const WebhookVerifyOptions& options);

}  // namespace videogen::client
