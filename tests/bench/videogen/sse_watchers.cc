#include "tests/bench/videogen/sse_watchers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"

namespace videogen::bench {
namespace {

// Sockets connected per turn of the loop, between reads: the streams attach
// while earlier ones already receive, as the gRPC pool's do.
constexpr int kConnectBatch = 64;
constexpr size_t kReadBuffer = 64 * 1024;

// The `observeTime` of a GenerationEvent's proto3 JSON, in Unix nanoseconds;
// -1 when absent. A substring scan, not a JSON parse: the bench reads 1,000
// frames per change on one thread and must not add a parser's cost to the
// latency it measures.
int64_t ObserveNs(absl::string_view data) {
  constexpr absl::string_view kKey = "\"observeTime\":\"";
  size_t at = data.find(kKey);
  if (at == absl::string_view::npos) return -1;
  size_t begin = at + kKey.size();
  size_t end = data.find('"', begin);
  if (end == absl::string_view::npos) return -1;
  google::protobuf::Timestamp ts;
  if (!google::protobuf::util::TimeUtil::FromString(
          std::string(data.substr(begin, end - begin)), &ts)) {
    return -1;
  }
  return google::protobuf::util::TimeUtil::TimestampToNanoseconds(ts);
}

}  // namespace

// One SSE stream. Touched only by the epoll thread while it runs.
struct SseWatcherPool::Stream {
  int fd = -1;
  bool sent = false;          // the request is out
  bool headers_done = false;  // the response head was read
  bool chunked = false;
  enum class Chunk { kSize, kData, kDataEnd } chunk = Chunk::kSize;
  size_t chunk_left = 0;
  bool last_chunk = false;  // "0\r\n\r\n": the server ended the stream
  std::string raw;          // bytes not yet de-chunked
  std::string body;         // SSE text not yet split into frames
  bool ended = false;
  std::string error;  // why it ended badly; empty when it ended well

  int64_t events = 0;
  bool late = false;
  bool terminal = false;
  bool bad_update = false;  // an UPDATE without a readable observeTime
  int64_t update_bytes = 0;
  std::vector<int64_t> latency_us;
  std::vector<Change> changes;  // the first kChangesPerStream UPDATEs
};

SseWatcherPool::SseWatcherPool(int port) : port_(port) {}

SseWatcherPool::~SseWatcherPool() {
  if (loop_.joinable()) {
    stop_.store(true);
    loop_.join();
  }
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

void SseWatcherPool::Start(const std::string& id, int n) {
  id_ = id;
  request_ = absl::StrCat("GET /v1/generations/", id,
                          ":watch HTTP/1.1\r\nHost: 127.0.0.1:", port_,
                          "\r\nAccept: text/event-stream\r\n"
                          "Cache-Control: no-cache\r\n\r\n");
  streams_.reserve(n);
  for (int i = 0; i < n; ++i) streams_.push_back(std::make_unique<Stream>());
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  start_ = absl::Now();
  loop_ = std::thread([this] { Loop(); });
}

void SseWatcherPool::Loop() {
  const size_t n = streams_.size();
  std::vector<char> buf(kReadBuffer);
  epoll_event events[256];
  size_t next = 0;  // the next stream to connect
  while (!stop_.load() && done_.load() < static_cast<int64_t>(n)) {
    for (int k = 0; k < kConnectBatch && next < n; ++k) {
      Connect(*streams_[next++]);
    }
    if (epoll_fd_ < 0) break;
    int got = epoll_wait(epoll_fd_, events, 256, next < n ? 0 : 50);
    for (int i = 0; i < got; ++i) {
      Stream& s = *static_cast<Stream*>(events[i].data.ptr);
      if (s.ended) continue;
      if (!s.sent && (events[i].events & (EPOLLOUT | EPOLLERR))) {
        OnWritable(s);
      }
      if (!s.ended && s.sent &&
          (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
        OnReadable(s, buf.data(), buf.size());
      }
    }
  }
  for (auto& s : streams_) {
    if (!s->ended) End(*s, "timed out before the stream ended");
  }
}

void SseWatcherPool::Connect(Stream& s) {
  s.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s.fd < 0) return End(s, absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
      errno != EINPROGRESS) {
    return End(s, absl::StrCat("connect: ", std::strerror(errno)));
  }
  epoll_event ev{};
  ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
  ev.data.ptr = &s;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, s.fd, &ev) != 0) {
    return End(s, absl::StrCat("epoll_ctl: ", std::strerror(errno)));
  }
}

