#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/api/gateway.h"
#include "server/auth/authenticator.h"
#include "server/http/media_source.h"

namespace videogen::http {

// One finished request, for access logs and metrics. Never holds the target
// (it may carry ?access_token=) nor any header value.
struct RequestLog {
  std::string_view method;
  std::string_view route;   // RouteName(): "/v1/generations/{id}:watch"
  int status = 0;           // HTTP status; for streams, the status sent (200)
  absl::Duration duration;  // to the response headers (streams: to the end)
};

struct HttpServerOptions {
  // host:port, [v6]:port or localhost:port; port 0 picks a free one.
  std::string listen = "127.0.0.1:0";
  // Threads running the event loop: every socket, stream and timer. No
  // thread per connection or per stream.
  int io_threads = 2;
  // Threads for calls that may block (authenticator, gateway, store, media
  // open, metrics rendering), so that the event loop never waits on them.
  int worker_threads = 4;
  // Open SSE streams at most; past it a watch answers 503 UNAVAILABLE.
  int max_streams = 10000;
  // Open SSE streams of one tenant at most (0 = no limit); past it a watch
  // answers 429 RESOURCE_EXHAUSTED, as the gRPC streams do.
  int64_t max_streams_per_tenant = 0;
  // A comment line on every stream idle for this long.
  absl::Duration heartbeat_interval = absl::Seconds(15);
  // Largest request body (POST /v1/generations); past it 413.
  size_t max_body_bytes = 1 << 20;
  // Time to read one request, and to wait for the next on a kept-alive
  // connection.
  absl::Duration idle_timeout = absl::Seconds(60);
  // Longest one write may take; a stream whose client stops reading is
  // closed after it.
  absl::Duration write_timeout = absl::Seconds(30);
  // Events queued for one stream at most; past it the client is too slow
  // and its stream ends with `event: error` (resume with Last-Event-ID).
  size_t stream_backlog_events = 256;
  // SO_SNDBUF for accepted sockets; 0 keeps the kernel's. Tests shrink it.
  int socket_send_buffer_bytes = 0;
  // Called once per request on an event-loop or worker thread; must be
  // cheap and thread-safe. May be empty.
  std::function<void(const RequestLog&)> on_request;
};

// Counters, for metrics and tests.
struct HttpServerStats {
  int64_t requests = 0;          // requests read
  int64_t open_streams = 0;      // SSE streams open now
  int64_t streams_opened = 0;    // SSE streams ever opened
  int64_t streams_rejected = 0;  // 503 past max_streams or while draining
  int64_t streams_cut_slow = 0;  // ended because the client read too slowly
};

// The HTTP/JSON API, Server-Sent Events and the dashboard of design.md §9,
// on Boost.Beast: `io_threads` threads run every connection and stream, and
// `worker_threads` run the blocking calls; nothing else starts threads. Every
// API call goes through `gateway` (validation, tenants, quotas): this class
// only authenticates, translates JSON and maps status codes.
//
// Thread-safety: Start, Drain and Stop are called by the owner, from one
// thread; port() and stats() from any thread. The gateway, authenticator,
// media source and metrics function must outlive Stop() (or the destructor).
class HttpServer {
 public:
  // `media` may be null (then /v1/media/{id} is NOT_FOUND); `metrics` may be
  // empty (then /metrics is 404).
  HttpServer(HttpServerOptions options, api::Gateway* gateway,
             auth::Authenticator* authenticator,
             std::function<std::string()> metrics, MediaSource* media);
  ~HttpServer();  // Stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, listens and starts the threads. Error when the address does not
  // parse or cannot be bound.
  absl::Status Start();
  // The bound port (after Start; useful with port 0).
  int port() const { return port_; }

  // Ends every SSE stream with `event: error` (UNAVAILABLE: reconnect, with
  // Last-Event-ID, to another replica) and refuses new ones with 503. Unary
  // requests are still served. Returns at once; streams end on the loop.
  void Drain();
  // Waits until no request is in flight (a create waiting for its submit
  // gets its answer) or `deadline`. True when none is. For drain: creates
  // get --drain_grace over HTTP as over gRPC.
  bool AwaitRequests(absl::Time deadline);
  // Closes the listener and every connection, unsubscribes every stream from
  // the gateway and joins the threads. Idempotent.
  void Stop();

  HttpServerStats stats() const;

  class Core;  // shared with connections; defined in http_server.cc
  class Loop;  // the io_context, worker pool and acceptor

 private:
  std::shared_ptr<Core> core_;
  std::unique_ptr<Loop> loop_;  // destroyed before core_ is released
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
  std::vector<std::thread> io_threads_;
};

}  // namespace videogen::http
