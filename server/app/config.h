#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videogen::app {

// Everything videogen-server is configured with, read once from flags
// (absl flags, with VIDEOGEN_* environment fallbacks; design.md §3). Tests
// build one directly and start a Server with it.
struct Config {
  // Listeners.
  std::string listen = "127.0.0.1:50051";
  std::string http_listen;     // "" = off (design.md §9)
  std::string metrics_listen;  // "" = off; /metrics is also on http_listen
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;  // set: clients must present a cert
  bool reflection = false;
  int max_message_bytes = 256 * 1024;
  int max_concurrent_streams_per_connection = 1000;
  int64_t max_streams = 100000;
  int64_t max_streams_per_tenant = 10000;
  int stream_backlog = 1024;

  // Auth (design.md §7).
  std::string auth = "keys";  // keys | none
  bool allow_unauthenticated = false;

  // Store (design.md §6).
  std::string store = "sqlite";  // sqlite | memory | postgres
  std::string data_dir = "videogen-data";
  std::string database_url;
  std::string replica_id;  // "" = host name and pid (postgres), "local"
  absl::Duration lease_duration = absl::Seconds(30);
  absl::Duration retention = absl::Hours(24 * 30);

  // Upstream (design.md §1).
  bool simulate = false;
  absl::Duration sim_queued_for = absl::Seconds(1);
  absl::Duration sim_generating_for = absl::Seconds(3);
  double sim_error_rate = 0;
  std::string upstream_url = "https://api.aimlapi.com";
  std::string upstream_endpoint = "legacy";
  std::string api_key;  // from AIMLAPI_KEY or --api_key_file; never logged
  double upstream_rate_limit = 20;
  int upstream_max_in_flight = 64;
  absl::Duration upstream_timeout = absl::Seconds(30);
  std::vector<std::string> models;  // empty = the known Kling models

  // Tracker.
  absl::Duration poll_initial_delay = absl::Seconds(2);
  absl::Duration poll_interval = absl::Seconds(5);
  absl::Duration generation_deadline = absl::Minutes(30);
  int max_outstanding_submits = 4;
  absl::Duration reconcile_window = absl::Minutes(15);
  double reconcile_rate = 60;  // usage-log requests per minute
  absl::Duration reconcile_interval = absl::Seconds(20);

  // Streams and drain.
  absl::Duration heartbeat_interval = absl::Seconds(15);
  absl::Duration drain_grace = absl::Seconds(20);
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  absl::Duration keepalive_min_ping_interval = absl::Seconds(10);
  absl::Duration max_connection_age = absl::Minutes(30);
  absl::Duration max_connection_age_grace = absl::Minutes(5);

  // Webhooks (design.md §8).
  bool webhook_allow_insecure = false;
  std::string webhook_retry_schedule;  // "" = the Standard Webhooks schedule
  std::string webhook_secret_file;     // --auth=none only

  // Mirroring (design.md §11).
  std::string mirror = "local";  // none | local | s3
  std::string s3_endpoint;
  std::string s3_bucket;
  std::string s3_region = "us-east-1";

  std::string log_format = "json";
};

// Reads the flags (after absl::ParseCommandLine) and checks them: a bad
// combination is INVALID_ARGUMENT with a message that says what to change.
absl::StatusOr<Config> ConfigFromFlags();

// Flags fall back to VIDEOGEN_<NAME> environment variables (and
// --database_url to VIDEOGEN_DATABASE_URL); the command line wins because
// absl keeps the last value given. Returns argv with those prepended.
std::vector<char*> WithEnvFallbacks(int argc, char** argv,
                                    std::vector<std::string>& storage);

// True when `address` (host:port) binds only to the loopback interface.
bool IsLoopbackAddress(const std::string& address);

}  // namespace videogen::app
