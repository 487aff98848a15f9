#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "server/core/clock.h"
#include "server/store/store.h"

namespace videogen::auth {

// `videogen-server keys ...` (design.md §7). `args` are the words after
// `keys`:
//
//   create --tenant=NAME [--admin] [--max_concurrent=N]
//          [--creates_per_minute=N]
//          [--video_seconds_budget=N [--budget_period=720h]]
//       prints one JSON object: key_id, key (shown only this once),
//       webhook_secret, tenant, admin, the limits and created.
//   list
//       prints one JSON object per key (JSON lines), never the key, its
//       hash or the webhook secret.
//   revoke KEY_ID
//       prints one JSON object {key_id, revoked}.
//   help
//
// Flags take `--name=value` or `--name value`. Results go to `out`,
// diagnostics to `err`. Returns the exit code: 0 done, 1 the store failed
// (or has no such key), 2 a usage error (nothing was changed).
int RunKeysCommand(const std::vector<std::string>& args, store::Store* store,
                   core::Clock* clock, std::ostream& out, std::ostream& err);

}  // namespace videogen::auth
