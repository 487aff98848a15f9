#include "server/media/download.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "server/media/curl_init.h"
#include "server/media/sha256.h"

namespace videogen::media {
namespace {

DownloadFailure Failure(std::string reason, absl::Status status,
                        bool permanent = false) {
  return {std::move(reason), std::move(status), permanent};
}

// Header values echoed into errors: printable ASCII, bounded.
std::string Printable(absl::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) {
    unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  return out;
}

// The media type without parameters, lowercase ("video/mp4").
std::string MediaType(absl::string_view content_type) {
  absl::string_view type = content_type.substr(0, content_type.find(';'));
  return absl::AsciiStrToLower(absl::StripAsciiWhitespace(type));
}

// Servers label video as video/*, and CDNs often as a generic binary type;
// anything else (an HTML error page served with 200, JSON) is not a video.
bool AcceptableType(const std::string& type) {
  return type.empty() || absl::StartsWith(type, "video/") ||
         type == "application/octet-stream" || type == "binary/octet-stream";
}

// Everything one download needs, shared with libcurl's callbacks. Owned by
// the calling thread; libcurl calls back on that same thread.
class Transfer {
 public:
  Transfer(const MirrorJob& job, const DownloadOptions& options,
           const absl::Notification* stop, int fd)
      : job_(job), options_(options), stop_(stop), fd_(fd) {}

  // One HTTP request, resuming at offset_. Returns the failure, if any.
  std::optional<DownloadFailure> Attempt();

  int64_t offset() const { return offset_; }
  int64_t total() const { return total_; }
  bool stopped() const { return stop_ != nullptr && stop_->HasBeenNotified(); }
  Downloaded Result() { return {offset_, hash_.HexDigest(), StoredType()}; }

 private:
  static size_t OnHeader(char* data, size_t size, size_t n, void* self);
  static size_t OnBody(char* data, size_t size, size_t n, void* self);
  static int OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t,
                        curl_off_t);

  void Header(absl::string_view line);
  // Checks the response before its first body byte. False: abort.
  bool BodyStarts();
  bool Write(absl::string_view bytes);
  bool Restart();
  std::optional<DownloadFailure> Finish(CURLcode res);
  std::string StoredType() const;
  std::string TruncatedMessage() const {
    return total_ >= 0 ? absl::StrCat("truncated: got ", offset_, " of ",
                                      total_, " bytes")
                       : absl::StrCat("truncated: got ", offset_, " bytes");
  }

  const MirrorJob& job_;
  const DownloadOptions& options_;
  const absl::Notification* stop_;
  const int fd_;
  Sha256 hash_;
  int64_t offset_ = 0;  // bytes in the file and in hash_
  int64_t total_ = -1;  // full size, once a response said it
  std::string etag_;    // strong validator for If-Range
  std::string served_type_;
  bool no_range_ = false;  // the server mishandled Range: start over

  // Per attempt.
  bool range_requested_ = false;
  bool started_ = false;
  long status_ = 0;
  int64_t content_length_ = -1;
  std::string content_type_;
  std::string content_range_;
  std::string response_etag_;
  std::optional<DownloadFailure> failure_;
};

size_t Transfer::OnHeader(char* data, size_t size, size_t n, void* self) {
  static_cast<Transfer*>(self)->Header(absl::string_view(data, size * n));
  return size * n;
}

size_t Transfer::OnBody(char* data, size_t size, size_t n, void* self) {
  auto* t = static_cast<Transfer*>(self);
  if (!t->started_) {
    t->started_ = true;
    if (!t->BodyStarts()) return 0;
  }
  return t->Write(absl::string_view(data, size * n)) ? size * n : 0;
}

int Transfer::OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t,
                         curl_off_t) {
  return static_cast<Transfer*>(self)->stopped() ? 1 : 0;
}

void Transfer::Header(absl::string_view line) {
  line = absl::StripTrailingAsciiWhitespace(line);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new response (after a redirect, or the first): forget the last.
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, absl::MaxSplits(' ', 2));
    status_ = 0;
    if (parts.size() >= 2) {
      int code = 0;
      if (absl::SimpleAtoi(parts[1], &code)) status_ = code;
    }
    content_length_ = -1;
    content_type_.clear();
    content_range_.clear();
    response_etag_.clear();
    return;
  }
  size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return;
  std::string name = absl::AsciiStrToLower(line.substr(0, colon));
  absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
  if (name == "content-length") {
    int64_t v = 0;
    if (absl::SimpleAtoi(value, &v) && v >= 0) content_length_ = v;
  } else if (name == "content-type") {
    content_type_ = std::string(value);
  } else if (name == "content-range") {
    content_range_ = std::string(value);
  } else if (name == "etag") {
    response_etag_ = std::string(value);
  }
}

