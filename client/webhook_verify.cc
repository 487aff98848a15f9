#include "client/webhook_verify.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "server/webhooks/signature.h"

namespace videogen::client {
namespace {

// Same numbers as the other subcommands (client/commands.h).
constexpr int kValid = 0;
constexpr int kInvalid = 1;
constexpr int kUsage = 2;

bool ReadAll(std::istream& in, std::string* out) {
  out->assign(std::istreambuf_iterator<char>(in),
              std::istreambuf_iterator<char>());
  return !in.bad();
}

// Fills the webhook-* values still empty from "Name: value" lines. Other
// lines (a status line, other headers) are ignored, so a `curl -D` dump or a
// copy from a request inspector works as is.
void TakeHeaders(absl::string_view text, WebhookVerifyOptions* o) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    const std::string name = absl::AsciiStrToLower(
        absl::StripAsciiWhitespace(line.substr(0, colon)));
    const std::string value(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    if (name == "webhook-id" && o->id.empty()) o->id = value;
    if (name == "webhook-timestamp" && o->timestamp.empty()) {
      o->timestamp = value;
    }
    if (name == "webhook-signature" && o->signature.empty()) {
      o->signature = value;
    }
  }
}

}  // namespace

CLI::App* AddWebhookVerify(CLI::App& webhook, WebhookVerifyOptions& o) {
  CLI::App* sub = webhook.add_subcommand(
      "verify", "Check a webhook delivery's signature (reads the body)");
  sub->add_option("--secret", o.secret, "The tenant's webhook secret whsec_...")
      ->envname("VIDEOGEN_WEBHOOK_SECRET");
  sub->add_option("--id", o.id, "The webhook-id header");
  sub->add_option("--timestamp", o.timestamp, "The webhook-timestamp header");
  sub->add_option("--signature", o.signature, "The webhook-signature header");
  sub->add_option("--headers", o.headers_file,
                  "File of 'Name: value' header lines (e.g. curl -D output)")
      ->check(CLI::ExistingFile);
  sub->add_option("--body", o.body_file, "File with the raw body; - = stdin")
      ->capture_default_str();
  sub->add_option("--tolerance", o.tolerance,
                  "Accepted clock difference, like 5m")
      ->capture_default_str();
  sub->add_flag("--ignore-timestamp", o.ignore_timestamp,
                "Skip the freshness check (a saved, older delivery)");
  sub->footer(R"(Examples:
  videogen webhook verify --secret whsec_... --id ID --timestamp TS \
      --signature 'v1,...' < body.json
  VIDEOGEN_WEBHOOK_SECRET=whsec_... videogen webhook verify \
      --headers headers.txt --body body.json --ignore-timestamp

The body must be the exact bytes received. Exit codes: 0 valid, 1 invalid,
2 usage error.)");
  return sub;
}

int RunWebhookVerify(const WebhookVerifyOptions& options,
                     std::istream& stdin_body, std::ostream& out,
                     std::ostream& err, absl::Time now) {
  WebhookVerifyOptions o = options;
  if (!o.headers_file.empty()) {
    std::ifstream file(o.headers_file, std::ios::binary);
    std::string text;
    if (!file || !ReadAll(file, &text)) {
      err << "cannot read --headers file " << o.headers_file << "\n";
      return kUsage;
    }
    TakeHeaders(text, &o);
  }
  std::string missing;
  if (o.secret.empty()) absl::StrAppend(&missing, " --secret");
  if (o.id.empty()) absl::StrAppend(&missing, " webhook-id (--id)");
  if (o.timestamp.empty()) {
    absl::StrAppend(&missing, " webhook-timestamp (--timestamp)");
  }
  if (o.signature.empty()) {
    absl::StrAppend(&missing, " webhook-signature (--signature)");
  }
  if (!missing.empty()) {
    err << "missing:" << missing
        << " (give them as flags or in a --headers file)\n";
    return kUsage;
  }
  absl::Duration tolerance;
  if (!absl::ParseDuration(o.tolerance, &tolerance) ||
      tolerance <= absl::ZeroDuration()) {
    err << "--tolerance \"" << o.tolerance
        << "\" is not a positive duration like 5m\n";
    return kUsage;
  }
  if (o.ignore_timestamp) tolerance = absl::ZeroDuration();

  std::string body;
  if (o.body_file == "-") {
    if (!ReadAll(stdin_body, &body)) {
      err << "cannot read the body from stdin\n";
      return kUsage;
    }
  } else {
    std::ifstream file(o.body_file, std::ios::binary);
    if (!file || !ReadAll(file, &body)) {
      err << "cannot read --body file " << o.body_file << "\n";
      return kUsage;
    }
  }

  const absl::Status status = webhooks::Verify(
      o.secret, o.id, o.timestamp, body, o.signature, now, tolerance);
  if (status.ok()) {
    out << "valid: webhook-id " << o.id << ", " << body.size()
        << " body bytes, signed with this secret\n";
    return kValid;
  }
  if (status.code() == absl::StatusCode::kInvalidArgument) {
    err << status.message() << "\n";
    return kUsage;
  }
  err << "invalid: " << status.message() << "\n";
  // The usual mistake: the body was saved or piped with a newline added.
  if (absl::EndsWith(body, "\n") &&
      webhooks::Verify(o.secret, o.id, o.timestamp,
                       absl::StripSuffix(body, "\n"), o.signature, now,
                       tolerance)
          .ok()) {
    err << "hint: it verifies without the body's final newline; pass the "
           "exact bytes received (printf, not echo)\n";
  }
  return kInvalid;
}

int RunWebhookVerify(const WebhookVerifyOptions& options) {
  return RunWebhookVerify(options, std::cin, std::cout, std::cerr, absl::Now());
}

}  // namespace videogen::client
