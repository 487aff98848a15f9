#include "server/api/validation.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace videogen::api {
namespace {

// Counts Unicode code points, which is what Kling's limit counts.
int CountChars(const std::string& s) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsRequestIdChar(char c) {
  return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-';
}

bool IsLabelKey(const std::string& key) {
  if (key.empty() || key.size() > kMaxLabelChars) return false;
  if (!absl::ascii_islower(key[0])) return false;
  for (char c : key) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

// At most `max_chars` bytes of caller text, control characters replaced, so
// an error message never echoes a huge or terminal-hostile value.
std::string Printable(const std::string& text, size_t max_chars) {
  std::string out;
  for (char c : text.substr(0, max_chars)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7F) ? '?' : c;
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

// Decodes one UTF-8 code point at s[*i] and advances *i; -1 when invalid
// (overlong, surrogate, out of range or truncated).
int32_t NextCodePoint(const std::string& s, size_t* i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(*i);
  int len = c < 0x80         ? 1
            : (c >> 5) == 6  ? 2
            : (c >> 4) == 14 ? 3
            : (c >> 3) == 30 ? 4
                             : 0;
  if (len == 0 || *i + len > s.size()) return -1;
  int32_t cp = len == 1 ? c : c & (0x7F >> len);
  for (int k = 1; k < len; ++k) {
    if ((byte(*i + k) & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (byte(*i + k) & 0x3F);
  }
  static constexpr int32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return -1;
  }
  *i += len;
  return cp;
}

// Unicode White_Space plus the invisible format characters a prompt of
// "nothing" is made of (zero-width space and joiners, word joiner, BOM).
bool IsBlank(int32_t cp) {
  return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200D) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x2060 ||
         cp == 0x3000 || cp == 0xFEFF || cp == 0x180E;
}

// Control characters other than tab and line breaks have no place in text
// sent to the upstream (NUL truncates it in some stacks).
bool IsForbiddenControl(int32_t cp) {
  return (cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || cp == 0x7F ||
         (cp >= 0x80 && cp < 0xA0);
}

absl::Status ValidateText(const std::string& field, const std::string& text,
                          bool required) {
  bool blank = true;
  for (size_t i = 0; i < text.size();) {
    const int32_t cp = NextCodePoint(text, &i);
    if (cp < 0) {
      return Invalid(absl::StrCat(field, " is not valid UTF-8"));
    }
    if (IsForbiddenControl(cp)) {
      return Invalid(
          absl::StrCat(field, " contains a control character (U+",
                       absl::Hex(cp, absl::kZeroPad4),
                       "); remove it: only tab and line breaks are allowed"));
    }
    blank = blank && IsBlank(cp);
  }
  if (required && blank) {
    return Invalid(
        absl::StrCat(field,
                     " is required: describe what the video should show (it is "
                     "empty or only whitespace)"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePrompt(const v1::GenerateRequest& r) {
  if (absl::Status s = ValidateText("prompt", r.prompt(), true); !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ValidateText("negative_prompt", r.negative_prompt(), false);
      !s.ok()) {
    return s;
  }
  if (CountChars(r.prompt()) > kMaxPromptChars) {
    return Invalid(absl::StrCat("prompt has ", CountChars(r.prompt()),
                                " characters; the limit is ", kMaxPromptChars));
  }
  if (CountChars(r.negative_prompt()) > kMaxPromptChars) {
    return Invalid(absl::StrCat("negative_prompt has ",
                                CountChars(r.negative_prompt()),
                                " characters; the limit is ", kMaxPromptChars));
  }
  return absl::OkStatus();
}

absl::Status ValidateShape(v1::GenerateRequest& r) {
  if (r.aspect_ratio().empty()) r.set_aspect_ratio("16:9");
  const std::string& ar = r.aspect_ratio();
  if (ar != "16:9" && ar != "9:16" && ar != "1:1") {
    return Invalid(absl::StrCat("aspect_ratio \"", Printable(ar, 20),
                                "\" is not supported; use 16:9, 9:16 or 1:1"));
  }
  if (r.duration_seconds() == 0) r.set_duration_seconds(5);
  if (r.duration_seconds() != 5 && r.duration_seconds() != 10) {
    return Invalid(absl::StrCat("duration_seconds ", r.duration_seconds(),
                                " is not supported; use 5 or 10"));
  }
  if (r.has_cfg_scale() &&
      !(r.cfg_scale() >= 0.0f && r.cfg_scale() <= 1.0f)) {  // NaN fails too
    return Invalid(absl::StrCat("cfg_scale ", r.cfg_scale(),
                                " is out of range; use a value in [0, 1]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateRequestId(const std::string& id) {
  if (id.empty()) return absl::OkStatus();  // not idempotent, but allowed
  bool charset_ok = true;
  for (char c : id) charset_ok = charset_ok && IsRequestIdChar(c);
  if (id.size() > kMaxRequestIdChars || !charset_ok) {
    return Invalid(absl::StrCat(
        "request_id must be 1-", kMaxRequestIdChars,
        " characters of [A-Za-z0-9._:-] (a UUID is a good choice); got ",
        id.size(), " characters", charset_ok ? "" : " with other characters"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLabels(
    const google::protobuf::Map<std::string, std::string>& labels) {
  if (labels.size() > kMaxLabels) {
    return Invalid(absl::StrCat("labels has ", labels.size(),
                                " entries; the limit is ", kMaxLabels));
  }
  for (const auto& [key, value] : labels) {
    if (!IsLabelKey(key)) {
      return Invalid(absl::StrCat(
          "label key \"", Printable(key, 80), "\" is invalid: use 1-",
          kMaxLabelChars, " characters of [a-z0-9_-] starting with a letter"));
    }
    if (CountChars(value) > kMaxLabelChars) {
      return Invalid(absl::StrCat(
          "label \"", Printable(key, 80), "\" value has ", CountChars(value),
          " characters; the limit is ", kMaxLabelChars));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> DefaultModels() {
  return {
      "klingai/v2-master-text-to-video",
      "klingai/v2-master-image-to-video",
      "klingai/v2.1-master-text-to-video",
      "klingai/v2.1-master-image-to-video",
      "kling-video/v1/standard/text-to-video",
      "kling-video/v1/standard/image-to-video",
      "kling-video/v1/pro/text-to-video",
      "kling-video/v1/pro/image-to-video",
      "kling-video/v1.6/standard/text-to-video",
      "kling-video/v1.6/standard/image-to-video",
      "kling-video/v1.6/pro/text-to-video",
      "kling-video/v1.6/pro/image-to-video",
  };
}

Validator::Validator(std::vector<std::string> models)
    : models_(models.begin(), models.end()),
      models_text_(absl::StrJoin(models_, ", ")) {}

absl::Status Validator::ValidateAndDefault(v1::GenerateRequest& r) const {
  if (absl::Status s = ValidateRequestId(r.request_id()); !s.ok()) return s;
  if (absl::Status s = ValidatePrompt(r); !s.ok()) return s;
  if (r.model().empty()) r.set_model(kDefaultModel);
  if (absl::Status s = ValidateModel(r); !s.ok()) return s;
  if (absl::Status s = ValidateShape(r); !s.ok()) return s;
  if (absl::Status s = ValidateLabels(r.labels()); !s.ok()) return s;
  if (r.webhook_url().size() > kMaxImageUrlChars) {
    return Invalid(absl::StrCat("webhook_url must be at most ",
                                kMaxImageUrlChars, " characters"));
  }
  std::vector<v1::Generation::State> states;
  if (absl::Status s =
          ValidateStates("webhook_states", r.webhook_states(), &states);
      !s.ok()) {
    return s;
  }
  if (!states.empty() && r.webhook_url().empty()) {
    return Invalid("webhook_states needs a webhook_url");
  }
  r.clear_webhook_states();
  for (auto state : states) r.add_webhook_states(state);
  return absl::OkStatus();
}

absl::Status Validator::ValidateStates(
    const std::string& field,
    const google::protobuf::RepeatedField<int>& states,
    std::vector<v1::Generation::State>* out) {
  if (states.size() > kMaxStateFilters) {
    return Invalid(absl::StrCat(field, " has ", states.size(),
                                " entries; list each state at most once"));
  }
  std::set<v1::Generation::State> seen;
  for (int state : states) {
    if (state == v1::Generation::STATE_UNSPECIFIED ||
        !v1::Generation::State_IsValid(state)) {
      return Invalid(absl::StrCat(
          field, " has an unknown state (", state,
          "); use STATE_QUEUED, STATE_GENERATING, STATE_COMPLETED, "
          "STATE_FAILED or STATE_CANCELLED"));
    }
    seen.insert(static_cast<v1::Generation::State>(state));
  }
  out->assign(seen.begin(), seen.end());
  return absl::OkStatus();
}

absl::Status Validator::ValidateModel(const v1::GenerateRequest& r) const {
  if (models_.count(r.model()) == 0) {
    return Invalid(
        absl::StrCat("model \"", Printable(r.model(), 120),
                     "\" is not supported; use one of: ", models_text_));
  }
  const bool image_model = absl::StrContains(r.model(), "image-to-video");
  const std::string& url = r.image_url();
  if (image_model && url.empty()) {
    return Invalid(absl::StrCat("image_url is required for model ", r.model(),
                                " (an http or https URL of the source image)"));
  }
  if (!image_model && !url.empty()) {
    return Invalid(
        absl::StrCat("image_url is only allowed for image-to-video "
                     "models; model ",
                     r.model(), " is text-to-video"));
  }
  if (!url.empty() && (url.size() > kMaxImageUrlChars ||
                       !(absl::StartsWith(url, "http://") ||
                         absl::StartsWith(url, "https://")))) {
    return Invalid(
        absl::StrCat("image_url must be an http or https URL of at "
                     "most ",
                     kMaxImageUrlChars, " characters"));
  }
  return absl::OkStatus();
}

absl::Status Validator::ValidateId(const std::string& id) {
  if (id.empty()) return Invalid("id is required");
  if (id.size() > 128)
    return Invalid("id is too long (at most 128 characters)");
  return absl::OkStatus();
}

absl::Status Validator::ValidateLabelFilter(
    const google::protobuf::Map<std::string, std::string>& labels) {
  return ValidateLabels(labels);
}

absl::Status Validator::ValidatePageSize(int page_size, int* effective) {
  if (page_size < 0) {
    return Invalid(absl::StrCat("page_size ", page_size,
                                " is negative; use 0 for the default (",
                                kDefaultPageSize, ") or up to ", kMaxPageSize));
  }
  *effective =
      page_size == 0 ? kDefaultPageSize : std::min(page_size, kMaxPageSize);
  return absl::OkStatus();
}

}  // namespace videogen::api
