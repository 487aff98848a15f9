#include "client/sanitize.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace videogen::client {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD
constexpr char kRedacted[] = "[redacted]";

// Set once in main before threads start; read-only afterwards.
std::string& Secret() {
  static auto* secret = new std::string();
  return *secret;
}

std::string Redact(std::string text) {
  const std::string& secret = Secret();
  if (secret.empty()) return text;
  return absl::StrReplaceAll(text, {{secret, kRedacted}});
}

// Decodes one UTF-8 sequence at text[i]. Returns its length and sets *cp, or
// returns 0 when the bytes there are not valid UTF-8 (overlong forms,
// surrogates and values past U+10FFFF included).
size_t DecodeUtf8(absl::string_view text, size_t i, uint32_t* cp) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b0 = byte(i);
  size_t len;
  uint32_t min;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  } else if ((b0 & 0xE0) == 0xC0) {
    len = 2, min = 0x80, *cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, min = 0x800, *cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, *cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + len > text.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    *cp = (*cp << 6) | (byte(i + k) & 0x3F);
  }
  if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) {
    return 0;
  }
  return len;
}

bool IsBidiControl(uint32_t cp) {
  return (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

}  // namespace

std::string ForTerminal(absl::string_view text, bool keep_newlines) {
  std::string in = Redact(std::string(text));
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size();) {
    uint32_t cp = 0;
    const size_t len = DecodeUtf8(in, i, &cp);
    if (len == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    if (cp == '\n') {
      out += keep_newlines ? '\n' : ' ';
    } else if (cp >= 0x20 && cp != 0x7F && !(cp >= 0x80 && cp <= 0x9F) &&
               !IsBidiControl(cp)) {
      out.append(in, i, len);
    }
    i += len;
  }
  // Once more: a key split by control characters is whole again now.
  return Redact(std::move(out));
}

std::string EscapeJsonControls(absl::string_view json) {
  std::string out;
  out.reserve(json.size());
  for (size_t i = 0; i < json.size();) {
    uint32_t cp = 0;
    const size_t len = DecodeUtf8(json, i, &cp);
    if (len == 0) {  // not expected from a JSON printer; keep it printable
      out += kReplacement;
      ++i;
      continue;
    }
    // The printers escape C0 controls already, and a raw one would be
    // whitespace between tokens; these others are legal raw inside strings
    // (the only place they can be), where the escape means the same.
    if (cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 ||
        cp == 0x2029 || IsBidiControl(cp)) {
      out += absl::StrFormat("\\u%04x", cp);
    } else {
      out.append(json.data() + i, len);
    }
    i += len;
  }
  return out;
}

void SetSecretToRedact(absl::string_view secret) {
  Secret() = std::string(secret);
}

}  // namespace videogen::client
