#include "server/upstream/sanitize.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"
#include "server/upstream/http_errors.h"

namespace videogen::upstream {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

bool Continuation(unsigned char c) { return c >= 0x80 && c <= 0xBF; }

// Length of the well-formed UTF-8 sequence at text[i] (RFC 3629: no
// overlongs, no surrogates, nothing above U+10FFFF), or 0 if ill-formed.
size_t SequenceLength(absl::string_view text, size_t i) {
  const auto at = [&](size_t k) {
    return static_cast<unsigned char>(text[i + k]);
  };
  const unsigned char b0 = at(0);
  if (b0 < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the 2nd byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  if (at(1) < lo || at(1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (!Continuation(at(k))) return 0;
  }
  return n;
}

bool IsControl(absl::string_view text, size_t i, size_t len) {
  const unsigned char b0 = static_cast<unsigned char>(text[i]);
  if (len == 1) return b0 < 0x20 || b0 == 0x7F;
  // U+0080..U+009F encode as C2 80..C2 9F.
  return len == 2 && b0 == 0xC2 &&
         static_cast<unsigned char>(text[i + 1]) <= 0x9F;
}

}  // namespace

std::string StripControl(absl::string_view text, bool as_space) {
  std::string out;
  out.reserve(text.size());
  bool in_run = false;
  size_t i = 0;
  while (i < text.size()) {
    const size_t len = SequenceLength(text, i);
    if (len == 0) {
      out += kReplacement;
      in_run = false;
      ++i;
      continue;
    }
    if (IsControl(text, i, len)) {
      if (as_space && !in_run) out += ' ';
      in_run = true;
    } else {
      out.append(text.data() + i, len);
      in_run = false;
    }
    i += len;
  }
  return out;
}

std::string CleanText(absl::string_view text, absl::string_view secret,
                      bool as_space) {
  return Redact(StripControl(text, as_space), secret);
}

absl::Status CleanStatus(const absl::Status& status, absl::string_view secret) {
  if (status.ok()) return status;
  absl::Status out(status.code(), CleanText(status.message(), secret, true));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& p) {
    out.SetPayload(url, p);
  });
  return out;
}

void CleanSnapshot(Snapshot* s, absl::string_view secret) {
  s->raw_status = std::string(
      absl::StripAsciiWhitespace(CleanText(s->raw_status, secret, false)));
  // "queued\n" maps once the newline is gone.
  if (s->state == TaskState::kUnknown && !s->raw_status.empty()) {
    s->state = MapStatus(s->raw_status);
  }
  if (s->video.has_value()) {
    s->video->url = CleanText(s->video->url, secret, false);
    s->video->content_type = CleanText(s->video->content_type, secret, false);
    s->video->file_name = CleanText(s->video->file_name, secret, false);
  }
  if (s->error.has_value()) {
    s->error->name = CleanText(s->error->name, secret, true);
    s->error->message = CleanText(s->error->message, secret, true);
  }
}

void CleanSubmitResult(SubmitResult* r, absl::string_view secret) {
  r->status = std::string(
      absl::StripAsciiWhitespace(CleanText(r->status, secret, false)));
}

void CleanLogPage(LogPage* page, absl::string_view secret) {
  for (LogRow& row : page->rows) {
    row.created = CleanText(row.created, secret, false);
    row.status = CleanText(row.status, secret, false);
    row.model = CleanText(row.model, secret, false);
  }
}

}  // namespace videogen::upstream
