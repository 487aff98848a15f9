#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace videogen::auth {

// Debian's Abseil has its own string_view (not an alias of std's), while the
// committed interfaces take std::string_view: this bridges the two.
inline absl::string_view Av(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace videogen::auth