void SseWatcherPool::OnWritable(Stream& s) {
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return End(s, absl::StrCat("connect: ", std::strerror(err)));
  // A few hundred bytes into an empty socket buffer: one send does it.
  ssize_t sent = send(s.fd, request_.data(), request_.size(), MSG_NOSIGNAL);
  if (sent != static_cast<ssize_t>(request_.size())) {
    return End(s, absl::StrCat("send: ", sent < 0 ? std::strerror(errno)
                                                  : "short write"));
  }
  s.sent = true;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.ptr = &s;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, s.fd, &ev);
}

void SseWatcherPool::OnReadable(Stream& s, char* buf, size_t cap) {
  while (!s.ended) {
    ssize_t got = recv(s.fd, buf, cap, 0);
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      return End(s, absl::StrCat("recv: ", std::strerror(errno)));
    }
    if (got == 0) {
      return End(s, s.terminal ? std::string()
                               : "connection closed before a terminal event");
    }
    const absl::Time now = absl::Now();
    s.raw.append(buf, static_cast<size_t>(got));
    ParseBody(s, now);
    if (s.last_chunk && !s.ended) {
      return End(s, s.terminal ? std::string()
                               : "stream ended before a terminal event");
    }
  }
}

void SseWatcherPool::ParseBody(Stream& s, absl::Time now) {
  if (!s.headers_done) {
    size_t end = s.raw.find("\r\n\r\n");
    if (end == std::string::npos) return;
    std::string head = absl::AsciiStrToLower(s.raw.substr(0, end));
    std::string status_line = s.raw.substr(0, s.raw.find("\r\n"));
    if (!absl::StartsWith(status_line, "HTTP/1.1 200") &&
        !absl::StartsWith(status_line, "HTTP/1.0 200")) {
      return End(s,
                 absl::StrCat(status_line, ": ", s.raw.substr(end + 4, 200)));
    }
    s.chunked = absl::StrContains(head, "transfer-encoding: chunked");
    s.headers_done = true;
    s.raw.erase(0, end + 4);
  }
  if (!s.chunked) {
    s.body += s.raw;
    s.raw.clear();
  } else {
    size_t pos = 0;
    while (!s.last_chunk) {
      if (s.chunk == Stream::Chunk::kSize) {
        size_t eol = s.raw.find("\r\n", pos);
        if (eol == std::string::npos) break;
        absl::string_view size(s.raw.data() + pos, eol - pos);
        size = size.substr(0, size.find(';'));
        uint64_t bytes = 0;
        if (!absl::SimpleHexAtoi(size, &bytes)) {
          return End(s, absl::StrCat("bad chunk size: ", size));
        }
        pos = eol + 2;
        if (bytes == 0) {
          s.last_chunk = true;
          break;
        }
        s.chunk_left = bytes;
        s.chunk = Stream::Chunk::kData;
      }
      if (s.chunk == Stream::Chunk::kData) {
        size_t take = std::min(s.chunk_left, s.raw.size() - pos);
        s.body.append(s.raw, pos, take);
        pos += take;
        s.chunk_left -= take;
        if (s.chunk_left > 0) break;
        s.chunk = Stream::Chunk::kDataEnd;
      }
      if (s.raw.size() - pos < 2) break;
      pos += 2;  // the CRLF after a chunk's data
      s.chunk = Stream::Chunk::kSize;
    }
    s.raw.erase(0, pos);
  }
  size_t begin = 0;
  while (!s.ended) {
    size_t end = s.body.find("\n\n", begin);
    if (end == std::string::npos) break;
    OnFrame(s, absl::string_view(s.body).substr(begin, end - begin), now);
    begin = end + 2;
  }
  if (!s.ended) s.body.erase(0, begin);
}

