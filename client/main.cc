// videogen: the command-line client of the videogen gRPC gateway.
// Subcommands: generate, watch, get, list, cancel, download, webhook verify
// (see --help).

#include <algorithm>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/sanitize.h"
#include "client/webhook_verify.h"

namespace videogen::client {
namespace {

// Everything the command line sets, filled in by CLI11.
struct Cli {
  GlobalOptions global;
  std::string timeout = "30s";
  GenerateOptions generate;
  std::string prompt;
  std::vector<std::string> labels;
  float cfg_scale = 0;
  CLI::Option* cfg_scale_option = nullptr;
  int32_t duration = 0;
  std::string reconnect_timeout = "2m";
  bool no_reconnect = false;
  std::string id;
  ListOptions list;
  std::vector<std::string> states;
  std::vector<std::string> webhook_states;
  DownloadCommandOptions download;
  WebhookVerifyOptions webhook_verify;
};

constexpr char kIdChars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

// "30s", "500ms", "2m" or a bare number of seconds.
bool ParseDuration(const std::string& text, absl::Duration* out) {
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds)) {
    *out = absl::Seconds(seconds);
    return seconds > 0;
  }
  return absl::ParseDuration(text, out) && *out > absl::ZeroDuration();
}

const CLI::Validator& DurationCheck() {
  static const auto* v = new CLI::Validator(
      [](std::string& s) {
        absl::Duration d;
        return ParseDuration(s, &d) ? std::string()
                                    : "not a duration like 30s or 500ms";
      },
      "DURATION");
  return *v;
}

const CLI::Validator& HttpUrlCheck() {
  static const auto* v = new CLI::Validator(
      [](std::string& s) {
        return absl::StartsWithIgnoreCase(s, "http://") ||
                       absl::StartsWithIgnoreCase(s, "https://")
                   ? std::string()
                   : "not an http:// or https:// URL";
      },
      "URL");
  return *v;
}

const CLI::Validator& LabelCheck() {
  static const auto* v = new CLI::Validator(
      [](std::string& s) {
        auto parsed = ParseLabel(s);
        return parsed.ok() ? std::string()
                           : std::string(parsed.status().message());
      },
      "KEY=VALUE");
  return *v;
}

const CLI::Validator& StateCheck() {
  static const auto* v = new CLI::Validator(
      [](std::string& s) {
        auto parsed = ParseState(s);
        return parsed.ok() ? std::string()
                           : std::string(parsed.status().message());
      },
      "STATE");
  return *v;
}

void AddGlobalFlags(CLI::App& app, Cli& cli) {
  app.add_option("--server", cli.global.server, "Server address host:port")
      ->capture_default_str();
  app.add_option("--timeout", cli.timeout,
                 "Deadline of unary RPCs and connect timeout (30s, 500ms)")
      ->check(DurationCheck())
      ->capture_default_str();
  app.add_flag("--json", cli.global.json,
               "One JSON object per line (default when stdout is not a "
               "terminal)");
  app.add_flag("--tls", cli.global.tls, "Use TLS (default: plaintext)");
  app.add_option("--ca-cert", cli.global.ca_cert,
                 "PEM file with root certificates for --tls")
      ->check(CLI::ExistingFile);
  // No default shown and no validator that echoes the value: the key must
  // never reach the terminal.
  app.add_option("--api_key,--api-key", cli.global.api_key,
                 "API key, sent as 'authorization: Bearer KEY'")
      ->envname("VIDEOGEN_API_KEY");
  app.add_option("--http_url,--http-url", cli.global.http_url,
                 "The server's HTTP listener, e.g. http://127.0.0.1:8080, "
                 "where `download` finds the server's copy of a video")
      ->envname("VIDEOGEN_HTTP_URL")
      ->check(HttpUrlCheck());
}

void AddReconnectFlags(CLI::App* sub, Cli& cli) {
  sub->add_flag("--no-reconnect", cli.no_reconnect,
                "Fail instead of resuming a broken stream");
  sub->add_option("--reconnect-timeout", cli.reconnect_timeout,
                  "Give up after this long without hearing from the server")
      ->check(DurationCheck())
      ->capture_default_str();
}