bool Transfer::Restart() {
  if (ftruncate(fd_, 0) != 0 || lseek(fd_, 0, SEEK_SET) != 0) {
    failure_ = Failure(
        "io",
        absl::InternalError(absl::StrCat("local file: ", std::strerror(errno))),
        /*permanent=*/true);
    return false;
  }
  hash_.Reset();
  offset_ = 0;
  return true;
}

bool Transfer::BodyStarts() {
  if (status_ == 404 || status_ == 410) {
    failure_ = Failure("not_found", absl::NotFoundError(absl::StrCat(
                                        "upstream answered ", status_)));
    return false;
  }
  if (status_ != 200 && !(status_ == 206 && range_requested_)) {
    // Client errors other than timeouts and rate limits will not heal (a
    // 404 may: a CDN that has not caught up yet).
    bool permanent =
        status_ >= 400 && status_ < 500 && status_ != 408 && status_ != 429;
    failure_ = Failure(
        "http_status",
        absl::UnavailableError(absl::StrCat("upstream answered ", status_)),
        permanent);
    return false;
  }
  if (status_ == 206) {
    // "bytes START-END/TOTAL": it must continue exactly where we stopped.
    int64_t start = -1, total = -1;
    absl::string_view range = content_range_;
    if (absl::ConsumePrefix(&range, "bytes ")) {
      std::vector<absl::string_view> p = absl::StrSplit(range, '/');
      std::vector<absl::string_view> se = absl::StrSplit(p[0], '-');
      if (!absl::SimpleAtoi(se[0], &start)) start = -1;
      if (p.size() == 2 && !absl::SimpleAtoi(p[1], &total)) total = -1;
    }
    if (start != offset_) {
      // Not usable: start over without Range on the next attempt.
      no_range_ = true;
      failure_ = Failure("http_status",
                         absl::UnavailableError("upstream resumed at the wrong "
                                                "offset"));
      return false;
    }
    if (total >= 0) total_ = total;
  } else {
    // 200: the whole file (also when a Range was ignored or the file
    // changed under If-Range).
    if (offset_ > 0 && !Restart()) return false;
    total_ = content_length_;
  }
  if (!response_etag_.empty() && !absl::StartsWith(response_etag_, "W/")) {
    etag_ = response_etag_;
  }
  std::string type = MediaType(content_type_);
  if (!AcceptableType(type)) {
    failure_ = Failure("content_type",
                       absl::FailedPreconditionError(absl::StrCat(
                           "unexpected content type ", Printable(type))),
                       /*permanent=*/true);
    return false;
  }
  if (!type.empty()) served_type_ = type;
  if (total_ >= 0 && job_.expected_size > 0 && total_ != job_.expected_size) {
    failure_ = Failure("size_mismatch",
                       absl::DataLossError(absl::StrCat(
                           "size mismatch: upstream sends ", total_,
                           " bytes, expected ", job_.expected_size)),
                       /*permanent=*/true);
    return false;
  }
  if (total_ > options_.max_bytes) {
    failure_ = Failure(
        "too_large",
        absl::FailedPreconditionError(absl::StrCat(
            "too large: ", total_, " bytes, limit ", options_.max_bytes)),
        /*permanent=*/true);
    return false;
  }
  return true;
}

bool Transfer::Write(absl::string_view bytes) {
  if (offset_ + static_cast<int64_t>(bytes.size()) > options_.max_bytes) {
    failure_ =
        Failure("too_large",
                absl::FailedPreconditionError(absl::StrCat(
                    "too large: more than ", options_.max_bytes, " bytes")),
                /*permanent=*/true);
    return false;
  }
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      failure_ = Failure("io",
                         absl::InternalError(absl::StrCat(
                             "local file: ", std::strerror(errno))),
                         /*permanent=*/true);
      return false;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  hash_.Update(bytes);
  offset_ += static_cast<int64_t>(bytes.size());
  return true;
}

std::string Transfer::StoredType() const {
  if (absl::StartsWith(served_type_, "video/")) return served_type_;
  std::string expected = MediaType(job_.expected_content_type);
  if (absl::StartsWith(expected, "video/")) return expected;
  return "video/mp4";
}

