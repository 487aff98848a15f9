#pragma once

// Where `videogen download` fetches a generation's video from (design.md
// §11): the server's own copy first, the upstream URL second.

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::client {

struct VideoSource {
  std::string url;
  std::string name;       // "the mirror" or "the video URL", for messages
  bool send_key = false;  // the server's listener wants the API key; the
                          // upstream's CDN must never see it
};

// The sources to try for `video`, best first, and in *notes what the user
// should know (a copy the client cannot reach, a copy that failed).
// `http_url` is the server's HTTP listener (--http_url), e.g.
// "http://127.0.0.1:8080"; Video.mirror_url is normally a path on it. An
// absolute mirror_url is used as it is. Pure; thread-safe.
std::vector<VideoSource> VideoSources(const v1::Video& video,
                                      absl::string_view http_url,
                                      std::vector<std::string>* notes);

// Whether `url` is on the server's HTTP listener `http_url` (same scheme,
// host and port), so that it may be sent the API key.
bool OnListener(absl::string_view url, absl::string_view http_url);

// "http://h:1/" + "/v1/media/x" -> "http://h:1/v1/media/x".
std::string JoinUrl(absl::string_view base, absl::string_view path);

}  // namespace videogen::client
