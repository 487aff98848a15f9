#include <curl/curl.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/media/curl_init.h"
#include "server/media/media_store.h"
#include "server/media/sha256.h"

namespace videogen::media {
namespace {

namespace fs = std::filesystem;

// SHA-256 of no bytes: the payload hash of GET, HEAD and DELETE.
constexpr char kEmptySha256[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// One S3 request and what came back.
struct Call {
  const char* method = "GET";
  std::string key;
  std::vector<std::string> headers;  // extra, besides the signing ones
  std::string payload_sha256 = kEmptySha256;
  FILE* upload = nullptr;  // PUT body
  int64_t upload_size = 0;
  const ByteSink* sink = nullptr;  // GET body on 2xx

  CURL* curl = nullptr;
  long status = 0;
  std::map<std::string, std::string> response_headers;  // lowercase names
  std::string error_body;                               // non-2xx, bounded
  int64_t received = 0;
  bool sink_stopped = false;
};

size_t OnHeader(char* data, size_t size, size_t n, void* p) {
  auto* call = static_cast<Call*>(p);
  absl::string_view line(data, size * n);
  line = absl::StripTrailingAsciiWhitespace(line);
  if (absl::StartsWith(line, "HTTP/")) {
    call->response_headers.clear();
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    call->response_headers[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * n;
}

size_t OnBody(char* data, size_t size, size_t n, void* p) {
  auto* call = static_cast<Call*>(p);
  absl::string_view bytes(data, size * n);
  // The headers are complete by now, so the status is known.
  long status = 0;
  curl_easy_getinfo(call->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 200 && status < 300 && call->sink != nullptr) {
    call->received += static_cast<int64_t>(bytes.size());
    if (!(*call->sink)(std::string_view(bytes.data(), bytes.size()))) {
      call->sink_stopped = true;
      return 0;
    }
    return bytes.size();
  }
  if (call->error_body.size() < 4096) {
    absl::string_view head = bytes.substr(0, 4096 - call->error_body.size());
    call->error_body.append(head.data(), head.size());
  }
  return bytes.size();
}

size_t OnRead(char* buffer, size_t size, size_t n, void* p) {
  return std::fread(buffer, size, n, static_cast<FILE*>(p));
}

// S3's error code ("SignatureDoesNotMatch") from an XML error body. Only
// the code: the body may echo the canonical request.
std::string ErrorCode(const std::string& body) {
  size_t start = body.find("<Code>");
  size_t end = body.find("</Code>");
  if (start == std::string::npos || end == std::string::npos || end < start) {
    return "";
  }
  std::string code = body.substr(start + 6, end - start - 6);
  for (char c : code) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) return "";
  }
  return code.substr(0, 64);
}

// Thread-safe: immutable after construction; each call uses its own curl
// easy handle.
class S3MediaStore final : public MediaStore {
 public:
  explicit S3MediaStore(S3Options options) : options_(std::move(options)) {
    while (absl::EndsWith(options_.endpoint, "/")) options_.endpoint.pop_back();
    sigv4_ = absl::StrCat("aws:amz:", options_.region, ":s3");
  }

  const std::string& staging_dir() const override {
    return options_.staging_dir;
  }

  absl::Status Put(std::string_view id, const std::string& staged_path,
                   const MediaObject& object) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    std::string sha = object.sha256;
    if (sha.empty()) {
      absl::StatusOr<std::string> computed = Sha256File(staged_path);
      if (!computed.ok()) return computed.status();
      sha = *computed;
    }
    FILE* f = std::fopen(staged_path.c_str(), "rb");
    if (f == nullptr) return absl::InternalError("media store: open staged");
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
      std::fclose(f);
      return absl::InternalError("media store: stat staged");
    }
    Call call;
    call.method = "PUT";
    call.key = Key(id);
    call.payload_sha256 = sha;
    call.upload = f;
    call.upload_size = st.st_size;
    call.headers.push_back(absl::StrCat(
        "Content-Type: ",
        object.content_type.empty() ? "video/mp4" : object.content_type));
    call.headers.push_back(absl::StrCat("x-amz-meta-sha256: ", sha));
    absl::Status s = Perform(call);
    std::fclose(f);
    return s;
  }

  absl::StatusOr<MediaObject> Open(std::string_view id) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    Call call;
    call.method = "HEAD";
    call.key = Key(id);
    if (absl::Status s = Perform(call); !s.ok()) return s;
    MediaObject out;
    auto header = [&](const std::string& name) {
      auto it = call.response_headers.find(name);
      return it == call.response_headers.end() ? std::string() : it->second;
    };
    if (!absl::SimpleAtoi(header("content-length"), &out.size)) {
      return absl::UnavailableError("s3: HEAD without Content-Length");
    }
    out.content_type = header("content-type");
    if (out.content_type.empty()) out.content_type = "video/mp4";
    out.sha256 = header("x-amz-meta-sha256");
    return out;
  }

