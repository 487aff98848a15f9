#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace videogen::bench {

// Nearest-rank percentile of `v` (p in [0, 100]); sorts `v`. 0 when empty.
inline int64_t Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5);
  return v[std::min(rank, v.size() - 1)];
}

// Microseconds to milliseconds, for tables.
inline double Ms(int64_t us) { return static_cast<double>(us) / 1000.0; }

}  // namespace videogen::bench
