#include "server/upstream/http_errors.h"

#include <string>

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

}  // namespace

bool IsRetryableHttp(CallKind kind, long http_status) {
  if (http_status == 408 || http_status == 429) return true;
  if (http_status == 504) return kind == CallKind::kPoll;
  return http_status >= 500 && http_status <= 599;
}

absl::Status HttpError(CallKind kind, long http_status, absl::string_view body,
                       int attempts, absl::string_view upstream_id,
                       absl::string_view secret) {
  const ErrorBody e = ParseErrorBody(body);
  const std::string what =
      kind == CallKind::kSubmit
          ? std::string("create request")
          : absl::StrCat("poll of generation \"", upstream_id, "\"");
  const std::string head =
      absl::StrCat("upstream answered HTTP ", http_status, " to the ", what,
                   Attempts(attempts), Detail(e));
  absl::Status status;
  switch (http_status) {
    case 400:
    case 413:
    case 422:
      status = absl::InvalidArgumentError(absl::StrCat(
          head,
          ". The upstream rejected the request body; fix the request "
          "(it is not retried)."));
      break;
    case 401:
      status = absl::UnauthenticatedError(
          absl::StrCat(head,
                       ". The API key was refused; check AIMLAPI_KEY or "
                       "--api_key_file."));
      break;
    case 402:
    case 403:
      status = absl::FailedPreconditionError(absl::StrCat(
          head,
          ". The account may be out of credits or the key may lack "
          "access to this model; top up or check the key's "
          "permissions."));
      break;
    case 404:
      status = kind == CallKind::kPoll
                   ? absl::NotFoundError(absl::StrCat(
                         head,
                         ". The upstream no longer knows this job; it is "
                         "lost upstream."))
                   : absl::FailedPreconditionError(absl::StrCat(
                         head,
                         ". The create endpoint does not exist; check "
                         "--upstream_url and the endpoint family."));
      break;
    case 408:
    case 504:
      status = absl::DeadlineExceededError(absl::StrCat(
          head, kind == CallKind::kSubmit
                    ? ". The upstream timed out; the job may or may not exist "
                      "upstream."
                    : ". The upstream timed out; try again later."));
      break;
    case 429:
      status = absl::ResourceExhaustedError(absl::StrCat(
          head,
          ". The upstream's rate or concurrency limit was hit; lower "
          "the request rate or concurrency, or raise the account's "
          "limits."));
      break;
    default:
      if (http_status >= 500) {
        status = absl::UnavailableError(
            absl::StrCat(head, ". The upstream is failing; try again later."));
      } else {
        status = absl::FailedPreconditionError(absl::StrCat(
            head, ". This answer is not expected; check --upstream_url."));
      }
  }
  return RedactStatus(status, secret);
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
