#include "client/video_source.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace videogen::client {
namespace {

bool IsHttpUrl(absl::string_view s) {
  return absl::StartsWithIgnoreCase(s, "http://") ||
         absl::StartsWithIgnoreCase(s, "https://");
}

// "HTTP://Host/x?y" -> "http://host:80"; "" when not http(s).
std::string Origin(absl::string_view url) {
  if (!IsHttpUrl(url)) return "";
  const size_t scheme_end = url.find("://");
  const std::string scheme = absl::AsciiStrToLower(url.substr(0, scheme_end));
  absl::string_view authority = url.substr(scheme_end + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  const size_t at = authority.rfind('@');
  if (at != absl::string_view::npos) authority.remove_prefix(at + 1);
  // A port follows the last ':' unless that ':' is inside "[v6 address]".
  const size_t colon = authority.rfind(':');
  const size_t bracket = authority.rfind(']');
  absl::string_view host = authority;
  std::string port = scheme == "https" ? "443" : "80";
  if (colon != absl::string_view::npos &&
      (bracket == absl::string_view::npos || colon > bracket)) {
    host = authority.substr(0, colon);
    if (colon + 1 < authority.size()) {
      port = std::string(authority.substr(colon + 1));
    }
  }
  return absl::StrCat(scheme, "://", absl::AsciiStrToLower(host), ":", port);
}

}  // namespace

bool OnListener(absl::string_view url, absl::string_view http_url) {
  std::string origin = Origin(url);
  return !origin.empty() && origin == Origin(http_url);
}

std::string JoinUrl(absl::string_view base, absl::string_view path) {
  while (absl::ConsumeSuffix(&base, "/")) {
  }
  while (absl::ConsumePrefix(&path, "/")) {
  }
  return absl::StrCat(base, "/", path);
}

std::vector<VideoSource> VideoSources(const v1::Video& video,
                                      absl::string_view http_url,
                                      std::vector<std::string>* notes) {
  std::vector<VideoSource> sources;
  const std::string& mirror = video.mirror_url();
  if (IsHttpUrl(mirror)) {
    // The server named its copy in full: it came from the server that this
    // key authenticates to, so the key goes with it.
    sources.push_back({mirror, "the mirror", true});
  } else if (!mirror.empty() && IsHttpUrl(http_url)) {
    sources.push_back({JoinUrl(http_url, mirror), "the mirror", true});
  } else if (!mirror.empty()) {
    notes->push_back(absl::StrCat(
        "the server keeps a copy at ", mirror,
        "; set --http_url or VIDEOGEN_HTTP_URL to the server's HTTP "
        "listener to download it from there"));
  }
  if (!video.mirror_error().empty()) {
    notes->push_back(
        absl::StrCat("the server's copy failed: ", video.mirror_error()));
  }
  if (!video.url().empty()) {
    sources.push_back({video.url(), "the video URL", false});
  }
  return sources;
}

}  // namespace videogen::client