  absl::Status Read(std::string_view id, int64_t offset, int64_t length,
                    const ByteSink& sink) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    if (offset < 0 || length < 0) {
      return absl::OutOfRangeError("range outside the file");
    }
    if (length == 0) return absl::OkStatus();
    Call call;
    call.method = "GET";
    call.key = Key(id);
    call.sink = &sink;
    call.headers.push_back(
        absl::StrCat("Range: bytes=", offset, "-", offset + length - 1));
    absl::Status s = Perform(call);
    if (call.sink_stopped) return absl::OkStatus();
    if (!s.ok()) return s;
    if (call.received != length) {
      return absl::OutOfRangeError(absl::StrCat("range outside the file: got ",
                                                call.received, " of ", length,
                                                " bytes"));
    }
    return absl::OkStatus();
  }

  absl::Status Remove(std::string_view id) override {
    if (!ValidMediaId(id)) return absl::InvalidArgumentError("bad media id");
    Call call;
    call.method = "DELETE";
    call.key = Key(id);
    absl::Status s = Perform(call);
    if (absl::IsNotFound(s)) return absl::OkStatus();
    return s;
  }

  std::optional<int64_t> StoredBytes() const override { return std::nullopt; }

 private:
  std::string Key(std::string_view id) const {
    return options_.prefix + std::string(id);
  }

  absl::Status Perform(Call& call) {
    CURL* curl = curl_easy_init();
    if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
    std::string url =
        absl::StrCat(options_.endpoint, "/", options_.bucket, "/", call.key);
    curl_slist* headers = nullptr;
    // libcurl signs the payload hash given here (S3 requires the header).
    headers = curl_slist_append(
        headers,
        absl::StrCat("x-amz-content-sha256: ", call.payload_sha256).c_str());
    if (!options_.session_token.empty()) {
      headers = curl_slist_append(
          headers,
          absl::StrCat("x-amz-security-token: ", options_.session_token)
              .c_str());
    }
    for (const std::string& h : call.headers) {
      headers = curl_slist_append(headers, h.c_str());
    }
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "videogen-media");
    curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, sigv4_.c_str());
    curl_easy_setopt(curl, CURLOPT_USERNAME, options_.access_key_id.c_str());
    curl_easy_setopt(curl, CURLOPT_PASSWORD,
                     options_.secret_access_key.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(
        curl, CURLOPT_TIMEOUT_MS,
        static_cast<long>(absl::ToInt64Milliseconds(options_.timeout)));
    curl_easy_setopt(
        curl, CURLOPT_CONNECTTIMEOUT_MS,
        static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &OnHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &call);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &call);
    if (absl::string_view(call.method) == "PUT") {
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, &OnRead);
      curl_easy_setopt(curl, CURLOPT_READDATA, call.upload);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE,
                       static_cast<curl_off_t>(call.upload_size));
    } else if (absl::string_view(call.method) == "HEAD") {
      curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (absl::string_view(call.method) == "DELETE") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    call.curl = curl;
    CURLcode res = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &call.status);
    curl_easy_cleanup(curl);
    call.curl = nullptr;
    curl_slist_free_all(headers);
    if (call.sink_stopped) return absl::OkStatus();
    if (res != CURLE_OK) {
      return absl::UnavailableError(
          absl::StrCat("s3: ", curl_easy_strerror(res)));
    }
    return StatusFor(call);
  }

  static absl::Status StatusFor(const Call& call) {
    if (call.status >= 200 && call.status < 300) return absl::OkStatus();
    std::string code = ErrorCode(call.error_body);
    std::string msg = absl::StrCat("s3 answered ", call.status,
                                   code.empty() ? "" : " ", code);
    switch (call.status) {
      case 404:
        return absl::NotFoundError(msg);
      case 403:
        return absl::PermissionDeniedError(msg);
      case 416:
        return absl::OutOfRangeError(msg);
      default:
        return absl::UnavailableError(msg);
    }
  }

  S3Options options_;
  std::string sigv4_;
};

bool SafePrefix(const std::string& prefix) {
  for (char c : prefix) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '-' && c != '.' && c != '/') {
      return false;
    }
  }
  return !absl::StartsWith(prefix, "/");
}

}  // namespace

absl::Status S3CredentialsFromEnv(S3Options& options) {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
  };
  options.access_key_id = env("AWS_ACCESS_KEY_ID");
  options.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
  options.session_token = env("AWS_SESSION_TOKEN");
  if (options.access_key_id.empty()) {
    return absl::FailedPreconditionError("AWS_ACCESS_KEY_ID is not set");
  }
  if (options.secret_access_key.empty()) {
    return absl::FailedPreconditionError("AWS_SECRET_ACCESS_KEY is not set");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MediaStore>> NewS3MediaStore(S3Options options) {
  if (!absl::StartsWith(options.endpoint, "http://") &&
      !absl::StartsWith(options.endpoint, "https://")) {
    return absl::InvalidArgumentError("--s3_endpoint must be http(s)://...");
  }
  if (options.bucket.empty() || !SafePrefix(options.bucket) ||
      absl::StrContains(options.bucket, "/")) {
    return absl::InvalidArgumentError("bad or missing S3 bucket name");
  }
  if (options.region.empty() || !SafePrefix(options.region)) {
    return absl::InvalidArgumentError("bad or missing S3 region");
  }
  if (!SafePrefix(options.prefix)) {
    return absl::InvalidArgumentError(
        "S3 key prefix must be [A-Za-z0-9_.-/] and not start with /");
  }
  if (options.access_key_id.empty() || options.secret_access_key.empty()) {
    return absl::FailedPreconditionError("S3 credentials are not set");
  }
  if (options.staging_dir.empty()) {
    return absl::InvalidArgumentError("S3 staging dir is not set");
  }
  std::error_code ec;
  fs::create_directories(options.staging_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("staging dir ", options.staging_dir, ": ", ec.message()));
  }
  // Downloads that a crash interrupted.
  for (const fs::directory_entry& e :
       fs::directory_iterator(options.staging_dir, ec)) {
    if (absl::StartsWith(e.path().filename().string(), ".tmp-")) {
      std::error_code ignored;
      fs::remove(e.path(), ignored);
    }
  }
  CurlGlobalInit();
  return std::make_unique<S3MediaStore>(std::move(options));
}

}  // namespace videogen::media
