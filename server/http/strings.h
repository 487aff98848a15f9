#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace videogen::http {

// Debian's Abseil has its own string_view (not an alias of std's), while
// the interfaces and Beast use std::string_view: these bridge the two.
inline absl::string_view Av(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view Sv(absl::string_view s) { return {s.data(), s.size()}; }

}  // namespace videogen::http
