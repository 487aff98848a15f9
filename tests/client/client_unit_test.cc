// Unit tests of the client's pure pieces: terminal sanitizing, JSON control
// escaping, key checks and the choice of download source. The binaries are
// tested end to end by client_e2e.py.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "client/commands.h"
#include "client/download.h"
#include "client/sanitize.h"
#include "client/video_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace videogen::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

TEST(ForTerminalTest, DropsC0AndC1ControlsButKeepsText) {
  EXPECT_EQ(ForTerminal("generating\x1b[2J\x1b]0;pwned\x07 ok"),
            "generating[2J]0;pwned ok");
  EXPECT_EQ(ForTerminal("a\rb\tc\bd\x7f"
                        "e"),
            "abcde");
  // U+009B (CSI as one character) and U+0085 (NEL) in UTF-8.
  EXPECT_EQ(ForTerminal("x\xc2\x9b"
                        "2Jy\xc2\x85z"),
            "x2Jyz");
  EXPECT_EQ(ForTerminal("caf\xc3\xa9 \xe2\xa0\x8b \xf0\x9f\x8e\xac"),
            "caf\xc3\xa9 \xe2\xa0\x8b \xf0\x9f\x8e\xac");
}

TEST(ForTerminalTest, NewlinesOnlyWhenAllowed) {
  EXPECT_EQ(ForTerminal("one\ntwo"), "one two");
  EXPECT_EQ(ForTerminal("one\ntwo", /*keep_newlines=*/true), "one\ntwo");
}

