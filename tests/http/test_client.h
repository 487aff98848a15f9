#pragma once

// A small blocking HTTP/1.1 client over raw loopback sockets, for tests:
// one-shot requests (Connection: close, chunked or sized bodies) and an SSE
// reader that decodes chunked framing incrementally. Owned by one thread.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace videogen::http::testing {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// Connects to 127.0.0.1:port; -1 on failure. `rcvbuf` > 0 shrinks SO_RCVBUF.
int ConnectLoopback(int port, int rcvbuf = 0);

// Sends one request with Connection: close and reads the whole response.
// Headers are "Name: value" lines. Status 0 on a transport failure.
HttpResponse Fetch(int port, const std::string& method,
                   const std::string& target,
                   const std::vector<std::string>& headers = {},
                   const std::string& body = "",
                   absl::Duration timeout = absl::Seconds(10));

struct SseFrame {
  std::string id;
  std::string event;
  std::string data;
  std::string comment;  // for comment lines (": heartbeat")
};

class SseReader {
 public:
  // Sends a GET and reads the status line and headers (blocking).
  SseReader(int port, const std::string& target,
            const std::vector<std::string>& headers = {}, int rcvbuf = 0,
            bool read_headers = true);
  ~SseReader();
  SseReader(const SseReader&) = delete;
  SseReader& operator=(const SseReader&) = delete;

  // Reads the response head (when the constructor did not).
  bool ReadHead(absl::Duration timeout = absl::Seconds(10));
  int status() const { return status_; }
  const std::map<std::string, std::string>& headers() const { return headers_; }
  // The body so far, for non-200 answers (read to EOF).
  std::string ReadAll(absl::Duration timeout = absl::Seconds(10));

  // The next frame (event or comment), or nullopt on EOF or timeout; eof()
  // tells which.
  std::optional<SseFrame> Next(absl::Duration timeout = absl::Seconds(10));
  bool eof() const { return eof_; }
  int fd() const { return fd_; }
  void Close();

 private:
  // Reads more bytes into raw_; false on EOF/timeout.
  bool Fill(absl::Time deadline);
  // Moves complete chunks from raw_ into text_.
  void Dechunk();

  int fd_ = -1;
  int status_ = 0;
  bool chunked_ = false;
  bool eof_ = false;
  bool body_done_ = false;
  std::map<std::string, std::string> headers_;
  std::string raw_;   // bytes off the socket, not yet de-chunked
  std::string text_;  // the event-stream text
};

}  // namespace videogen::http::testing
