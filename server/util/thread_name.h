#pragma once

#include <pthread.h>

#include <string>

namespace videogen::util {

// Names the calling thread (at most 15 characters show), so `top -H`,
// `perf` and /proc/PID/task/*/comm tell videogen's threads apart; they
// would all be "videogen-server" otherwise.
inline void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace videogen::util