CLI::App* AddGenerate(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand("generate", "Generate a video from a prompt");
  v1::GenerateRequest& r = cli.generate.request;
  sub->add_option("prompt", cli.prompt, "What the video should show")
      ->required();
  sub->add_option("--model", *r.mutable_model(),
                  "Model (default klingai/v2-master-text-to-video)");
  sub->add_option("--aspect-ratio", *r.mutable_aspect_ratio(),
                  "16:9 (default), 9:16 or 1:1");
  sub->add_option("--duration", cli.duration,
                  "Clip length in seconds: 5 or 10");
  cli.cfg_scale_option =
      sub->add_option("--cfg-scale", cli.cfg_scale, "Prompt adherence, 0..1");
  sub->add_option("--negative-prompt", *r.mutable_negative_prompt(),
                  "What the video should avoid");
  sub->add_option("--image-url", *r.mutable_image_url(),
                  "Source image for image-to-video models");
  sub->add_option("--label", cli.labels, "Label KEY=VALUE (repeatable)")
      ->check(LabelCheck());
  sub->add_option("--webhook-url", *r.mutable_webhook_url(),
                  "POST signed events of this generation here (https)");
  sub->add_option("--webhook-state", cli.webhook_states,
                  "State whose events go to --webhook-url (repeatable; "
                  "default: the terminal states)")
      ->check(StateCheck());
  sub->add_option("--request-id", *r.mutable_request_id(),
                  "Idempotency key (default: a fresh UUID, printed to stderr)");
  sub->add_flag("--detach", cli.generate.detach,
                "Create and print the id without waiting");
  sub->add_option("--output,-o", cli.generate.output,
                  "Download the video here once completed");
  AddReconnectFlags(sub, cli);
  sub->footer(R"(Examples:
  videogen generate "a red fox running through fresh snow, cinematic"
  videogen generate "waves at dusk" --duration 10 --aspect-ratio 9:16 -o waves.mp4
  videogen generate "a paper boat" --label team=demo --detach
  videogen --json generate "city lights" --request-id 3b241101-e2bb-4255-8caf-4136c566a962

Exit codes: 0 completed, 1 failed or cancelled, 2 usage error, 3 RPC error.
Retrying with the printed request_id returns the same generation.)");
  return sub;
}

CLI::App* AddWatch(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand(
      "watch", "Follow a generation to the end (resumes across restarts)");
  sub->add_option("id,--id", cli.id, "Generation id")->required();
  AddReconnectFlags(sub, cli);
  sub->footer(R"(Examples:
  videogen watch 8Jq2mQ0cT3u9eX1bYp4sKw
  videogen --json watch 8Jq2mQ0cT3u9eX1bYp4sKw | jq .generation.state

Exit codes: 0 completed, 1 failed or cancelled, 2 usage error, 3 RPC error.)");
  return sub;
}

CLI::App* AddGet(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand("get", "Show one generation");
  sub->add_option("id,--id", cli.id, "Generation id")->required();
  sub->footer(R"(Examples:
  videogen get 8Jq2mQ0cT3u9eX1bYp4sKw
  videogen --json get 8Jq2mQ0cT3u9eX1bYp4sKw)");
  return sub;
}

CLI::App* AddList(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand("list", "List generations, newest first");
  sub->add_option("--state", cli.states,
                  "queued|generating|completed|failed|cancelled (repeatable)")
      ->check(StateCheck());
  sub->add_option("--label", cli.labels, "Label KEY=VALUE (repeatable)")
      ->check(LabelCheck());
  sub->add_option("--limit", cli.list.limit,
                  "At most this many, fetching pages as needed")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--page-size", cli.list.page_size, "Results per page")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--page-token", cli.list.page_token,
                  "next page token of a previous list");
  sub->footer(R"(Examples:
  videogen list
  videogen list --state completed --state failed --limit 100
  videogen list --label team=demo --page-size 10 --page-token TOKEN)");
  return sub;
}

CLI::App* AddCancel(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand(
      "cancel", "Stop tracking a generation (the upstream has no cancel)");
  sub->add_option("id,--id", cli.id, "Generation id")->required();
  sub->footer(R"(Examples:
  videogen cancel 8Jq2mQ0cT3u9eX1bYp4sKw)");
  return sub;
}

CLI::App* AddDownload(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand(
      "download", "Download a finished video (resumes a partial file)");
  sub->add_option("target,--target", cli.download.target,
                  "Generation id or video URL")
      ->required();
  sub->add_option("--output,-o", cli.download.output, "File to write")
      ->required();
  sub->footer(R"(Examples:
  videogen download 8Jq2mQ0cT3u9eX1bYp4sKw -o fox.mp4
  videogen download https://example.com/video.mp4 --output video.mp4
  VIDEOGEN_HTTP_URL=http://127.0.0.1:8080 videogen download ID -o fox.mp4

With --http_url (or VIDEOGEN_HTTP_URL) set to the server's HTTP listener,
the server's own copy of the video (video.mirror_url) is preferred, with the
same API key; the upstream URL is the fallback. A file is checked against
video.sha256 when the server has one. Running it again on a partial file
resumes with a Range request.)");
  return sub;
}

CLI::App* AddWebhook(CLI::App& app, Cli& cli) {
  auto* sub = app.add_subcommand("webhook", "Webhook tools");
  sub->require_subcommand(1);
  AddWebhookVerify(*sub, cli.webhook_verify);
  sub->footer(R"(Examples:
  videogen webhook verify --secret whsec_... --headers headers.txt --body body.json)");
  return sub;
}

