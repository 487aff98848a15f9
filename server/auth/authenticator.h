#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/auth/principal.h"
#include "server/core/clock.h"
#include "server/store/store.h"

namespace videogen::auth {

// Turns the `authorization` header value of a gRPC call or an HTTP request
// into a Principal. Thread-safe; called on every RPC, so lookups are cached
// for `cache_ttl` (revocation takes effect within that time on every
// replica). Errors are UNAUTHENTICATED with a message that never echoes the
// key.
class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // `authorization` is the raw header value ("Bearer vg_..."), possibly
  // empty.
  virtual absl::StatusOr<Principal> Authenticate(
      std::string_view authorization) = 0;
};

// --auth=none: everyone is the anonymous admin.
std::unique_ptr<Authenticator> NewAllowAllAuthenticator();

// --auth=keys: keys looked up by hash in `store`.
std::unique_ptr<Authenticator> NewKeyAuthenticator(
    store::Store* store, core::Clock* clock,
    absl::Duration cache_ttl = absl::Seconds(5));

}  // namespace videogen::auth
