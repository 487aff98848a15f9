#include "server/auth/keys_command.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string_view>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/auth/api_key.h"
#include "server/auth/string_view.h"

namespace videogen::auth {
namespace {

using Json = nlohmann::ordered_json;

constexpr int kOk = 0;
constexpr int kStoreError = 1;
constexpr int kUsage = 2;

constexpr std::string_view kUsageText =
    "usage: videogen-server [store flags] keys COMMAND\n"
    "  keys create --tenant=NAME [--admin] [--max_concurrent=N]\n"
    "              [--creates_per_minute=N]\n"
    "              [--video_seconds_budget=N [--budget_period=720h]]\n"
    "      makes a key; prints it once, as JSON, with its webhook secret\n"
    "  keys list              one JSON line per key (never the key)\n"
    "  keys revoke KEY_ID     the key stops working within the cache TTL\n"
    "Tenant names: 1-63 characters of a-z 0-9 _ -, starting with a letter.\n"
    "Limits are whole numbers; 0 (the default) means unlimited.\n";

// What to show of a word the user typed: a pasted key or webhook secret is
// never echoed (terminals get recorded, scrollback gets shared).
std::string Shown(std::string_view word) {
  if (absl::StartsWith(Av(word), Av(kKeyPrefix)) ||
      absl::StartsWith(Av(word), Av(kWebhookSecretPrefix))) {
    return "(a secret, not shown)";
  }
  return absl::StrCat("\"", Av(word), "\"");
}

// A usage error: its message for `err`. Nothing was changed.
struct Usage {
  std::string message;
};

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

Json LimitsJson(const store::Admission& limits) {
  Json j;
  j["max_concurrent"] = limits.max_concurrent;
  j["creates_per_minute"] = limits.creates_per_minute;
  j["video_seconds_budget"] = limits.video_seconds_budget;
  j["budget_period"] = absl::FormatDuration(limits.budget_period);
  return j;
}

// Everything about a key but its secrets, for `list` (and, with the key and
// webhook secret added, `create`).
Json PublicJson(const store::ApiKey& key) {
  Json j;
  j["key_id"] = key.key_id;
  j["tenant"] = key.tenant;
  j["admin"] = key.admin;
  j.update(LimitsJson(key.limits));
  j["created"] = Rfc3339(key.created);
  j["revoked"] = key.revoked ? Json(Rfc3339(*key.revoked)) : Json(nullptr);
  return j;
}

// `--name=value`, `--name value` or (for booleans) `--name`, gathered into
// name -> value; positional words into `positional`.
struct ParsedArgs {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;
};

std::optional<Usage> ParseArgs(const std::vector<std::string>& args,
                               size_t first,
                               const std::vector<std::string_view>& booleans,
                               ParsedArgs* parsed) {
  for (size_t i = first; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      parsed->positional.emplace_back(arg);
      continue;
    }
    arg.remove_prefix(2);
    std::string name(arg.substr(0, arg.find('=')));
    std::string value;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (absl::c_linear_search(booleans, name)) {
      value = "true";
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return Usage{absl::StrCat("--", name, " needs a value")};
    }
    if (!parsed->flags.emplace(name, value).second) {
      return Usage{absl::StrCat("--", name, " given twice")};
    }
  }
  return std::nullopt;
}

std::optional<Usage> ParseLimit(const ParsedArgs& parsed,
                                const std::string& name, int64_t* out) {
  auto it = parsed.flags.find(name);
  if (it == parsed.flags.end()) return std::nullopt;
  if (!absl::SimpleAtoi(it->second, out) || *out < 0) {
    return Usage{absl::StrCat("--", name,
                              " must be a whole number >= 0 (0 = "
                              "unlimited), got ",
                              Shown(it->second))};
  }
  return std::nullopt;
}

std::optional<Usage> ParseBool(const ParsedArgs& parsed,
                               const std::string& name, bool* out) {
  auto it = parsed.flags.find(name);
  if (it == parsed.flags.end()) return std::nullopt;
  if (it->second == "true" || it->second == "1") {
    *out = true;
  } else if (it->second == "false" || it->second == "0") {
    *out = false;
  } else {
    return Usage{absl::StrCat("--", name, " takes true or false, got ",
                              Shown(it->second))};
  }
  return std::nullopt;
}

struct CreateRequest {
  std::string tenant;
  bool admin = false;
  store::Admission limits;
};

// Validates every `create` flag before anything touches the store.
std::optional<Usage> ParseCreate(const std::vector<std::string>& args,
                                 CreateRequest* req) {
  ParsedArgs parsed;
  if (auto u = ParseArgs(args, 1, {"admin"}, &parsed)) return u;
  if (!parsed.positional.empty()) {
    return Usage{absl::StrCat("unexpected argument ",
                              Shown(parsed.positional[0]), " for keys create")};
  }
  static const std::vector<std::string> kKnown = {"tenant",
                                                  "admin",
                                                  "max_concurrent",
                                                  "creates_per_minute",
                                                  "video_seconds_budget",
                                                  "budget_period"};
  for (const auto& [name, value] : parsed.flags) {
    if (!absl::c_linear_search(kKnown, name)) {
      return Usage{absl::StrCat("unknown flag --", name, " for keys create")};
    }
  }
  auto tenant = parsed.flags.find("tenant");
  if (tenant == parsed.flags.end()) {
    return Usage{"keys create needs --tenant=NAME"};
  }
  if (!IsValidTenantName(tenant->second)) {
    return Usage{absl::StrCat(
        "invalid tenant name ", Shown(tenant->second),
        ": use 1-63 characters of a-z 0-9 _ -, starting with a letter")};
  }
  req->tenant = tenant->second;
  if (auto u = ParseBool(parsed, "admin", &req->admin)) return u;
  for (auto [name, field] :
       {std::pair{"max_concurrent", &req->limits.max_concurrent},
        std::pair{"creates_per_minute", &req->limits.creates_per_minute},
        std::pair{"video_seconds_budget", &req->limits.video_seconds_budget}}) {
    if (auto u = ParseLimit(parsed, name, field)) return u;
  }
  if (auto it = parsed.flags.find("budget_period"); it != parsed.flags.end()) {
    if (!parsed.flags.count("video_seconds_budget")) {
      return Usage{"--budget_period needs --video_seconds_budget"};
    }
    absl::Duration period;
    if (!absl::ParseDuration(it->second, &period) ||
        period < absl::Seconds(1) || period == absl::InfiniteDuration()) {
      return Usage{absl::StrCat(
          "--budget_period must be a duration of at least 1s, such as "
          "720h, got ",
          Shown(it->second))};
    }
    req->limits.budget_period = period;
  }
  return std::nullopt;
}

int Fail(std::ostream& err, const Usage& usage) {
  err << "keys: " << usage.message << "\n"
      << "run `videogen-server keys help` for usage\n";
  return kUsage;
}

int Create(const std::vector<std::string>& args, store::Store* store,
           core::Clock* clock, std::ostream& out, std::ostream& err) {
  CreateRequest req;
  if (auto u = ParseCreate(args, &req)) return Fail(err, *u);
  absl::StatusOr<IssuedKey> issued =
      IssueKey(req.tenant, req.admin, req.limits, clock->Now());
  if (!issued.ok()) {
    err << "keys create: " << issued.status().message() << "\n";
    return kStoreError;
  }
  if (absl::Status s = store->InsertKey(issued->record); !s.ok()) {
    err << "keys create: cannot store key " << issued->record.key_id << ": "
        << s.message() << "\n";
    return kStoreError;
  }
  Json j;
  j["key_id"] = issued->record.key_id;
  j["key"] = issued->key;
  j["webhook_secret"] = issued->record.webhook_secret;
  const Json rest = PublicJson(issued->record);
  for (auto it = rest.begin(); it != rest.end(); ++it) {
    if (it.key() != "key_id") j[it.key()] = it.value();
  }
  out << j.dump() << "\n";
  out.flush();
  return kOk;
}

int List(const std::vector<std::string>& args, store::Store* store,
         std::ostream& out, std::ostream& err) {
  if (args.size() > 1) {
    return Fail(err, Usage{absl::StrCat("keys list takes no arguments, got ",
                                        Shown(args[1]))});
  }
  absl::StatusOr<std::vector<store::ApiKey>> keys = store->ListKeys();
  if (!keys.ok()) {
    err << "keys list: " << keys.status().message() << "\n";
    return kStoreError;
  }
  for (const store::ApiKey& key : *keys) out << PublicJson(key).dump() << "\n";
  out.flush();
  return kOk;
}

int Revoke(const std::vector<std::string>& args, store::Store* store,
           core::Clock* clock, std::ostream& out, std::ostream& err) {
  if (args.size() != 2) {
    return Fail(err, Usage{"keys revoke takes exactly one KEY_ID"});
  }
  const std::string& key_id = args[1];
  if (!IsValidKeyId(key_id)) {
    // Someone may paste a whole key here: never echo it.
    return Fail(
        err, Usage{absl::StrCat(
                 "\"keys revoke\" wants a key_id such as "
                 "k_0123456789abcdef (",
                 KeyIdOf(key_id).empty()
                     ? "this is not one"
                     : "this is a whole key; its key_id is " + KeyIdOf(key_id),
                 ")")});
  }
  const absl::Time now = clock->Now();
  if (absl::Status s = store->RevokeKey(key_id, now); !s.ok()) {
    if (absl::IsNotFound(s)) {
      err << "keys revoke: no key " << key_id << "\n";
    } else {
      err << "keys revoke: cannot revoke " << key_id << ": " << s.message()
          << "\n";
    }
    return kStoreError;
  }
  Json j;
  j["key_id"] = key_id;
  j["revoked"] = Rfc3339(now);
  out << j.dump() << "\n";
  out.flush();
  return kOk;
}

}  // namespace

int RunKeysCommand(const std::vector<std::string>& args, store::Store* store,
                   core::Clock* clock, std::ostream& out, std::ostream& err) {
  if (args.empty()) {
    err << "keys: which command? (create, list, revoke)\n" << kUsageText;
    return kUsage;
  }
  const std::string& command = args[0];
  if (command == "help" || command == "--help" || command == "-h") {
    out << kUsageText;
    return kOk;
  }
  if (command == "create") return Create(args, store, clock, out, err);
  if (command == "list") return List(args, store, out, err);
  if (command == "revoke") return Revoke(args, store, clock, out, err);
  err << "keys: unknown command " << Shown(command)
      << " (create, list, revoke)\n"
      << kUsageText;
  return kUsage;
}

}  // namespace videogen::auth