// Turns the parsed strings into the typed options.
void Finalize(Cli& cli) {
  ParseDuration(cli.timeout, &cli.global.timeout);
  // A key pasted from a file or a terminal often ends in a newline.
  absl::StripAsciiWhitespace(&cli.global.api_key);
  FollowOptions& follow = cli.generate.follow;
  follow.reconnect = !cli.no_reconnect;
  ParseDuration(cli.reconnect_timeout, &follow.reconnect_timeout);
  v1::GenerateRequest& r = cli.generate.request;
  r.set_prompt(cli.prompt);
  r.set_duration_seconds(cli.duration);
  if (*cli.cfg_scale_option) r.set_cfg_scale(cli.cfg_scale);
  for (const auto& label : cli.labels) {
    auto kv = *ParseLabel(label);
    (*r.mutable_labels())[kv.first] = kv.second;
    cli.list.labels[kv.first] = kv.second;
  }
  for (const auto& s : cli.states) cli.list.states.push_back(*ParseState(s));
  for (const auto& s : cli.webhook_states) r.add_webhook_states(*ParseState(s));
}

// Ids may start with '-' (URL-safe base64), which CLI11 would read as an
// option. For the subcommands that take an id, such an argument becomes
// --id=ARG (--target=ARG for download).
std::vector<std::string> QuoteDashIds(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  const std::set<std::string> global_values = {
      "--server",  "--timeout",  "--ca-cert", "--api_key",
      "--api-key", "--http_url", "--http-url"};
  size_t i = 1;
  while (i < args.size() && args[i].size() > 1 && args[i][0] == '-') {
    i += global_values.count(args[i]) ? 2 : 1;
  }
  if (i >= args.size()) return args;
  const std::string& sub = args[i];
  std::string name = sub == "download" ? "--target=" : "--id=";
  if (sub != "watch" && sub != "get" && sub != "cancel" && sub != "download") {
    return args;
  }
  for (size_t j = i + 1; j < args.size(); ++j) {
    const std::string& a = args[j];
    if (a == "--") break;
    bool dash_id = a.size() > 2 && a[0] == '-' && a[1] != '-' &&
                   a.find_first_not_of(kIdChars) == std::string::npos &&
                   a.compare(0, 2, "-o") != 0 && a.compare(0, 2, "-h") != 0;
    if (dash_id) args[j] = name + a;
  }
  return args;
}

int Main(int argc, char** argv) {
  Cli cli;
  CLI::App app{"videogen: generate videos through a videogen server",
               "videogen"};
  app.fallthrough();
  app.require_subcommand(1);
  AddGlobalFlags(app, cli);
  CLI::App* generate = AddGenerate(app, cli);
  CLI::App* watch = AddWatch(app, cli);
  CLI::App* get = AddGet(app, cli);
  CLI::App* list = AddList(app, cli);
  CLI::App* cancel = AddCancel(app, cli);
  CLI::App* download = AddDownload(app, cli);
  CLI::App* webhook = AddWebhook(app, cli);
  app.footer(
      "Run `videogen SUBCOMMAND --help` for flags and examples.\n"
      "Exit codes: 0 ok, 1 generation failed or cancelled, 2 usage error, "
      "3 RPC error.");
  std::vector<std::string> args = QuoteDashIds(argc, argv);
  std::reverse(args.begin(), args.end());
  args.pop_back();  // the program name
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  Finalize(cli);
  if (*webhook) return RunWebhookVerify(cli.webhook_verify);
  if (!cli.global.api_key.empty() && !ValidApiKey(cli.global.api_key)) {
    std::cerr << "error: the API key (--api_key or VIDEOGEN_API_KEY) has "
                 "spaces or control characters; it cannot be sent\n";
    return kExitUsage;
  }
  // Before any thread starts: nothing printed may contain the key.
  SetSecretToRedact(cli.global.api_key);
  if (*generate) {
    if (cli.generate.request.request_id().empty()) {
      cli.generate.request.set_request_id(NewUuid());
      std::cerr << "request_id: " << cli.generate.request.request_id()
                << std::endl;
    }
    return RunGenerate(cli.global, cli.generate);
  }
  if (*watch) return RunWatch(cli.global, cli.id, cli.generate.follow);
  if (*get) return RunGet(cli.global, cli.id);
  if (*list) return RunList(cli.global, cli.list);
  if (*cancel) return RunCancel(cli.global, cli.id);
  if (*download) return RunDownload(cli.global, cli.download);
  return kExitUsage;
}

}  // namespace
}  // namespace videogen::client

int main(int argc, char** argv) { return videogen::client::Main(argc, argv); }
