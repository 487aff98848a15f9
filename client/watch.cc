#include "client/watch.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace videogen::client {

absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

Follower::Follower(v1::VideoGeneration::StubInterface* stub,
                   FollowOptions options, FollowCallbacks callbacks)
    : stub_(stub),
      options_(options),
      callbacks_(std::move(callbacks)),
      backoff_(options.initial_backoff) {}

absl::StatusOr<v1::Generation> Follower::Generate(
    const v1::GenerateRequest& request) {
  return Run([this, request](grpc::ClientContext* context) {
    return std::unique_ptr<Reader>(stub_->Generate(context, request));
  });
}

absl::StatusOr<v1::Generation> Follower::Watch(const std::string& id) {
  id_ = id;
  return Run(WatchOpener());
}

Follower::Opener Follower::WatchOpener() {
  return [this](grpc::ClientContext* context) {
    v1::WatchGenerationRequest request;
    request.set_id(id_);
    request.set_after_revision(last_revision_);
    return std::unique_ptr<Reader>(stub_->WatchGeneration(context, request));
  };
}

absl::StatusOr<v1::Generation> Follower::Run(const Opener& first) {
  absl::Status status = ReadStream(first);
  while (!terminal_.has_value()) {
    if (status.ok()) {
      status =
          absl::UnavailableError("stream ended before the generation finished");
    }
    if (!BackoffBeforeRetry(status)) return status;
    // Without an id (Generate broke before its first event) retrying
    // Generate is safe only with an idempotency key; Run's caller always
    // sets one, and the server then returns the same generation.
    status = ReadStream(id_.empty() ? first : WatchOpener());
  }
  return *terminal_;
}

absl::Status Follower::ReadStream(const Opener& open) {
  grpc::ClientContext context;
  if (callbacks_.prepare_context) callbacks_.prepare_context(&context);
  std::unique_ptr<Reader> reader = open(&context);
  v1::GenerationEvent event;
  while (reader->Read(&event)) {
    if (Accept(event)) {
      context.TryCancel();  // nothing follows a terminal event
      reader->Finish().ok();
      return absl::OkStatus();
    }
  }
  return FromGrpc(reader->Finish());
}

bool Follower::Accept(const v1::GenerationEvent& event) {
  received_any_ = true;
  last_progress_ = absl::Now();
  backoff_ = options_.initial_backoff;
  const v1::Generation& g = event.generation();
  if (id_.empty()) id_ = g.id();
  if (event.type() == v1::GenerationEvent::TYPE_HEARTBEAT) {
    if (callbacks_.on_event) callbacks_.on_event(event);
    return false;
  }
  if (g.revision() <= last_revision_) return false;  // seen already
  last_revision_ = g.revision();
  if (callbacks_.on_event) callbacks_.on_event(event);
  if (g.done()) terminal_ = g;
  return g.done();
}

bool Follower::BackoffBeforeRetry(const absl::Status& status) {
  // A first attempt that never got anything is most likely a wrong address
  // or a stopped server: report it rather than wait.
  if (!options_.reconnect || !received_any_) return false;
  // CANCELLED is retried too: this client cancels only after the terminal
  // event, so it comes from the server side (gRPC cancels calls that start
  // while a server shuts down).
  if (status.code() != absl::StatusCode::kUnavailable &&
      status.code() != absl::StatusCode::kCancelled) {
    return false;
  }
  if (absl::Now() - last_progress_ > options_.reconnect_timeout) return false;
  if (callbacks_.on_reconnect) callbacks_.on_reconnect(status, backoff_);
  absl::SleepFor(backoff_);
  backoff_ = std::min(backoff_ * 2, options_.max_backoff);
  return true;
}

}  // namespace videogen::client
