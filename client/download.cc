#include "client/download.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "client/render.h"

namespace videogen::client {
namespace {

constexpr int64_t kUnknown = -1;

int64_t FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_size;
}

// State of one HTTP transfer, shared with libcurl's callbacks.
struct Transfer {
  CURL* curl = nullptr;
  std::string path;
  int64_t offset = 0;                 // bytes requested to skip (Range)
  int64_t range_total = kUnknown;     // from Content-Range
  int64_t content_length = kUnknown;  // of this response's body
  long status = 0;                    // NOLINT(runtime/int): libcurl's type
  FILE* file = nullptr;
  bool file_error = false;
  std::string error_body;
  bool progress = false;
  absl::Time start = absl::Now();
  absl::Time last_draw = absl::InfinitePast();
};

// "bytes 100-999/1000" -> 1000.
int64_t ParseContentRangeTotal(absl::string_view value) {
  size_t slash = value.rfind('/');
  int64_t total = kUnknown;
  if (slash == absl::string_view::npos) return kUnknown;
  if (!absl::SimpleAtoi(value.substr(slash + 1), &total)) return kUnknown;
  return total;
}

size_t OnHeader(char* data, size_t size, size_t n, void* arg) {
  auto* t = static_cast<Transfer*>(arg);
  absl::string_view line(data, size * n);
  line = absl::StripAsciiWhitespace(line);
  if (absl::StartsWith(line, "HTTP/")) {
    t->range_total = t->content_length = kUnknown;  // a new response
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return size * n;
  std::string name = absl::AsciiStrToLower(line.substr(0, colon));
  absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
  int64_t length = 0;
  if (name == "content-range") {
    t->range_total = ParseContentRangeTotal(value);
  } else if (name == "content-length" && absl::SimpleAtoi(value, &length)) {
    t->content_length = length;
  }
  return size * n;
}

// Opens the file on the first body byte, once the status code is known.
bool OpenOutput(Transfer* t) {
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
  if (t->status >= 300) return true;  // body is an error page
  if (t->status == 206) {
    t->file = std::fopen(t->path.c_str(), "ab");
  } else {
    t->offset = 0;  // whole file: start over
    t->file = std::fopen(t->path.c_str(), "wb");
  }
  t->file_error = t->file == nullptr;
  return !t->file_error;
}

size_t OnBody(char* data, size_t size, size_t n, void* arg) {
  auto* t = static_cast<Transfer*>(arg);
  size_t bytes = size * n;
  if (t->file == nullptr && t->status == 0 && !OpenOutput(t)) return 0;
  if (t->status >= 300) {
    if (t->error_body.size() < 512) t->error_body.append(data, bytes);
    return bytes;
  }
  if (std::fwrite(data, 1, bytes, t->file) != bytes) {
    t->file_error = true;
    return 0;
  }
  return bytes;
}

void DrawProgress(Transfer* t, int64_t now_bytes, int64_t total, bool final) {
  absl::Time now = absl::Now();
  if (!final && now - t->last_draw < absl::Milliseconds(100)) return;
  t->last_draw = now;
  double secs = std::max(absl::ToDoubleSeconds(now - t->start), 1e-3);
  std::string rate =
      HumanBytes(static_cast<int64_t>((now_bytes - t->offset) / secs));
  std::string line;
  if (total > 0) {
    int width = 30;
    int filled =
        static_cast<int>(width * std::min(1.0, 1.0 * now_bytes / total));
    line =
        absl::StrFormat("[%s%s] %3d%%  %s / %s  %s/s", std::string(filled, '#'),
                        std::string(width - filled, '-'),
                        static_cast<int>(100.0 * now_bytes / total),
                        HumanBytes(now_bytes), HumanBytes(total), rate);
  } else {
    line = absl::StrFormat("%s  %s/s", HumanBytes(now_bytes), rate);
  }
  std::cout << "\r\033[2K" << line << std::flush;
}

// The full size of the file, from this response's headers.
int64_t FullSize(const Transfer& t) {
  if (t.range_total >= 0) return t.range_total;
  if (t.content_length < 0) return kUnknown;
  if (t.status == 206) return t.offset + t.content_length;
  return t.content_length;
}

int OnProgress(void* arg, curl_off_t, curl_off_t dlnow, curl_off_t,
               curl_off_t) {
  auto* t = static_cast<Transfer*>(arg);
  if (t->status == 0 || t->status >= 300) return 0;
  DrawProgress(t, t->offset + dlnow, FullSize(*t), false);
  return 0;
}

absl::Status HttpError(long status, const std::string& body,  // NOLINT
                       const std::string& source) {
  std::string msg = absl::StrCat("HTTP ", status, " from ", source);
  if (!body.empty()) absl::StrAppend(&msg, ": ", body.substr(0, 200));
  if (status == 404 || status == 410) return absl::NotFoundError(msg);
  if (status == 401) return absl::UnauthenticatedError(msg);
  if (status == 403) return absl::PermissionDeniedError(msg);
  if (status == 429) return absl::ResourceExhaustedError(msg);
  if (status >= 500) return absl::UnavailableError(msg);
  return absl::UnknownError(msg);
}

absl::Status CurlError(CURLcode code, const char* detail) {
  std::string msg = absl::StrCat("download failed: ", curl_easy_strerror(code));
  if (detail[0] != '\0') absl::StrAppend(&msg, " (", detail, ")");
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::DeadlineExceededError(msg);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

void Configure(CURL* curl, Transfer* t, const DownloadOptions& options,
               curl_slist* headers) {
  curl_easy_setopt(curl, CURLOPT_URL, options.url.c_str());
  // With a key, a redirect could carry it elsewhere: not followed.
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION,
                   options.authorization.empty() ? 1L : 0L);
  if (headers != nullptr) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(
                       absl::ToInt64Seconds(options.stall_timeout)));  // NOLINT
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(curl, CURLOPT_RESUME_FROM_LARGE,
                   static_cast<curl_off_t>(t->offset));
  if (t->progress) {
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, t);
  }
}