std::optional<DownloadFailure> Transfer::Attempt() {
  range_requested_ = offset_ > 0 && !no_range_;
  if (offset_ > 0 && no_range_ && !Restart()) return failure_;
  started_ = false;
  status_ = 0;
  failure_.reset();

  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    return Failure("io", absl::InternalError("curl_easy_init failed"), true);
  }
  curl_slist* headers = nullptr;
  std::string range = absl::StrCat(offset_, "-");
  if (range_requested_) {
    curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());
    if (!etag_.empty()) {
      // A file replaced since the first byte must not be spliced: the
      // server then answers 200 with the whole new file.
      headers =
          curl_slist_append(headers, absl::StrCat("If-Range: ", etag_).c_str());
    }
  }
  curl_easy_setopt(curl, CURLOPT_URL, job_.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "videogen-mirror");
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(
      curl, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT,
                   static_cast<long>(options_.low_speed_bytes));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Seconds(options_.low_speed_time))));
  curl_easy_setopt(curl, CURLOPT_BUFFERSIZE, 256L * 1024);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &Transfer::OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, this);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Transfer::OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, this);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &Transfer::OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, this);
  CURLcode res = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  curl_slist_free_all(headers);
  return Finish(res);
}

std::optional<DownloadFailure> Transfer::Finish(CURLcode res) {
  if (stopped()) {
    return Failure("cancelled", absl::CancelledError("mirror stopped"),
                   /*permanent=*/true);
  }
  // An answer without a body (a bare 404) never reached OnBody.
  if (res == CURLE_OK && !started_) {
    started_ = true;
    if (!BodyStarts()) return failure_;
  }
  if (failure_.has_value()) return failure_;
  switch (res) {
    case CURLE_OK:
      if (total_ >= 0 && offset_ < total_) {
        return Failure("truncated", absl::DataLossError(TruncatedMessage()));
      }
      return std::nullopt;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
      if (offset_ == 0 && !started_) break;
      return Failure("truncated", absl::DataLossError(TruncatedMessage()));
    case CURLE_OPERATION_TIMEDOUT:
      return Failure("timeout", absl::DeadlineExceededError(absl::StrCat(
                                    "timed out after ", offset_, " bytes")));
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return Failure("invalid",
                     absl::InvalidArgumentError("not an http(s) URL"),
                     /*permanent=*/true);
    default:
      break;
  }
  return Failure("network", absl::UnavailableError(absl::StrCat(
                                "download failed: ", curl_easy_strerror(res))));
}

absl::Duration Backoff(const DownloadOptions& options, int failures,
                       std::mt19937_64& rng) {
  absl::Duration d = options.initial_backoff;
  for (int i = 1; i < failures && d < options.max_backoff; ++i) d *= 2;
  d = std::min(d, options.max_backoff);
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return d * jitter(rng);
}

}  // namespace

absl::StatusOr<Downloaded> DownloadToFile(const MirrorJob& job,
                                          const std::string& path,
                                          const DownloadOptions& options,
                                          const absl::Notification* stop,
                                          DownloadFailure* failure) {
  CurlGlobalInit();
  auto fail = [&](DownloadFailure f) -> absl::Status {
    absl::Status s = f.status;
    if (failure != nullptr) *failure = std::move(f);
    return s;
  };
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return fail(Failure("io", absl::InternalError(absl::StrCat(
                                  "local file: ", std::strerror(errno)))));
  }
  Transfer t(job, options, stop, fd);
  std::mt19937_64 rng(std::random_device{}());
  int failures = 0;
  int resumes = 0;
  std::optional<DownloadFailure> last;
  while (true) {
    int64_t before = t.offset();
    last = t.Attempt();
    if (!last.has_value()) break;
    if (last->permanent) break;
    bool progressed = t.offset() > before;
    if (progressed && ++resumes <= options.max_resumes) {
      failures = 0;  // a dropped connection after progress: resume now
      continue;
    }
    if (++failures >= options.attempts) break;
    absl::Duration wait = Backoff(options, failures, rng);
    if (stop != nullptr ? stop->WaitForNotificationWithTimeout(wait)
                        : (absl::SleepFor(wait), false)) {
      last = Failure("cancelled", absl::CancelledError("mirror stopped"));
      break;
    }
  }
  if (!last.has_value()) {
    if (t.offset() == 0) {
      last = Failure("empty", absl::DataLossError("empty body"));
    } else if (job.expected_size > 0 && t.offset() != job.expected_size) {
      last = Failure("size_mismatch",
                     absl::DataLossError(
                         absl::StrCat("size mismatch: got ", t.offset(),
                                      " bytes, expected ", job.expected_size)));
    } else if (fsync(fd) != 0) {
      last = Failure("io", absl::InternalError(absl::StrCat(
                               "local file: ", std::strerror(errno))));
    }
  }
  if (close(fd) != 0 && !last.has_value()) {
    last = Failure("io", absl::InternalError(absl::StrCat(
                             "local file: ", std::strerror(errno))));
  }
  if (last.has_value()) return fail(std::move(*last));
  return t.Result();
}

}  // namespace videogen::media
