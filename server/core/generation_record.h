#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"
#include "server/upstream/upstream.h"
#include "server/util/proto_time.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::core {

// The generation state machine as pure functions on a v1::Generation.
// QUEUED -> GENERATING -> COMPLETED | FAILED; CANCELLED from any non-terminal
// state; nothing leaves a terminal state. None of these touch `revision` or
// `update_time`: the caller bumps them once per persisted change (Bump).

bool IsTerminal(v1::Generation::State state);

using util::FromTimestamp;
using util::ToTimestamp;

// Applies one poll answer (state already mapped by the upstream layer).
// Returns true when anything a client can see changed. kUnknown keeps the
// state but records the raw status; an upstream that goes back from
// generating to queued keeps GENERATING.
bool ApplySnapshot(const upstream::Snapshot& snapshot, v1::Generation* g);

// Moves a non-terminal generation to FAILED with `error`. Returns false (and
// changes nothing) when it is terminal already.
bool MarkFailed(absl::StatusCode code, std::string reason, std::string message,
                v1::Generation* g);

// Moves a non-terminal generation to CANCELLED. Returns false when terminal.
bool MarkCancelled(v1::Generation* g);

// One client-visible change: revision + 1, update_time = now.
void Bump(absl::Time now, v1::Generation* g);

}  // namespace videogen::core
