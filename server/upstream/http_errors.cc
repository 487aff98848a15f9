#include "server/upstream/http_errors.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "server/upstream/parse.h"

namespace videogen::upstream {
namespace {

// " (upstream says: ...; requestId X)" or "" when the body said nothing.
std::string Detail(const ErrorBody& e) {
  std::string out;
  if (!e.message.empty())
    absl::StrAppend(&out, ": upstream says \"", e.message, "\"");
  if (!e.request_id.empty()) {
    absl::StrAppend(&out, " (upstream requestId ", e.request_id, ")");
  }
  return out;
}

std::string Attempts(int attempts) {
  return attempts > 1 ? absl::StrCat(" after ", attempts, " attempts") : "";
}

std::string What(CallKind kind, absl::string_view upstream_id) {
  switch (kind) {
    case CallKind::kSubmit:
      return "create request";
    case CallKind::kLogs:
      return "usage-log query";
    case CallKind::kPoll:
      break;
  }
  return absl::StrCat("poll of generation \"", upstream_id, "\"");
}

// The upstream refused the request: it made nothing, whatever the call.
absl::Status Refusal(CallKind kind, long http_status, const std::string& head) {
  switch (http_status) {
    case 400:
    case 413:
    case 422:
      return absl::InvalidArgumentError(absl::StrCat(
          head, kind == CallKind::kLogs
                    ? ". The upstream rejected the query (window at most 92 "
                      "days, start before end, known filters)."
                    : ". The upstream rejected the request body; fix the "
                      "request (it is not retried)."));
    case 401:
      return absl::UnauthenticatedError(
          absl::StrCat(head,
                       ". The API key was refused; check AIMLAPI_KEY or "
                       "--api_key_file."));
    case 402:
    case 403:
      return absl::FailedPreconditionError(absl::StrCat(
          head,
          ". The account may be out of credits or the key may lack "
          "access to this model; top up or check the key's "
          "permissions."));
    case 404:
      if (kind == CallKind::kPoll) {
        return absl::NotFoundError(absl::StrCat(
            head,
            ". The upstream no longer knows this job; it is lost upstream."));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          head, ". The endpoint does not exist; check --upstream_url",
          kind == CallKind::kSubmit ? " and the endpoint family." : "."));
    case 429:
      return absl::ResourceExhaustedError(absl::StrCat(
          head,
          ". The upstream's rate or concurrency limit was hit; lower "
          "the request rate or concurrency, or raise the account's "
          "limits."));
    default:
      return absl::FailedPreconditionError(absl::StrCat(
          head, ". This answer is not expected; check --upstream_url."));
  }
}

bool IsRefusal(long http_status) {
  return http_status >= 400 && http_status < 500 && http_status != 408;
}

}  // namespace

bool IsRetryableHttp(CallKind kind, long http_status) {
  switch (kind) {
    case CallKind::kSubmit:
      return http_status == 429;
    case CallKind::kLogs:
      return http_status == 408 || (http_status >= 500 && http_status <= 599);
    case CallKind::kPoll:
      break;
  }
  return http_status == 408 || http_status == 429 ||
         (http_status >= 500 && http_status <= 599);
}

absl::Status HttpError(CallKind kind, long http_status, absl::string_view body,
                       int attempts, absl::string_view upstream_id,
                       absl::string_view secret) {
  const ErrorBody e = ParseErrorBody(body);
  const std::string head =
      absl::StrCat("upstream answered HTTP ", http_status, " to the ",
                   What(kind, upstream_id), Attempts(attempts), Detail(e));
  absl::Status status;
  if (IsRefusal(http_status)) {
    status = Refusal(kind, http_status, head);
  } else if (kind == CallKind::kSubmit) {
    // 408, 5xx, 3xx (a 303 after a POST is the classic "created, see
    // there"), 1xx: the request reached something that may have acted.
    status = absl::UnknownError(absl::StrCat(head, "; ", kMayHaveCreated, "."));
  } else if (http_status == 408 || http_status == 504) {
    status = absl::DeadlineExceededError(
        absl::StrCat(head, ". The upstream timed out; try again later."));
  } else if (http_status >= 500) {
    status = absl::UnavailableError(
        absl::StrCat(head, ". The upstream is failing; try again later."));
  } else {
    status = absl::FailedPreconditionError(absl::StrCat(
        head, ". This answer is not expected; check --upstream_url."));
  }
  return RedactStatus(status, secret);
}

absl::Status WithRetryAfter(absl::Status status, absl::Duration delay) {
  const int64_t seconds = absl::ToInt64Seconds(
      absl::Ceil(std::max(delay, absl::ZeroDuration()), absl::Seconds(1)));
  status.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(seconds)));
  return status;
}

std::optional<absl::Duration> RetryAfterOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryAfterPayload);
  int64_t seconds = 0;
  if (!payload.has_value() ||
      !absl::SimpleAtoi(std::string(*payload), &seconds) || seconds < 0) {
    return std::nullopt;
  }
  return absl::Seconds(seconds);
}

std::string Redact(std::string text, absl::string_view secret) {
  if (secret.empty()) return text;
  return absl::StrReplaceAll(text, {{secret, "[redacted]"}});
}

absl::Status RedactStatus(const absl::Status& status,
                          absl::string_view secret) {
  if (status.ok() || secret.empty() ||
      status.message().find(secret) == absl::string_view::npos) {
    return status;
  }
  absl::Status out(status.code(),
                   Redact(std::string(status.message()), secret));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& p) {
    out.SetPayload(url, p);
  });
  return out;
}

}  // namespace videogen::upstream
