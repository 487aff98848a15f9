#pragma once

// Text that came from the server (or anyone else) is printed to a terminal
// only after this: an upstream status or error message holding ESC [ 2 J
// would otherwise clear the user's screen, or forge output (issue 17).

#include <string>

#include "absl/strings/string_view.h"

namespace videogen::client {

// `text` made safe for a terminal: C0 controls (except '\n' when
// `keep_newlines`, else it becomes a space), DEL, C1 controls (U+0080..U+009F)
// and the bidirectional overrides and isolates (U+202A..U+202E,
// U+2066..U+2069, which can make text read differently than it is) are
// dropped; a byte that is not valid UTF-8 becomes U+FFFD. The API key, when
// one was registered with SetSecretToRedact, becomes "[redacted]".
// Thread-safe once SetSecretToRedact has returned.
std::string ForTerminal(absl::string_view text, bool keep_newlines = false);

// A one-line JSON text (as produced by the protobuf or nlohmann printers,
// which escape C0 controls already) with DEL, the C1 controls, U+2028/U+2029
// and the bidi controls that they leave raw escaped as \u00XX: the same JSON
// value without raw control characters. `json` must be valid UTF-8 JSON.
std::string EscapeJsonControls(absl::string_view json);

// Registers the API key so that ForTerminal never prints it, not even in an
// error message that echoes it. Call once, before any other thread starts.
void SetSecretToRedact(absl::string_view secret);

}  // namespace videogen::client
