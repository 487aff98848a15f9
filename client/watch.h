#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::client {

namespace v1 = ::videogen::v1;

struct FollowOptions {
  // Reconnect on UNAVAILABLE (or a server-side CANCELLED) and on a stream
  // that ends before the terminal event. Off: the first break is an error.
  bool reconnect = true;
  // Give up after this long without receiving anything.
  absl::Duration reconnect_timeout = absl::Minutes(2);
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(3);
};

// Callbacks of a Follower. `on_event` sees each new event once, in revision
// order; heartbeats are passed through (they carry no new revision).
struct FollowCallbacks {
  std::function<void(const v1::GenerationEvent&)> on_event;
  std::function<void(const absl::Status&, absl::Duration)> on_reconnect;
  // Called on each stream's context before it opens (adds the API key).
  std::function<void(grpc::ClientContext*)> prepare_context;
};

// Follows one generation to its terminal state over Generate or
// WatchGeneration, resuming broken streams with WatchGeneration and
// after_revision = the last revision seen, with exponential backoff.
// Events at or below the last revision seen are dropped, so nothing is shown
// twice. Owned and used by one thread.
class Follower {
 public:
  Follower(v1::VideoGeneration::StubInterface* stub, FollowOptions options,
           FollowCallbacks callbacks);

  // Generate (idempotent on request.request_id()), then watch to the end.
  absl::StatusOr<v1::Generation> Generate(const v1::GenerateRequest& request);
  // WatchGeneration on `id` to the end.
  absl::StatusOr<v1::Generation> Watch(const std::string& id);

  int64_t last_revision() const { return last_revision_; }

 private:
  using Reader = grpc::ClientReaderInterface<v1::GenerationEvent>;
  using Opener =
      std::function<std::unique_ptr<Reader>(grpc::ClientContext* context)>;

  // Runs `first`, then resumes until a terminal event or a final error.
  absl::StatusOr<v1::Generation> Run(const Opener& first);
  // Reads one stream to its end; returns its status (OK when the terminal
  // event was seen or the stream ended cleanly).
  absl::Status ReadStream(const Opener& open);
  // Handles one event; true once it was terminal.
  bool Accept(const v1::GenerationEvent& event);
  // Whether `status` may be retried, and sleeps the backoff if so.
  bool BackoffBeforeRetry(const absl::Status& status);
  Opener WatchOpener();

  v1::VideoGeneration::StubInterface* stub_;
  FollowOptions options_;
  FollowCallbacks callbacks_;
  std::string id_;
  int64_t last_revision_ = 0;
  std::optional<v1::Generation> terminal_;
  absl::Time last_progress_ = absl::Now();
  absl::Duration backoff_;
  bool received_any_ = false;
};

// grpc::Status as absl::Status (same codes, same message).
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace videogen::client
