#pragma once

// Which outbox entries a change of a generation produces (design.md §8).

#include <vector>

#include "server/store/store.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::webhooks {

// True when `state` triggers a delivery for `request`: one of
// request.webhook_states, or a terminal state when that list is empty.
bool WantsState(const v1::GenerateRequest& request,
                v1::Generation::State state);

// The outbox entries to write in the same Store::Update as the change that
// `event` announces: one when g.request().webhook_url is set and g.state()
// is wanted (WantsState), else none. The body is `event` in proto3 JSON; the
// entry is due at once (next_attempt = created = event.observe_time, or now
// when unset). Pure; thread-safe.
std::vector<store::Delivery> DeliveriesFor(const v1::Generation& g,
                                           const v1::GenerationEvent& event);

}  // namespace videogen::webhooks
