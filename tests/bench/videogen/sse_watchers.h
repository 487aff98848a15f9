#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tests/bench/videogen/watchers.h"

namespace videogen::bench {

// Opens many Server-Sent Events streams (GET /v1/generations/{id}:watch,
// HTTP/1.1, one connection each, as a browser's EventSource does) and reads
// them all from one epoll thread: no thread per stream, so that the client
// side does not distort a 2-core machine. Fills the same WatchResult as
// WatcherPool, so the two transports are reported alike: the fan-out latency
// of an UPDATE is its data's `observeTime` to the time the bench read it.
//
// Start, WaitAttached, WaitDone and Collect are called from one thread. The
// per-stream state belongs to the epoll thread from Start until it is joined
// (WaitDone or the destructor); the counters it shares are atomics.
class SseWatcherPool {
 public:
  // `port`: the server's --http_listen port on 127.0.0.1.
  explicit SseWatcherPool(int port);
  ~SseWatcherPool();
  SseWatcherPool(const SseWatcherPool&) = delete;
  SseWatcherPool& operator=(const SseWatcherPool&) = delete;

  // Opens `n` streams on generation `id`. Called once.
  void Start(const std::string& id, int n);
  // Waits until every stream got its first event (or ended).
  bool WaitAttached(absl::Duration timeout);
  // Waits until every stream ended; closes the rest on timeout. Joins the
  // epoll thread.
  bool WaitDone(absl::Duration timeout);
  // After WaitDone.
  WatchResult Collect();

  struct Stream;

 private:
  void Loop();
  void Connect(Stream& s);
  void OnWritable(Stream& s);
  void OnReadable(Stream& s, char* buf, size_t cap);
  void ParseBody(Stream& s, absl::Time now);
  void OnFrame(Stream& s, absl::string_view frame, absl::Time now);
  void End(Stream& s, std::string error);

  const int port_;
  std::string id_;
  std::string request_;
  std::vector<std::unique_ptr<Stream>> streams_;
  int epoll_fd_ = -1;
  std::thread loop_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> attached_{0};
  std::atomic<int64_t> done_{0};
  absl::Time start_;
  std::atomic<int64_t> all_attached_ns_{0};  // set by the last attach
};

}  // namespace videogen::bench
