#pragma once

#include <string>

#include "server/store/store.h"

namespace videogen::auth {

// Who is calling, as the authenticator established it from the API key
// (design.md §7). With --auth=none every caller is the anonymous admin.
struct Principal {
  std::string key_id;  // "" with --auth=none
  std::string tenant;  // "" with --auth=none
  bool admin = false;  // sees every tenant's generations
  store::Admission limits;
  std::string webhook_secret;  // "whsec_..."; signs this tenant's webhooks

  // The tenant whose generations a request may touch: "" (all) for admins.
  std::string Scope() const { return admin ? "" : tenant; }
};

}  // namespace videogen::auth
