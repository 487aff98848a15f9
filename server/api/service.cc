#include "server/api/service.h"

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "server/api/log.h"
#include "server/api/page_token.h"
#include "server/api/status_map.h"

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

absl::StatusOr<store::ListQuery> ToListQuery(
    const v1::ListGenerationsRequest& request) {
  store::ListQuery query;
  if (absl::Status s =
          Validator::ValidatePageSize(request.page_size(), &query.page_size);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Validator::ValidateLabelFilter(request.labels());
      !s.ok()) {
    return s;
  }
  for (int state : request.states()) {
    query.states.push_back(static_cast<v1::Generation::State>(state));
  }
  query.labels.insert(request.labels().begin(), request.labels().end());
  if (!request.page_token().empty()) {
    absl::StatusOr<store::Cursor> cursor =
        DecodePageToken(request.page_token(), FilterFingerprint(query));
    if (!cursor.ok()) return cursor.status();
    query.after = *std::move(cursor);
  }
  return query;
}

// One log line per accepted or refused creation, correlated by trace id.
void LogCreate(const v1::GenerateRequest& req, const core::RequestContext& ctx,
               const absl::StatusOr<core::GenerationPtr>& result) {
  nlohmann::json fields = {{"request_id", req.request_id()},
                           {"model", req.model()},
                           {"trace_id", ctx.traceparent.substr(3, 32)}};
  if (result.ok()) {
    fields["generation_id"] = (*result)->id();
    fields["upstream_id"] = (*result)->upstream_id();
    Log("info", "generation_created", std::move(fields));
  } else {
    fields["code"] = absl::StatusCodeToString(result.status().code());
    fields["error"] = std::string(result.status().message());
    Log("warn", "generation_rejected", std::move(fields));
  }
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

VideoGenerationService::VideoGenerationService(core::Tracker* tracker,
                                               StreamRegistry* registry,
                                               Validator validator)
    : tracker_(tracker),
      registry_(registry),
      validator_(std::move(validator)) {}

StreamReactor* VideoGenerationService::NewStream(bool ends_on_terminal) {
  return new StreamReactor(tracker_, registry_, ends_on_terminal);
}

grpc::ServerWriteReactor<v1::GenerationEvent>* VideoGenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  StreamReactor* reactor = NewStream(/*ends_on_terminal=*/true);
  if (!reactor->registered()) return reactor;
  v1::GenerateRequest req = *request;
  if (absl::Status s = validator_.ValidateAndDefault(req); !s.ok()) {
    reactor->stream()->Abort(ToGrpcStatus(s));
    return reactor;
  }
  std::weak_ptr<EventStream> weak = reactor->stream();
  core::RequestContext ctx{TraceParentOf(*context)};
  tracker_->Create(
      req, ctx, [weak, req, ctx](absl::StatusOr<core::GenerationPtr> created) {
        LogCreate(req, ctx, created);
        auto stream = weak.lock();
        if (stream == nullptr) return;  // client already gone
        if (!created.ok()) {
          stream->Abort(ToGrpcStatus(created.status()));
          return;
        }
        stream->WatchOne((*created)->id(), 0);
      });
  return reactor;
}

grpc::ServerUnaryReactor* VideoGenerationService::CreateGeneration(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
    v1::Generation* response) {
  v1::GenerateRequest req = *request;
  if (absl::Status s = validator_.ValidateAndDefault(req); !s.ok()) {
    return FinishNow(context, s);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  core::RequestContext ctx{TraceParentOf(*context)};
  tracker_->Create(
      req, ctx,
      [reactor, response, req, ctx](absl::StatusOr<core::GenerationPtr> g) {
        LogCreate(req, ctx, g);
        if (g.ok()) *response = **g;
        reactor->Finish(ToGrpcStatus(g.status()));
      });
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerationEvent>*
VideoGenerationService::WatchGeneration(
    grpc::CallbackServerContext* /*context*/,
    const v1::WatchGenerationRequest* request) {
  StreamReactor* reactor = NewStream(/*ends_on_terminal=*/true);
  if (!reactor->registered()) return reactor;
  absl::Status s = Validator::ValidateId(request->id());
  if (s.ok() && request->after_revision() < 0) {
    s = absl::InvalidArgumentError(
        "after_revision must be >= 0: pass the last revision seen, or 0");
  }
  if (!s.ok()) {
    reactor->stream()->Abort(ToGrpcStatus(s));
    return reactor;
  }
  reactor->stream()->WatchOne(request->id(), request->after_revision());
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerationEvent>*
VideoGenerationService::WatchGenerations(
    grpc::CallbackServerContext* /*context*/,
    const v1::WatchGenerationsRequest* request) {
  StreamReactor* reactor = NewStream(/*ends_on_terminal=*/false);
  if (!reactor->registered()) return reactor;
  if (absl::Status s = Validator::ValidateLabelFilter(request->labels());
      !s.ok()) {
    reactor->stream()->Abort(ToGrpcStatus(s));
    return reactor;
  }
  core::Filter filter;
  for (int state : request->states()) {
    filter.states.insert(static_cast<v1::Generation::State>(state));
  }
  filter.labels.insert(request->labels().begin(), request->labels().end());
  reactor->stream()->WatchAll(filter);
  return reactor;
}

grpc::ServerUnaryReactor* VideoGenerationService::GetGeneration(
    grpc::CallbackServerContext* context,
    const v1::GetGenerationRequest* request, v1::Generation* response) {
  if (absl::Status s = Validator::ValidateId(request->id()); !s.ok()) {
    return FinishNow(context, s);
  }
  absl::StatusOr<core::GenerationPtr> g = tracker_->Get(request->id());
  if (g.ok()) *response = **g;
  return FinishNow(context, g.status());
}

grpc::ServerUnaryReactor* VideoGenerationService::ListGenerations(
    grpc::CallbackServerContext* context,
    const v1::ListGenerationsRequest* request,
    v1::ListGenerationsResponse* response) {
  absl::StatusOr<store::ListQuery> query = ToListQuery(*request);
  if (!query.ok()) return FinishNow(context, query.status());
  absl::StatusOr<store::ListPage> page = tracker_->List(*query);
  if (!page.ok()) return FinishNow(context, page.status());
  for (auto& g : page->generations) *response->add_generations() = std::move(g);
  if (page->next.has_value()) {
    response->set_next_page_token(
        EncodePageToken(*page->next, FilterFingerprint(*query)));
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* VideoGenerationService::CancelGeneration(
    grpc::CallbackServerContext* context,
    const v1::CancelGenerationRequest* request, v1::Generation* response) {
  if (absl::Status s = Validator::ValidateId(request->id()); !s.ok()) {
    return FinishNow(context, s);
  }
  absl::StatusOr<core::GenerationPtr> g = tracker_->Cancel(request->id());
  if (g.ok()) {
    *response = **g;
    Log("info", "generation_cancel_requested",
        {{"generation_id", request->id()},
         {"request_id", (*g)->request().request_id()}});
  }
  return FinishNow(context, g.status());
}

}  // namespace videogen::api
