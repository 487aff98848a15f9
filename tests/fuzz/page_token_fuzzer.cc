// Fuzzes page-token decoding (server/api/page_token.h). A page token comes
// from the client, so it is untrusted input. The first byte picks a mode:
//  - even: the rest is a token, decoded against a fixed filter; a token that
//    decodes must round-trip through EncodePageToken to the same cursor;
//  - odd: the rest describes a cursor and a filter; encoding then decoding
//    must give the cursor back, and the token must be refused under a
//    different filter.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "fuzzer/FuzzedDataProvider.h"
#include "server/api/page_token.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

namespace api = videogen::api;
namespace store = videogen::store;

bool Same(const store::Cursor& a, const store::Cursor& b) {
  return a.create_time == b.create_time && a.id == b.id;
}

store::ListQuery Query(FuzzedDataProvider& in) {
  store::ListQuery q;
  const int states = in.ConsumeIntegralInRange(0, 4);
  for (int i = 0; i < states; ++i) {
    q.states.push_back(static_cast<videogen::v1::Generation::State>(
        in.ConsumeIntegralInRange(0, 8)));
  }
  const int labels = in.ConsumeIntegralInRange(0, 3);
  for (int i = 0; i < labels; ++i) {
    std::string k = in.ConsumeRandomLengthString(16);
    q.labels[k] = in.ConsumeRandomLengthString(16);
  }
  return q;
}

void DecodeToken(const std::string& token) {
  static const std::string* const kFingerprint =
      new std::string(api::FilterFingerprint(store::ListQuery()));
  for (const std::string& fp : {*kFingerprint, std::string()}) {
    auto cursor = api::DecodePageToken(token, fp);
    if (!cursor.ok()) {
      FUZZ_CHECK(absl::IsInvalidArgument(cursor.status()), "%s",
                 cursor.status().ToString().c_str());
      continue;
    }
    FUZZ_CHECK(!cursor->id.empty(), "a decoded cursor names a generation");
    auto again = api::DecodePageToken(api::EncodePageToken(*cursor, fp), fp);
    FUZZ_CHECK(again.ok() && Same(*again, *cursor),
               "decoded cursor does not round-trip");
  }
}

void RoundTrip(FuzzedDataProvider& in) {
  store::Cursor cursor;
  cursor.create_time = absl::FromUnixMicros(in.ConsumeIntegral<int64_t>());
  cursor.id = in.ConsumeRandomLengthString(200);
  if (cursor.id.empty()) return;  // never encoded: a page ends at a real row
  const store::ListQuery q1 = Query(in);
  const store::ListQuery q2 = Query(in);
  const std::string fp1 = api::FilterFingerprint(q1);
  const std::string fp2 = api::FilterFingerprint(q2);
  const std::string token = api::EncodePageToken(cursor, fp1);
  for (char c : token) {
    FUZZ_CHECK(absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '=',
               "token is not URL-safe: 0x%02x", static_cast<unsigned char>(c));
  }
  auto back = api::DecodePageToken(token, fp1);
  FUZZ_CHECK(back.ok() && Same(*back, cursor), "cursor does not round-trip");
  if (fp2 != fp1) {
    FUZZ_CHECK(!api::DecodePageToken(token, fp2).ok(),
               "token accepted under another filter");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 0) {
    DecodeToken(std::string(reinterpret_cast<const char*>(data) + 1, size - 1));
  } else {
    FuzzedDataProvider in(data + 1, size - 1);
    RoundTrip(in);
  }
  return 0;
}
