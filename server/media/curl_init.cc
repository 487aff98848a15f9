#include "server/media/curl_init.h"

#include <curl/curl.h>

#include <csignal>
#include <mutex>

namespace videogen::media {

void CurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
  });
}

}  // namespace videogen::media
