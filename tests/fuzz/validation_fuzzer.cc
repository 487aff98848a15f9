// Fuzzes request validation (server/api/validation.h). The input is a small
// text format, one `field=value` per line, so seeds are readable and
// libFuzzer's mutations reach the validator instead of a decoder:
//   prompt=A cat\non a sofa          (values are C-unescaped when possible)
//   prompt*2501=x                    (`key*N=v`: v repeated N times)
//   model=klingai/v2-master-text-to-video
//   duration_seconds=5   cfg_scale=0.5   label.team=video
//   allow=model-a                    (replaces the default model list)
//   id=...  page_size=N  filter.k=v  (the other static checks)
// Properties: only OK or INVALID_ARGUMENT; an accepted request satisfies
// every documented limit with defaults filled in; validating it again
// accepts it unchanged; error messages stay bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/api/validation.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using videogen::api::Validator;
namespace api = videogen::api;

struct Input {
  videogen::v1::GenerateRequest request;
  std::vector<std::string> allow;
  std::vector<std::string> ids;
  std::vector<int> page_sizes;
  google::protobuf::Map<std::string, std::string> filter;
};

// Integers the way a careless client might send them: anything strtoll
// takes, clamped to the field's range by the cast.
int64_t LooseInt(const std::string& v) {
  return std::strtoll(v.c_str(), nullptr, 0);
}

Input Decode(absl::string_view text) {
  Input in;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits('=', 1));
    std::string value;
    if (!absl::CUnescape(kv.second, &value)) value = std::string(kv.second);
    absl::string_view key = kv.first;
    // `key*N=v` repeats v N times (up to 8 KiB): long values, short seeds.
    if (size_t star = key.find('*'); star != absl::string_view::npos) {
      int64_t n = 0;
      if (absl::SimpleAtoi(key.substr(star + 1), &n) && n > 1 &&
          !value.empty()) {
        std::string repeated;
        while (repeated.size() < 8192 && n-- > 0) repeated += value;
        value = std::move(repeated);
      }
      key = key.substr(0, star);
    }
    auto& r = in.request;
    if (key == "request_id") {
      r.set_request_id(value);
    } else if (key == "model") {
      r.set_model(value);
    } else if (key == "prompt") {
      r.set_prompt(value);
    } else if (key == "negative_prompt") {
      r.set_negative_prompt(value);
    } else if (key == "aspect_ratio") {
      r.set_aspect_ratio(value);
    } else if (key == "duration_seconds") {
      r.set_duration_seconds(static_cast<int32_t>(LooseInt(value)));
    } else if (key == "cfg_scale") {
      r.set_cfg_scale(std::strtof(value.c_str(), nullptr));
    } else if (key == "image_url") {
      r.set_image_url(value);
    } else if (key == "webhook_url") {
      r.set_webhook_url(value);
    } else if (absl::StartsWith(key, "label.")) {
      (*r.mutable_labels())[std::string(key.substr(6))] = value;
    } else if (key == "allow") {
      in.allow.push_back(value);
    } else if (key == "id") {
      in.ids.push_back(value);
    } else if (key == "page_size") {
      in.page_sizes.push_back(static_cast<int>(LooseInt(value)));
    } else if (absl::StartsWith(key, "filter.")) {
      in.filter[std::string(key.substr(7))] = value;
    }
  }
  return in;
}

int CountChars(const std::string& s) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

void CheckError(const absl::Status& s, size_t bound) {
  FUZZ_CHECK(absl::IsInvalidArgument(s), "unexpected code: %s",
             s.ToString().c_str());
  FUZZ_CHECK(!s.message().empty(), "an error says what is wrong");
  FUZZ_CHECK(s.message().size() <= bound,
             "error message of %zu bytes echoes too much input",
             s.message().size());
}

void CheckAccepted(const Validator& validator,
                   const std::vector<std::string>& models,
                   const videogen::v1::GenerateRequest& r) {
  bool known = false;
  for (const std::string& m : models) known = known || m == r.model();
  FUZZ_CHECK(known, "accepted unknown model");
  FUZZ_CHECK(r.aspect_ratio() == "16:9" || r.aspect_ratio() == "9:16" ||
                 r.aspect_ratio() == "1:1",
             "aspect_ratio");
  FUZZ_CHECK(r.duration_seconds() == 5 || r.duration_seconds() == 10,
             "duration_seconds %d", r.duration_seconds());
  FUZZ_CHECK(
      !r.has_cfg_scale() || (r.cfg_scale() >= 0.0f && r.cfg_scale() <= 1.0f),
      "cfg_scale");
  FUZZ_CHECK(CountChars(r.prompt()) <= api::kMaxPromptChars, "prompt length");
  FUZZ_CHECK(CountChars(r.negative_prompt()) <= api::kMaxPromptChars,
             "negative_prompt length");
  bool blank = true;
  for (char c : r.prompt()) blank = blank && absl::ascii_isspace(c);
  FUZZ_CHECK(!blank, "accepted a blank prompt");
  FUZZ_CHECK(r.request_id().size() <= api::kMaxRequestIdChars, "request_id");
  for (char c : r.request_id()) {
    FUZZ_CHECK(
        absl::ascii_isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-',
        "request_id character 0x%02x", static_cast<unsigned char>(c));
  }
  FUZZ_CHECK(r.labels_size() <= api::kMaxLabels, "labels count");
  const bool image_model = absl::StrContains(r.model(), "image-to-video");
  FUZZ_CHECK(image_model == !r.image_url().empty(),
             "image_url must go with image models only");
  // Defaults are filled in once: a second pass accepts and keeps it as is.
  videogen::v1::GenerateRequest again = r;
  absl::Status s = validator.ValidateAndDefault(again);
  FUZZ_CHECK(s.ok(), "re-validation failed: %s", s.ToString().c_str());
  FUZZ_CHECK(google::protobuf::util::MessageDifferencer::Equals(again, r),
             "re-validation changed the request");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::string>* const kDefault =
      new std::vector<std::string>(api::DefaultModels());
  static const Validator* const kDefaultValidator = new Validator(*kDefault);

  Input in =
      Decode(absl::string_view(reinterpret_cast<const char*>(data), size));
  const std::vector<std::string>& models =
      in.allow.empty() ? *kDefault : in.allow;
  Validator custom(in.allow);
  const Validator& validator = in.allow.empty() ? *kDefaultValidator : custom;
  // A message names the problem and the allowed values, never the whole
  // input: bounded by a fixed allowance plus the list of models.
  size_t models_text = 0;
  for (const std::string& m : models) models_text += m.size() + 2;
  const size_t bound = 1024 + models_text;

  videogen::v1::GenerateRequest request = in.request;
  absl::Status s = validator.ValidateAndDefault(request);
  if (s.ok()) {
    CheckAccepted(validator, models, request);
  } else {
    CheckError(s, bound);
  }

  for (const std::string& id : in.ids) {
    absl::Status ids = Validator::ValidateId(id);
    if (!ids.ok()) CheckError(ids, bound);
  }
  for (int page_size : in.page_sizes) {
    int effective = -1;
    absl::Status ps = Validator::ValidatePageSize(page_size, &effective);
    if (ps.ok()) {
      FUZZ_CHECK(effective > 0 && effective <= api::kMaxPageSize,
                 "page size %d -> %d", page_size, effective);
    } else {
      CheckError(ps, bound);
    }
  }
  absl::Status fs = Validator::ValidateLabelFilter(in.filter);
  if (!fs.ok()) CheckError(fs, bound);
  return 0;
}
