#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace videogen::api {

// How this server serves a VideoGeneration method, named in one place: the
// streaming methods are raw (service.h) and count their own metrics, since
// an interceptor would cost each message they write a completion-queue
// round trip; the unary ones carry the interceptors.
enum class MethodKind { kNotOurs, kUnary, kStreaming };

// "/videogen.v1.VideoGeneration/<name>", as gRPC names a call's method.
std::string FullMethodName(absl::string_view name);

// The kind of `full_name` ("/package.Service/Method"); kNotOurs for any
// other service's method or an unknown one.
MethodKind KindOf(absl::string_view full_name);

}  // namespace videogen::api