// One HTTP attempt starting at `offset`. Sets *range_refused when the server
// cannot serve the range (so the caller starts over).
absl::StatusOr<Transfer> Attempt(const DownloadOptions& options, int64_t offset,
                                 bool* range_refused) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  Transfer t;
  t.curl = curl;
  t.path = options.path;
  t.offset = offset;
  t.progress = options.progress;
  char detail[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, detail);
  curl_slist* headers = nullptr;
  if (!options.authorization.empty()) {
    const std::string header =
        absl::StrCat("Authorization: ", options.authorization);
    headers = curl_slist_append(nullptr, header.c_str());
  }
  Configure(curl, &t, options, headers);
  CURLcode code = curl_easy_perform(curl);
  if (t.status == 0) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &t.status);
  curl_easy_cleanup(curl);
  curl_slist_free_all(headers);
  t.curl = nullptr;
  if (t.file == nullptr && t.status < 300 && code == CURLE_OK &&
      (t.status != 206 || offset == 0)) {
    t.file = std::fopen(options.path.c_str(), "wb");  // empty body
    t.offset = 0;
  }
  if (t.file != nullptr) std::fclose(t.file);
  t.file = nullptr;
  if (t.progress && t.status < 300) std::cout << "\r\033[2K" << std::flush;
  *range_refused = offset > 0 && (code == CURLE_RANGE_ERROR || t.status == 416);
  if (*range_refused) return t;
  if (t.file_error) {
    return absl::InternalError(absl::StrCat("cannot write ", options.path));
  }
  if (t.status >= 300) {
    return HttpError(t.status, t.error_body, options.source_name);
  }
  if (code != CURLE_OK) return CurlError(code, detail);
  return t;
}

