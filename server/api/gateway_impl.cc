#include "server/api/gateway_impl.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/api/log.h"
#include "server/api/page_token.h"

namespace videogen::api {
namespace {

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("generation \"", id, "\" not found"));
}

// One log line per refused creation. Accepted ones are logged by the
// tracker, which alone knows a new job (`generation_created`) from a replay
// of its request_id (`generation_replayed`).
void LogRejected(const v1::GenerateRequest& req, const auth::Principal& who,
                 const core::RequestContext& ctx, const absl::Status& status) {
  nlohmann::json fields = {{"request_id", req.request_id()},
                           {"model", req.model()},
                           {"tenant", who.tenant},
                           {"code", absl::StatusCodeToString(status.code())},
                           {"error", std::string(status.message())}};
  if (const std::string id = ctx.TraceId(); !id.empty()) {
    fields["trace_id"] = id;
  }
  Log("warn", "generation_rejected", std::move(fields));
}

}  // namespace

GatewayImpl::GatewayImpl(core::Tracker* tracker, core::FanoutHub* hub,
                         store::Store* store, Validator validator,
                         GatewayOptions options)
    : tracker_(tracker),
      hub_(hub),
      store_(store),
      validator_(std::move(validator)),
      options_(std::move(options)) {}

void GatewayImpl::Create(const auth::Principal& who,
                         v1::GenerateRequest request,
                         const core::RequestContext& ctx,
                         core::CreateCallback done) {
  if (absl::Status s = validator_.ValidateAndDefault(request); !s.ok()) {
    done(s);
    return;
  }
  if (!request.webhook_url().empty()) {
    absl::Status s = options_.check_webhook_url
                         ? options_.check_webhook_url(request.webhook_url())
                         : absl::FailedPreconditionError(
                               "webhooks are not enabled on this server");
    if (!s.ok()) {
      done(s);
      return;
    }
  }
  core::CreateRequest create{request, who.tenant, who.limits, ctx};
  tracker_->Create(std::move(create),
                   [request, who, ctx, done = std::move(done)](
                       absl::StatusOr<core::GenerationPtr> g) {
                     if (!g.ok()) LogRejected(request, who, ctx, g.status());
                     done(std::move(g));
                   });
}

absl::StatusOr<core::GenerationPtr> GatewayImpl::Get(const auth::Principal& who,
                                                     const std::string& id) {
  if (absl::Status s = Validator::ValidateId(id); !s.ok()) return s;
  absl::StatusOr<std::optional<store::Record>> r = store_->Get(id);
  if (!r.ok()) return r.status();
  const std::string scope = who.Scope();
  if (!r->has_value() || (*r)->generation.revision() == 0 ||
      (!scope.empty() && (*r)->generation.tenant() != scope)) {
    return NotFound(id);
  }
  return std::make_shared<const v1::Generation>((*r)->generation);
}

absl::StatusOr<v1::ListGenerationsResponse> GatewayImpl::List(
    const auth::Principal& who, const v1::ListGenerationsRequest& request) {
  store::ListQuery query;
  query.tenant = who.Scope();
  if (absl::Status s =
          Validator::ValidatePageSize(request.page_size(), &query.page_size);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Validator::ValidateLabelFilter(request.labels());
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          Validator::ValidateStates("states", request.states(), &query.states);
      !s.ok()) {
    return s;
  }
  query.labels.insert(request.labels().begin(), request.labels().end());
  if (!request.page_token().empty()) {
    absl::StatusOr<store::Cursor> cursor =
        DecodePageToken(request.page_token(), FilterFingerprint(query));
    if (!cursor.ok()) return cursor.status();
    query.after = *std::move(cursor);
  }
  absl::StatusOr<store::ListPage> page = store_->List(query);
  if (!page.ok()) return page.status();
  v1::ListGenerationsResponse response;
  for (auto& g : page->generations) {
    if (g.revision() > 0) *response.add_generations() = std::move(g);
  }
  if (page->next.has_value()) {
    response.set_next_page_token(
        EncodePageToken(*page->next, FilterFingerprint(query)));
  }
  return response;
}

absl::StatusOr<core::GenerationPtr> GatewayImpl::Cancel(
    const auth::Principal& who, const std::string& id) {
  if (absl::Status s = Validator::ValidateId(id); !s.ok()) return s;
  absl::StatusOr<core::GenerationPtr> g = tracker_->Cancel(id, who.Scope());
  if (g.ok()) {
    Log("info", "generation_cancel_requested",
        {{"generation_id", id},
         {"tenant", who.tenant},
         {"request_id", (*g)->request().request_id()}});
  }
  return g;
}

absl::StatusOr<core::Subscription> GatewayImpl::Watch(
    const auth::Principal& who, const std::string& id, int64_t after_revision,
    std::shared_ptr<core::EventSink> sink) {
  if (absl::Status s = Validator::ValidateId(id); !s.ok()) return s;
  if (after_revision < 0) {
    return absl::InvalidArgumentError(
        "after_revision must be >= 0: pass the last revision seen, or 0");
  }
  return hub_->Subscribe(id, who.Scope(), after_revision, std::move(sink));
}

absl::StatusOr<core::Subscription> GatewayImpl::WatchAll(
    const auth::Principal& who, const v1::WatchGenerationsRequest& request,
    std::shared_ptr<core::EventSink> sink) {
  if (absl::Status s = Validator::ValidateLabelFilter(request.labels());
      !s.ok()) {
    return s;
  }
  std::vector<v1::Generation::State> states;
  if (absl::Status s =
          Validator::ValidateStates("states", request.states(), &states);
      !s.ok()) {
    return s;
  }
  core::Filter filter;
  filter.tenant = who.Scope();
  filter.states.insert(states.begin(), states.end());
  filter.labels.insert(request.labels().begin(), request.labels().end());
  return hub_->SubscribeAll(filter, std::move(sink));
}

void GatewayImpl::Unwatch(uint64_t subscription_id) {
  hub_->Unsubscribe(subscription_id);
}

}  // namespace videogen::api
