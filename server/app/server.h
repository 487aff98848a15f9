#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/app/config.h"

namespace videogen::app {

// videogen-server as an object: Start wires store, upstream, tracker,
// fan-out hub, auth, the gRPC and HTTP edges and metrics; Drain takes them
// down in design.md §3's order within `drain_grace`. main() is a thin shell
// around it, and tests can drive it in-process. Start and Drain are called
// from one thread (main's); everything else runs on the components' own
// threads.
class Server {
 public:
  explicit Server(Config config);
  ~Server();  // Drains if still running
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Clear errors for everything that can be misconfigured (unreadable TLS
  // files, a port in use, a damaged database). Returns with every listener
  // bound.
  absl::Status Start();
  // Health NOT_SERVING, streams UNAVAILABLE (clients resume elsewhere),
  // in-flight RPCs and submits get until `drain_grace`, then everything
  // stops. Submits still in flight stay recorded as sent and are
  // reconciled by the next start (design.md §5).
  void Drain();
  // Deletes terminal generations past --retention (and their media).
  void Purge();

  int grpc_port() const;
  int http_port() const;
  int metrics_port() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace videogen::app
