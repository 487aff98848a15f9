#include "server/api/service.h"

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/api/log.h"
#include "server/api/methods.h"
#include "server/api/request_errors.h"
#include "server/api/status_map.h"
#include "server/auth/grpc_auth.h"

namespace videogen::api {
namespace {

// A reactor that finishes a unary call at once with `status`.
grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

bool IsValidTraceParent(const std::string& tp) {
  // version "00", 32 hex trace id, 16 hex span id, 2 hex flags.
  if (tp.size() != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-') {
    return false;
  }
  for (size_t i = 0; i < tp.size(); ++i) {
    if (i == 2 || i == 35 || i == 52) continue;
    if (!absl::ascii_isxdigit(tp[i]) || absl::ascii_isupper(tp[i])) {
      return false;
    }
  }
  return tp.substr(3, 32) != std::string(32, '0');
}

// What a failed create answers. A quota refusal carries google.rpc
// QuotaFailure / ErrorInfo / RetryInfo details, so clients can back off
// precisely.
grpc::Status CreateStatus(const auth::Principal& who,
                          const absl::Status& status) {
  if (status.code() == absl::StatusCode::kResourceExhausted) {
    const std::string_view limit = auth::LimitNamedIn(
        std::string_view(status.message().data(), status.message().size()));
    if (!limit.empty()) {
      const absl::Duration retry_after = limit == auth::kCreatesPerMinute
                                             ? absl::Minutes(1)
                                             : absl::ZeroDuration();
      return auth::QuotaExceededStatus(status,
                                       absl::StrCat("tenant:", who.tenant),
                                       std::string(limit), retry_after);
    }
  }
  return ToGrpcStatus(status);
}

}  // namespace

std::string TraceParentOf(const grpc::CallbackServerContext& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("traceparent");
  if (it != md.end()) {
    std::string tp(it->second.data(), it->second.size());
    if (IsValidTraceParent(tp)) return tp;
  }
  absl::BitGen gen;
  return absl::StrFormat("00-%016x%016x-%016x-01", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen));
}

VideoGenerationService::VideoGenerationService(Gateway* gateway,
                                               auth::Authenticator* auth,
                                               StreamRegistry* registry)
    : gateway_(gateway), auth_(auth), registry_(registry) {}

absl::StatusOr<auth::Principal> VideoGenerationService::Who(
    grpc::CallbackServerContext* context) {
  return auth_->Authenticate(auth::AuthorizationOf(*context));
}

StreamReactor* VideoGenerationService::NewStream(
    const absl::StatusOr<auth::Principal>& who, const absl::Status& parsed,
    bool ends_on_terminal, const char* method) {
  auto* reactor =
      new StreamReactor(gateway_, registry_, who.ok() ? who->tenant : "",
                        ends_on_terminal, FullMethodName(method));
  if (reactor->registered() && !parsed.ok()) {
    reactor->stream()->Abort(ToGrpcStatus(parsed));
  } else if (reactor->registered() && !who.ok()) {
    reactor->stream()->Abort(ToGrpcStatus(who.status()));
  }
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VideoGenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* wire) {
  v1::GenerateRequest request;
  const absl::Status parsed = ParseRequest(*wire, &request);
  absl::StatusOr<auth::Principal> who = Who(context);
  StreamReactor* reactor =
      NewStream(who, parsed, /*ends_on_terminal=*/true, "Generate");
  if (!reactor->registered() || !parsed.ok() || !who.ok()) return reactor;
  std::weak_ptr<EventStream> weak = reactor->stream();
  core::RequestContext ctx{TraceParentOf(*context)};
  gateway_->Create(*who, std::move(request), ctx,
                   [weak, who = *who](absl::StatusOr<core::GenerationPtr> g) {
                     auto stream = weak.lock();
                     if (stream == nullptr) return;  // client already gone
                     if (!g.ok()) {
                       stream->Abort(CreateStatus(who, g.status()));
                       return;
                     }
                     stream->WatchOne(who, (*g)->id(), 0);
                   });
  return reactor;
}

grpc::ServerUnaryReactor* VideoGenerationService::CreateGeneration(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
    v1::Generation* response) {
  absl::StatusOr<auth::Principal> who = Who(context);
  if (!who.ok()) return FinishNow(context, who.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  core::RequestContext ctx{TraceParentOf(*context)};
  gateway_->Create(
      *who, *request, ctx,
      [reactor, response, who = *who](absl::StatusOr<core::GenerationPtr> g) {
        if (g.ok()) *response = **g;
        reactor->Finish(g.ok() ? grpc::Status::OK
                               : CreateStatus(who, g.status()));
      });
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>*
VideoGenerationService::WatchGeneration(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* wire) {
  v1::WatchGenerationRequest request;
  const absl::Status parsed = ParseRequest(*wire, &request);
  absl::StatusOr<auth::Principal> who = Who(context);
  StreamReactor* reactor =
      NewStream(who, parsed, /*ends_on_terminal=*/true, "WatchGeneration");
  if (!reactor->registered() || !parsed.ok() || !who.ok()) return reactor;
  reactor->stream()->WatchOne(*who, request.id(), request.after_revision());
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>*
VideoGenerationService::WatchGenerations(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* wire) {
  v1::WatchGenerationsRequest request;
  const absl::Status parsed = ParseRequest(*wire, &request);
  absl::StatusOr<auth::Principal> who = Who(context);
  StreamReactor* reactor =
      NewStream(who, parsed, /*ends_on_terminal=*/false, "WatchGenerations");
  if (!reactor->registered() || !parsed.ok() || !who.ok()) return reactor;
  reactor->stream()->WatchAll(*who, request);
  return reactor;
}

grpc::ServerUnaryReactor* VideoGenerationService::GetGeneration(
    grpc::CallbackServerContext* context,
    const v1::GetGenerationRequest* request, v1::Generation* response) {
  absl::StatusOr<auth::Principal> who = Who(context);
  if (!who.ok()) return FinishNow(context, who.status());
  absl::StatusOr<core::GenerationPtr> g = gateway_->Get(*who, request->id());
  if (g.ok()) *response = **g;
  return FinishNow(context, g.status());
}

grpc::ServerUnaryReactor* VideoGenerationService::ListGenerations(
    grpc::CallbackServerContext* context,
    const v1::ListGenerationsRequest* request,
    v1::ListGenerationsResponse* response) {
  absl::StatusOr<auth::Principal> who = Who(context);
  if (!who.ok()) return FinishNow(context, who.status());
  absl::StatusOr<v1::ListGenerationsResponse> page =
      gateway_->List(*who, *request);
  if (page.ok()) *response = *std::move(page);
  return FinishNow(context, page.status());
}

grpc::ServerUnaryReactor* VideoGenerationService::CancelGeneration(
    grpc::CallbackServerContext* context,
    const v1::CancelGenerationRequest* request, v1::Generation* response) {
  absl::StatusOr<auth::Principal> who = Who(context);
  if (!who.ok()) return FinishNow(context, who.status());
  absl::StatusOr<core::GenerationPtr> g = gateway_->Cancel(*who, request->id());
  if (g.ok()) *response = **g;
  return FinishNow(context, g.status());
}

}  // namespace videogen::api
