#include "server/api/methods.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "videogen/v1/video_generation.grpc.pb.h"

namespace videogen::api {

std::string FullMethodName(absl::string_view name) {
  return absl::StrCat("/", v1::VideoGeneration::service_full_name(), "/", name);
}

MethodKind KindOf(absl::string_view full_name) {
  static const auto* kinds = [] {
    auto* m = new absl::flat_hash_map<std::string, MethodKind>();
    for (const char* name :
         {"Generate", "WatchGeneration", "WatchGenerations"}) {
      m->emplace(FullMethodName(name), MethodKind::kStreaming);
    }
    for (const char* name : {"CreateGeneration", "GetGeneration",
                             "ListGenerations", "CancelGeneration"}) {
      m->emplace(FullMethodName(name), MethodKind::kUnary);
    }
    return m;
  }();
  auto it = kinds->find(full_name);
  return it == kinds->end() ? MethodKind::kNotOurs : it->second;
}

}  // namespace videogen::api
