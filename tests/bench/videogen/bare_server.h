#pragma once

#include <cstdint>
#include <string>

#include "videogen/v1/video_generation.pb.h"

namespace videogen::bench {

// The prompt every benchmark request uses, so events have the same size.
inline constexpr char kPrompt[] =
    "A red fox trots through fresh snow at dawn, low sun, long shadows, "
    "cinematic 35mm film look, shallow depth of field";

// A GenerationEvent shaped like videogen's for a generation in `state`: full
// snapshot with the request, ids, times, and a video when COMPLETED.
v1::GenerationEvent RepresentativeEvent(v1::GenerationEvent::Type type,
                                        v1::Generation::State state,
                                        int64_t revision);

// Runs the bare baseline server on 127.0.0.1:`port` (0 picks one) until
// SIGTERM. It implements only WatchGeneration (hold streams, send a
// snapshot) and uses GetGeneration as its control call:
// "broadcast:DUE_UNIX_NS:G" sends one GENERATING update to every stream
// watching id G at that time, and "broadcast-final:DUE_UNIX_NS:G" a
// COMPLETED one, after which those streams end OK. Broadcasts run on a
// thread of the server's own. `deadlock_detection` keeps Abseil's Mutex
// deadlock detection on.
int RunBareServer(int port, bool deadlock_detection);

}  // namespace videogen::bench
