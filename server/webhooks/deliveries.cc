#include "server/webhooks/deliveries.h"

#include <algorithm>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "server/util/proto_time.h"

namespace videogen::webhooks {

bool WantsState(const v1::GenerateRequest& request,
                v1::Generation::State state) {
  if (request.webhook_states().empty()) {
    return state == v1::Generation::STATE_COMPLETED ||
           state == v1::Generation::STATE_FAILED ||
           state == v1::Generation::STATE_CANCELLED;
  }
  return std::find(request.webhook_states().begin(),
                   request.webhook_states().end(),
                   state) != request.webhook_states().end();
}

std::vector<store::Delivery> DeliveriesFor(const v1::Generation& g,
                                           const v1::GenerationEvent& event) {
  std::vector<store::Delivery> out;
  if (g.request().webhook_url().empty() ||
      event.type() == v1::GenerationEvent::TYPE_HEARTBEAT ||
      !WantsState(g.request(), g.state())) {
    return out;
  }
  store::Delivery d;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  if (!google::protobuf::util::MessageToJsonString(event, &d.body, options)
           .ok()) {
    // Fails only on invalid UTF-8 in a string field. Such an event cannot
    // be sent as JSON at all, so it gets no entry (a known gap, not a
    // silent retry loop).
    return out;
  }
  d.generation_id = g.id();
  d.revision = g.revision();
  d.tenant = g.tenant();
  d.url = g.request().webhook_url();
  d.created = event.has_observe_time()
                  ? util::FromTimestamp(event.observe_time())
                  : absl::Now();
  d.next_attempt = d.created;
  out.push_back(std::move(d));
  return out;
}

}  // namespace videogen::webhooks