void SseWatcherPool::OnFrame(Stream& s, absl::string_view frame,
                             absl::Time now) {
  absl::string_view event, data;
  for (size_t begin = 0; begin <= frame.size();) {
    size_t end = frame.find('\n', begin);
    if (end == absl::string_view::npos) end = frame.size();
    absl::string_view line = frame.substr(begin, end - begin);
    begin = end + 1;
    if (absl::ConsumePrefix(&line, "event:")) {
      event = absl::StripLeadingAsciiWhitespace(line);
    } else if (absl::ConsumePrefix(&line, "data:")) {
      data = absl::StripLeadingAsciiWhitespace(line);
    }
    // "id:" is the revision (not needed here); ":" starts a heartbeat.
  }
  if (event.empty() && data.empty()) return;  // a heartbeat comment
  if (event == "error") {
    return End(s, absl::StrCat("event: error: ", data));
  }
  if (s.events++ == 0) {
    s.late = !absl::StrContains(data, "\"state\":\"STATE_QUEUED\"");
    if (attached_.fetch_add(1) + 1 == static_cast<int64_t>(streams_.size())) {
      all_attached_ns_.store(absl::ToUnixNanos(now));
    }
  }
  // proto3 JSON leaves out `done` while it is false.
  const bool done = absl::StrContains(data, "\"done\":true");
  if (event == "update") {
    const int64_t observed = ObserveNs(data);
    if (observed < 0) {
      s.bad_update = true;
    } else {
      s.latency_us.push_back((absl::ToUnixNanos(now) - observed) / 1000);
      if (s.changes.size() < kChangesPerStream)
        s.changes.push_back(Change{id_, observed, done});
    }
    s.update_bytes += static_cast<int64_t>(frame.size() + 2);
  }
  s.terminal = done;
}

void SseWatcherPool::End(Stream& s, std::string error) {
  if (s.ended) return;
  s.ended = true;
  s.error = std::move(error);
  if (s.fd >= 0) {
    close(s.fd);  // also leaves the epoll set
    s.fd = -1;
  }
  s.raw.clear();
  s.body.clear();
  done_.fetch_add(1);
}

bool SseWatcherPool::WaitAttached(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int64_t n = static_cast<int64_t>(streams_.size());
  while (attached_.load() < n && done_.load() < n && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  return attached_.load() == n;
}

bool SseWatcherPool::WaitDone(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int64_t n = static_cast<int64_t>(streams_.size());
  while (done_.load() < n && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const bool all = done_.load() == n;
  stop_.store(true);  // the loop ends the rest as timed out
  if (loop_.joinable()) loop_.join();
  return all;
}

WatchResult SseWatcherPool::Collect() {
  WatchResult r;
  r.streams = static_cast<int64_t>(streams_.size());
  r.channels = r.streams;  // one connection per stream
  r.attached = attached_.load();
  r.attach_time = r.attached == r.streams
                      ? absl::FromUnixNanos(all_attached_ns_.load()) - start_
                      : absl::InfiniteDuration();
  r.min_updates = streams_.empty() ? 0 : INT64_MAX;
  std::map<std::pair<std::string, int64_t>, Change> changes;
  for (const auto& sp : streams_) {
    const Stream& s = *sp;
    for (size_t i = 0; i < s.changes.size(); ++i) {
      const Change& c = s.changes[i];
      const int64_t us = s.latency_us[i];
      auto [it, inserted] = changes.try_emplace({c.id, c.observe_ns}, c);
      Change& agg = it->second;
      agg.min_us = inserted ? us : std::min(agg.min_us, us);
      agg.max_us = std::max(agg.max_us, us);
      ++agg.receivers;
    }
    if (s.late) ++r.late;
    std::string error = s.error;
    if (error.empty() && s.bad_update) {
      error = "an UPDATE without a readable observeTime";
    }
    if (error.empty() && s.terminal) {
      ++r.finished_ok;
    } else {
      ++r.errors;
      if (r.first_error.empty()) r.first_error = error;
    }
    const int64_t updates = static_cast<int64_t>(s.latency_us.size());
    r.updates += updates;
    r.min_updates = std::min(r.min_updates, updates);
    r.update_bytes += s.update_bytes;
    r.latency_us.insert(r.latency_us.end(), s.latency_us.begin(),
                        s.latency_us.end());
  }
  for (auto& [key, c] : changes) r.changes.push_back(c);
  std::sort(r.changes.begin(), r.changes.end(),
            [](const Change& a, const Change& b) {
              return a.observe_ns < b.observe_ns;
            });
  return r;
}

}  // namespace videogen::bench