TEST(ForTerminalTest, InvalidUtf8AndBidiOverrides) {
  // A lone C1 byte (8-bit CSI), a truncated sequence, an overlong '/'.
  EXPECT_EQ(ForTerminal("a\x9b"
                        "b"),
            "a\xef\xbf\xbd"
            "b");
  EXPECT_EQ(ForTerminal("a\xe2\x82"), "a\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(ForTerminal("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");
  // U+202E RIGHT-TO-LEFT OVERRIDE and U+2066 LEFT-TO-RIGHT ISOLATE.
  EXPECT_EQ(ForTerminal("ab\xe2\x80\xae"
                        "cd\xe2\x81\xa6"),
            "abcd");
}

TEST(ForTerminalTest, RedactsTheRegisteredKey) {
  SetSecretToRedact("vgk_live_secret123");
  EXPECT_EQ(ForTerminal("bad key vgk_live_secret123!"), "bad key [redacted]!");
  // Control characters cannot smuggle it through.
  EXPECT_EQ(ForTerminal("vgk_live_\x1bsecret123"), "[redacted]");
  SetSecretToRedact("");
  EXPECT_EQ(ForTerminal("vgk_live_secret123"), "vgk_live_secret123");
}

TEST(EscapeJsonControlsTest, SameValueNoRawControls) {
  const std::string raw = nlohmann::json{
      {"s",
       "a\xc2\x9b"
       "b\x7f"
       "c\xe2\x80\xa8"
       "d\x1b"}}.dump();
  const std::string escaped = EscapeJsonControls(raw);
  EXPECT_EQ(nlohmann::json::parse(escaped), nlohmann::json::parse(raw));
  EXPECT_THAT(escaped, HasSubstr("\\u009b"));
  EXPECT_THAT(escaped, HasSubstr("\\u007f"));
  EXPECT_THAT(escaped, HasSubstr("\\u2028"));
  for (unsigned char c : escaped) {
    EXPECT_TRUE(c >= 0x20 && c != 0x7f) << static_cast<int>(c);
  }
  EXPECT_THAT(escaped, Not(HasSubstr("\xc2\x9b")));
  EXPECT_EQ(EscapeJsonControls(R"({"a":"caf\u00e9 é"})"),
            R"({"a":"caf\u00e9 é"})");
}

TEST(ApiKeyTest, OnlyPrintableAsciiWithoutSpaces) {
  EXPECT_TRUE(ValidApiKey("vgk_abc-DEF.123"));
  EXPECT_FALSE(ValidApiKey(""));
  EXPECT_FALSE(ValidApiKey("two words"));
  EXPECT_FALSE(ValidApiKey("line\nbreak"));
  EXPECT_FALSE(ValidApiKey("caf\xc3\xa9"));
}

TEST(VideoSourcesTest, MirrorPathOnTheListenerFirstWithTheKey) {
  v1::Video video;
  video.set_url("https://cdn.example.com/v.mp4");
  video.set_mirror_url("/v1/media/abc");
  std::vector<std::string> notes;
  std::vector<VideoSource> sources =
      VideoSources(video, "http://127.0.0.1:8080/", &notes);
  ASSERT_EQ(sources.size(), 2u);
  EXPECT_EQ(sources[0].url, "http://127.0.0.1:8080/v1/media/abc");
  EXPECT_TRUE(sources[0].send_key);
  EXPECT_EQ(sources[1].url, "https://cdn.example.com/v.mp4");
  EXPECT_FALSE(sources[1].send_key);  // the CDN never sees the key
  EXPECT_THAT(notes, IsEmpty());
}

TEST(VideoSourcesTest, MirrorWithoutListenerIsANote) {
  v1::Video video;
  video.set_url("https://cdn.example.com/v.mp4");
  video.set_mirror_url("/v1/media/abc");
  std::vector<std::string> notes;
  std::vector<VideoSource> sources = VideoSources(video, "", &notes);
  ASSERT_EQ(sources.size(), 1u);
  EXPECT_EQ(sources[0].url, "https://cdn.example.com/v.mp4");
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_THAT(notes[0], HasSubstr("VIDEOGEN_HTTP_URL"));
}

TEST(VideoSourcesTest, FailedMirrorFallsBackAndSaysWhy) {
  v1::Video video;
  video.set_url("https://cdn.example.com/v.mp4");
  video.set_mirror_error("upstream answered 404");
  std::vector<std::string> notes;
  std::vector<VideoSource> sources =
      VideoSources(video, "http://127.0.0.1:8080", &notes);
  ASSERT_EQ(sources.size(), 1u);
  EXPECT_FALSE(sources[0].send_key);
  EXPECT_THAT(notes, ElementsAre(HasSubstr("upstream answered 404")));
}

TEST(VideoSourcesTest, AbsoluteMirrorUrlIsUsedAsIs) {
  v1::Video video;
  video.set_mirror_url("https://videogen.example.com/v1/media/abc");
  std::vector<std::string> notes;
  std::vector<VideoSource> sources = VideoSources(video, "", &notes);
  ASSERT_EQ(sources.size(), 1u);
  EXPECT_EQ(sources[0].url, "https://videogen.example.com/v1/media/abc");
  EXPECT_TRUE(sources[0].send_key);
}

TEST(OnListenerTest, SameSchemeHostAndPortOnly) {
  EXPECT_TRUE(
      OnListener("http://127.0.0.1:8080/v1/media/x", "http://127.0.0.1:8080"));
  EXPECT_TRUE(OnListener("HTTP://Example.com/x", "http://example.com:80/"));
  EXPECT_TRUE(OnListener("https://[::1]:8443/x", "https://[::1]:8443"));
  EXPECT_FALSE(OnListener("http://127.0.0.1:8081/x", "http://127.0.0.1:8080"));
  EXPECT_FALSE(OnListener("https://127.0.0.1:8080/x", "http://127.0.0.1:8080"));
  EXPECT_FALSE(OnListener("http://127.0.0.1:8080@evil.example/x",
                          "http://127.0.0.1:8080"));
  EXPECT_FALSE(OnListener("http://evil.example/?http://127.0.0.1:8080",
                          "http://127.0.0.1:8080"));
  EXPECT_FALSE(OnListener("ftp://127.0.0.1:8080/x", "http://127.0.0.1:8080"));
  EXPECT_FALSE(OnListener("http://127.0.0.1:8080/x", ""));
}

TEST(JoinUrlTest, OneSlashBetween) {
  EXPECT_EQ(JoinUrl("http://h:1/", "/v1/media/x"), "http://h:1/v1/media/x");
  EXPECT_EQ(JoinUrl("http://h:1", "v1/media/x"), "http://h:1/v1/media/x");
}

TEST(FileSha256Test, KnownDigests) {
  const std::string path = ::testing::TempDir() + "/sha256-test";
  {
    std::ofstream out(path, std::ios::binary);
    out << "abc";
  }
  EXPECT_EQ(*FileSha256(path),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  { std::ofstream out(path, std::ios::binary | std::ios::trunc); }
  EXPECT_EQ(*FileSha256(path),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::remove(path.c_str());
  EXPECT_FALSE(FileSha256(path).ok());
}

}  // namespace
}  // namespace videogen::client
