#pragma once

#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::api {

// Limits of design.md §1 (Kling) and of the proto's documentation.
inline constexpr int kMaxPromptChars = 2500;
inline constexpr int kMaxRequestIdChars = 128;
inline constexpr int kMaxLabels = 16;
inline constexpr int kMaxLabelChars = 63;
inline constexpr int kMaxImageUrlChars = 2048;
inline constexpr int kDefaultPageSize = 50;
inline constexpr int kMaxPageSize = 1000;
// A states filter longer than this repeats itself (there are five states).
inline constexpr int kMaxStateFilters = 16;
inline constexpr char kDefaultModel[] = "klingai/v2-master-text-to-video";

// The Kling models videogen accepts unless --models says otherwise.
std::vector<std::string> DefaultModels();

// Stateless checks of incoming requests. Thread-safe (immutable after
// construction); shared by every gRPC callback thread.
class Validator {
 public:
  explicit Validator(std::vector<std::string> models);

  // Checks `request` and fills in defaults (model, aspect_ratio, duration).
  // INVALID_ARGUMENT names the field and the allowed values.
  absl::Status ValidateAndDefault(v1::GenerateRequest& request) const;

  static absl::Status ValidateId(const std::string& id);
  static absl::Status ValidateLabelFilter(
      const google::protobuf::Map<std::string, std::string>& labels);
  // Returns the effective page size (default, clamped) or an error.
  static absl::Status ValidatePageSize(int page_size, int* effective);
  // Checks a states filter: known states only (an unknown number, from a
  // newer client or a typo, is an error rather than silently ignored), at
  // most kMaxStateFilters entries; `out` gets them de-duplicated.
  static absl::Status ValidateStates(
      const std::string& field,
      const google::protobuf::RepeatedField<int>& states,
      std::vector<v1::Generation::State>* out);

 private:
  absl::Status ValidateModel(const v1::GenerateRequest& request) const;

  std::set<std::string> models_;
  std::string models_text_;  // for error messages
};

}  // namespace videogen::api
