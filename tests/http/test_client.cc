#include "tests/http/test_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace videogen::http::testing {
namespace {

bool SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads available bytes; 0 on EOF, -1 on timeout or error.
ssize_t ReadSome(int fd, std::string* out, absl::Time deadline) {
  absl::Duration left = deadline - absl::Now();
  if (left < absl::ZeroDuration()) return -1;
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
  if (r <= 0) return -1;
  char buf[16384];
  ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
  if (n > 0) out->append(buf, static_cast<size_t>(n));
  return n < 0 ? 0 : n;  // a reset counts as EOF
}

std::string Request(const std::string& method, const std::string& target,
                    const std::vector<std::string>& headers,
                    const std::string& body, bool close) {
  std::string req =
      absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  for (const auto& h : headers) absl::StrAppend(&req, h, "\r\n");
  if (close) req += "Connection: close\r\n";
  if (!body.empty() || method == "POST") {
    absl::StrAppend(&req, "Content-Length: ", body.size(), "\r\n");
  }
  absl::StrAppend(&req, "\r\n", body);
  return req;
}

// Parses "HTTP/1.1 200 OK\r\nA: b\r\n..." (without the blank line).
int ParseHead(const std::string& head,
              std::map<std::string, std::string>* headers) {
  std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
  int status = 0;
  if (lines.empty()) return 0;
  std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
  if (first.size() < 2 || !absl::SimpleAtoi(first[1], &status)) return 0;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    std::string value(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    (*headers)[name] = value;
  }
  return status;
}

// Decodes a complete chunked body; false if incomplete.
bool DecodeChunked(const std::string& in, std::string* out) {
  size_t pos = 0;
  out->clear();
  while (true) {
    size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) return false;
    size_t size = std::strtoul(in.substr(pos, eol - pos).c_str(), nullptr, 16);
    pos = eol + 2;
    if (size == 0) return true;
    if (in.size() < pos + size + 2) return false;
    out->append(in, pos, size);
    pos += size + 2;
  }
}

}  // namespace

int ConnectLoopback(int port, int rcvbuf) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (rcvbuf > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

HttpResponse Fetch(int port, const std::string& method,
                   const std::string& target,
                   const std::vector<std::string>& headers,
                   const std::string& body, absl::Duration timeout) {
  HttpResponse resp;
  int fd = ConnectLoopback(port);
  if (fd < 0) return resp;
  absl::Time deadline = absl::Now() + timeout;
  if (!SendAll(fd, Request(method, target, headers, body, true))) {
    ::close(fd);
    return resp;
  }
  std::string raw;
  while (ReadSome(fd, &raw, deadline) > 0) {
  }
  ::close(fd);
  size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return resp;
  resp.status = ParseHead(raw.substr(0, end), &resp.headers);
  std::string rest = raw.substr(end + 4);
  if (absl::AsciiStrToLower(resp.Header("transfer-encoding")) == "chunked") {
    DecodeChunked(rest, &resp.body);
  } else {
    resp.body = rest;
  }
  return resp;
}

SseReader::SseReader(int port, const std::string& target,
                     const std::vector<std::string>& headers, int rcvbuf,
                     bool read_headers) {
  fd_ = ConnectLoopback(port, rcvbuf);
  if (fd_ < 0) {
    eof_ = true;
    return;
  }
  std::vector<std::string> h = headers;
  h.push_back("Accept: text/event-stream");
  if (!SendAll(fd_, Request("GET", target, h, "", false))) eof_ = true;
  if (read_headers) ReadHead();
}

SseReader::~SseReader() { Close(); }

void SseReader::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool SseReader::ReadHead(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (raw_.find("\r\n\r\n") == std::string::npos) {
    if (!Fill(deadline)) return false;
  }
  size_t end = raw_.find("\r\n\r\n");
  status_ = ParseHead(raw_.substr(0, end), &headers_);
  raw_.erase(0, end + 4);
  auto it = headers_.find("transfer-encoding");
  chunked_ =
      it != headers_.end() && absl::AsciiStrToLower(it->second) == "chunked";
  return status_ != 0;
}

bool SseReader::Fill(absl::Time deadline) {
  if (fd_ < 0 || eof_) return false;
  ssize_t n = ReadSome(fd_, &raw_, deadline);
  if (n == 0) eof_ = true;
  return n > 0;
}

std::string SseReader::ReadAll(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (Fill(deadline)) {
  }
  std::string body;
  if (chunked_) {
    DecodeChunked(raw_, &body);
  } else {
    body = raw_;
  }
  return body;
}

void SseReader::Dechunk() {
  if (!chunked_) {
    text_ += raw_;
    raw_.clear();
    return;
  }
  while (!body_done_) {
    size_t eol = raw_.find("\r\n");
    if (eol == std::string::npos) return;
    size_t size = std::strtoul(raw_.substr(0, eol).c_str(), nullptr, 16);
    if (size == 0) {
      body_done_ = true;
      raw_.clear();
      return;
    }
    if (raw_.size() < eol + 2 + size + 2) return;
    text_.append(raw_, eol + 2, size);
    raw_.erase(0, eol + 2 + size + 2);
  }
}

std::optional<SseFrame> SseReader::Next(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    Dechunk();
    size_t end = text_.find("\n\n");
    if (end != std::string::npos) {
      std::string block = text_.substr(0, end);
      text_.erase(0, end + 2);
      SseFrame f;
      for (absl::string_view line : absl::StrSplit(block, '\n')) {
        if (absl::StartsWith(line, ":")) {
          f.comment = std::string(absl::StripAsciiWhitespace(line.substr(1)));
        } else if (absl::ConsumePrefix(&line, "id: ")) {
          f.id = std::string(line);
        } else if (absl::ConsumePrefix(&line, "event: ")) {
          f.event = std::string(line);
        } else if (absl::ConsumePrefix(&line, "data: ")) {
          f.data += std::string(line);
        }
      }
      return f;
    }
    if (body_done_) {
      eof_ = true;
      return std::nullopt;
    }
    if (!Fill(deadline)) return std::nullopt;
  }
}

}  // namespace videogen::http::testing
