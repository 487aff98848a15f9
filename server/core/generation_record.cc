#include "server/core/generation_record.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace videogen::core {
namespace {

using State = v1::Generation::State;

void Finish(State state, v1::Generation* g) {
  g->set_state(state);
  g->set_done(true);
}

void SetUsage(const upstream::Snapshot& s, v1::Generation* g) {
  if (s.tokens_used == 0 && s.credits_used == 0) return;
  g->mutable_usage()->set_tokens_used(s.tokens_used);
  g->mutable_usage()->set_credits_used(s.credits_used);
}

std::string TaskErrorMessage(const upstream::Snapshot& s) {
  if (!s.error.has_value()) {
    return absl::StrCat("the upstream task failed (status \"", s.raw_status,
                        "\")");
  }
  std::string detail = s.error->name;
  if (!s.error->message.empty()) {
    absl::StrAppend(&detail, detail.empty() ? "" : ": ", s.error->message);
  }
  if (detail.empty()) detail = "no details";
  return absl::StrCat("the upstream task failed: ", detail);
}

}  // namespace

bool IsTerminal(State state) {
  return state == v1::Generation::STATE_COMPLETED ||
         state == v1::Generation::STATE_FAILED ||
         state == v1::Generation::STATE_CANCELLED;
}

bool ApplySnapshot(const upstream::Snapshot& s, v1::Generation* g) {
  if (IsTerminal(g->state())) return false;
  const State old_state = g->state();
  const bool status_changed = g->upstream_status() != s.raw_status;
  g->set_upstream_status(s.raw_status);
  switch (s.state) {
    case upstream::TaskState::kQueued:
      if (old_state != v1::Generation::STATE_GENERATING) {
        g->set_state(v1::Generation::STATE_QUEUED);
      }
      break;
    case upstream::TaskState::kGenerating:
      g->set_state(v1::Generation::STATE_GENERATING);
      break;
    case upstream::TaskState::kCompleted: {
      Finish(v1::Generation::STATE_COMPLETED, g);
      v1::Video* video = g->mutable_video();
      if (s.video.has_value()) {
        video->set_url(s.video->url);
        video->set_content_type(s.video->content_type);
        video->set_file_name(s.video->file_name);
        video->set_file_size_bytes(s.video->file_size_bytes);
        video->set_duration_seconds(s.video->duration_seconds);
      }
      SetUsage(s, g);
      break;
    }
    case upstream::TaskState::kFailed: {
      Finish(v1::Generation::STATE_FAILED, g);
      v1::GenerationError* error = g->mutable_error();
      error->set_code(static_cast<int>(absl::StatusCode::kInternal));
      error->set_reason("UPSTREAM_TASK_ERROR");
      error->set_message(TaskErrorMessage(s));
      SetUsage(s, g);
      break;
    }
    case upstream::TaskState::kUnknown:
      break;
  }
  return status_changed || g->state() != old_state;
}

bool MarkFailed(absl::StatusCode code, std::string reason, std::string message,
                v1::Generation* g) {
  if (IsTerminal(g->state())) return false;
  Finish(v1::Generation::STATE_FAILED, g);
  v1::GenerationError* error = g->mutable_error();
  error->set_code(static_cast<int>(code));
  error->set_reason(std::move(reason));
  error->set_message(std::move(message));
  return true;
}

bool MarkCancelled(v1::Generation* g) {
  if (IsTerminal(g->state())) return false;
  Finish(v1::Generation::STATE_CANCELLED, g);
  return true;
}

void Bump(absl::Time now, v1::Generation* g) {
  g->set_revision(g->revision() + 1);
  *g->mutable_update_time() = ToTimestamp(now);
}

}  // namespace videogen::core
