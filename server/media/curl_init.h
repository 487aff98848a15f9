#pragma once

namespace videogen::media {

// curl_global_init once per process, and SIGPIPE ignored so a peer that
// closes a socket cannot kill the process. Thread-safe.
void CurlGlobalInit();

}  // namespace videogen::media