absl::Status CheckSize(int64_t bytes, int64_t header_total, int64_t expected,
                       const std::string& path) {
  if (header_total >= 0 && bytes != header_total) {
    return absl::DataLossError(
        absl::StrCat(path, " has ", bytes, " bytes but the server announced ",
                     header_total, "; run the same command again to resume"));
  }
  if (expected > 0 && bytes != expected) {
    return absl::DataLossError(absl::StrCat(
        path, " has ", bytes, " bytes but the generation says ", expected));
  }
  return absl::OkStatus();
}

// Download without the checksum.
absl::StatusOr<DownloadResult> Fetch(const DownloadOptions& options) {
  static const CURLcode init = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (init != CURLE_OK) return absl::InternalError("curl_global_init failed");
  int64_t offset = FileSize(options.path);
  if (options.expected_size > 0 && offset > options.expected_size) offset = 0;
  DownloadResult result;
  result.expected_size = options.expected_size;
  if (options.expected_size > 0 && offset == options.expected_size) {
    result.bytes = result.resumed_from = offset;  // already complete
    return result;
  }
  bool range_refused = false;
  absl::StatusOr<Transfer> t = Attempt(options, offset, &range_refused);
  if (t.ok() && range_refused && t->status == 416 && t->range_total == offset) {
    // "bytes */N" with N = what we have: the file is already complete.
    result.bytes = result.resumed_from = result.expected_size = offset;
    return result;
  }
  if (t.ok() && range_refused) t = Attempt(options, 0, &range_refused);
  if (!t.ok()) return t.status();
  result.resumed_from = t->offset;
  result.bytes = FileSize(options.path);
  int64_t full = FullSize(*t);
  absl::Status size_ok =
      CheckSize(result.bytes, full, options.expected_size, options.path);
  if (!size_ok.ok()) return size_ok;
  if (result.expected_size == 0 && full > 0) result.expected_size = full;
  return result;
}

}  // namespace

absl::StatusOr<std::string> FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(),
                                                              EVP_MD_CTX_free);
  if (ctx == nullptr ||
      EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("SHA-256 is not available");
  }
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof(buffer));
    if (in.gcount() > 0 &&
        EVP_DigestUpdate(ctx.get(), buffer, static_cast<size_t>(in.gcount())) !=
            1) {
      return absl::InternalError("SHA-256 failed");
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &length) != 1) {
    return absl::InternalError("SHA-256 failed");
  }
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    absl::StrAppendFormat(&hex, "%02x", digest[i]);
  }
  return hex;
}

namespace {

// OK when the file at `path` has SHA-256 `want`; else DATA_LOSS, and the
// file is removed: resuming it could never succeed.
absl::Status CheckSha256(const std::string& path, const std::string& want) {
  absl::StatusOr<std::string> actual = FileSha256(path);
  if (!actual.ok()) return actual.status();
  if (*actual == absl::AsciiStrToLower(want)) return absl::OkStatus();
  std::remove(path.c_str());
  return absl::DataLossError(absl::StrCat(path, " has SHA-256 ", *actual,
                                          " but the server's copy has ", want,
                                          "; the file was removed"));
}

}  // namespace

absl::StatusOr<DownloadResult> Download(const DownloadOptions& options) {
  absl::StatusOr<DownloadResult> result = Fetch(options);
  if (!result.ok() || options.sha256.empty()) return result;
  absl::Status checked = CheckSha256(options.path, options.sha256);
  if (checked.code() == absl::StatusCode::kDataLoss &&
      result->resumed_from > 0) {
    // The bytes that were on disk before may be another file's (a stale
    // download under the same name): once more, from nothing.
    if (options.note) {
      options.note(absl::StrCat(checked.message(),
                                "; downloading it again from the start"));
    }
    result = Fetch(options);
    if (!result.ok()) return result;
    checked = CheckSha256(options.path, options.sha256);
  }
  if (!checked.ok()) return checked;
  result->sha256_verified = true;
  return result;
}

}  // namespace videogen::client
