#include "server/app/config.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC listen address host:port (port 0 picks a free port)");
ABSL_FLAG(std::string, http_listen, "",
          "HTTP/JSON API, Server-Sent Events, dashboard and /metrics "
          "host:port; empty = off");
ABSL_FLAG(std::string, metrics_listen, "",
          "a separate Prometheus /metrics address host:port (also served on "
          "--http_listen); empty = off");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain; with --tls_key_file serves TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for TLS");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: require and verify client certificates (mutual TLS)");
ABSL_FLAG(bool, reflection, false,
          "serve the gRPC reflection service (lets anyone list the API)");
ABSL_FLAG(int, max_message_bytes, 256 * 1024,
          "largest request message accepted");
ABSL_FLAG(int, max_concurrent_streams_per_connection, 1000,
          "HTTP/2 streams one client connection may hold open");
ABSL_FLAG(int64_t, max_streams, 100000,
          "open watch streams on this server, all tenants together");
ABSL_FLAG(int64_t, max_streams_per_tenant, 10000,
          "open watch streams of one tenant on this server");
ABSL_FLAG(int, stream_backlog, 1024,
          "events a stream may have pending before a client that stopped "
          "reading is cut off (RESOURCE_EXHAUSTED)");
ABSL_FLAG(std::string, auth, "keys",
          "keys (every call needs authorization: Bearer KEY) or none");
ABSL_FLAG(bool, allow_unauthenticated, false,
          "allow --auth=none on a non-loopback --listen");
ABSL_FLAG(std::string, store, "sqlite", "sqlite (durable), postgres or memory");
ABSL_FLAG(std::string, data_dir, "videogen-data",
          "directory of the SQLite database and local mirrors");
ABSL_FLAG(std::string, database_url, "",
          "--store=postgres: libpq connection string or URI (env "
          "VIDEOGEN_DATABASE_URL)");
ABSL_FLAG(std::string, replica_id, "",
          "this replica's lease owner name (default: host name and pid)");
ABSL_FLAG(absl::Duration, lease_duration, absl::Seconds(30),
          "poll lease length; a dead replica's generations resume after it");
ABSL_FLAG(absl::Duration, retention, absl::Hours(24 * 30),
          "how long terminal generations (and their mirrored videos) are kept");
ABSL_FLAG(bool, simulate, false,
          "run the simulated AI/ML API in-process (default when no key)");
ABSL_FLAG(absl::Duration, sim_queued_for, absl::Seconds(1),
          "--simulate: time a job stays queued");
ABSL_FLAG(absl::Duration, sim_generating_for, absl::Seconds(3),
          "--simulate: time a job is generating");
ABSL_FLAG(double, sim_error_rate, 0, "--simulate: share of jobs that fail");
ABSL_FLAG(std::string, upstream_url, "https://api.aimlapi.com",
          "base URL of the AI/ML API");
ABSL_FLAG(std::string, upstream_endpoint, "legacy",
          "legacy (/v2/generate/video/kling/generation) or generations "
          "(/v2/video/generations)");
ABSL_FLAG(std::string, api_key_file, "",
          "file holding the AI/ML API key (else env AIMLAPI_KEY)");
ABSL_FLAG(double, upstream_rate_limit, 20,
          "upstream requests per second, all generations together (0 = off)");
ABSL_FLAG(int, upstream_max_in_flight, 64, "upstream requests in flight");
ABSL_FLAG(absl::Duration, upstream_timeout, absl::Seconds(30),
          "timeout of one upstream HTTP request");
ABSL_FLAG(std::string, models, "",
          "comma-separated accepted models (default: the known Kling models)");
ABSL_FLAG(absl::Duration, poll_initial_delay, absl::Seconds(2),
          "wait before a generation's first poll");
ABSL_FLAG(absl::Duration, poll_interval, absl::Seconds(5),
          "time between polls of one generation (with +-20% jitter)");
ABSL_FLAG(absl::Duration, generation_deadline, absl::Minutes(30),
          "a generation not done by then is FAILED with DEADLINE_EXCEEDED");
ABSL_FLAG(int, max_outstanding_submits, 4,
          "submits of one tenant handed to the upstream at once; the rest "
          "queue here");
ABSL_FLAG(absl::Duration, reconcile_window, absl::Minutes(15),
          "how long an unanswered submit is looked for in the usage log "
          "before it is FAILED SUBMIT_UNCONFIRMED");
ABSL_FLAG(double, reconcile_rate, 60,
          "usage-log requests per minute (the upstream allows 200)");
ABSL_FLAG(absl::Duration, reconcile_interval, absl::Seconds(20),
          "time between usage-log passes while a submit is unconfirmed (the "
          "log lags, so a job missing now may show up later)");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(15),
          "heartbeat on idle streams so proxies keep them open");
ABSL_FLAG(absl::Duration, drain_grace, absl::Seconds(20),
          "on SIGTERM: time in-flight RPCs and submits get before exit");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Seconds(30),
          "server-sent HTTP/2 keepalive ping interval");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(10),
          "close a connection whose keepalive ping is unanswered this long");
ABSL_FLAG(absl::Duration, keepalive_min_ping_interval, absl::Seconds(10),
          "most frequent client keepalive pings permitted");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Minutes(30),
          "close connections after this age so load rebalances (0 = never)");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::Minutes(5),
          "time open RPCs get after max_connection_age");
ABSL_FLAG(bool, webhook_allow_insecure, false,
          "allow http webhooks and private/loopback addresses (tests only)");
ABSL_FLAG(std::string, webhook_retry_schedule, "",
          "comma-separated delays between webhook attempts (default: the "
          "Standard Webhooks schedule, 0s,5s,5m,30m,2h,5h,10h,10h)");
ABSL_FLAG(std::string, webhook_secret_file, "",
          "--auth=none: file with the whsec_ secret that signs webhooks");
ABSL_FLAG(std::string, mirror, "local",
          "copy completed videos: none, local (under --data_dir) or s3");
ABSL_FLAG(std::string, s3_endpoint, "",
          "--mirror=s3: endpoint URL of any S3-compatible service");
ABSL_FLAG(std::string, s3_bucket, "", "--mirror=s3: bucket");
ABSL_FLAG(std::string, s3_region, "us-east-1", "--mirror=s3: region");
ABSL_FLAG(std::string, log_format, "json", "json or text");

namespace videogen::app {
namespace {

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

absl::StatusOr<std::string> ReadApiKey() {
  const std::string path = absl::GetFlag(FLAGS_api_key_file);
  if (path.empty()) {
    const char* env = std::getenv("AIMLAPI_KEY");
    return env ? std::string(absl::StripAsciiWhitespace(env)) : "";
  }
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read --api_key_file ", path));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(buf.str()));
}

absl::Status Check(const Config& c) {
  if (c.auth != "keys" && c.auth != "none") {
    return Invalid(
        absl::StrCat("--auth=", c.auth, " is unknown; use keys or none"));
  }
  if (c.auth == "none" && !c.allow_unauthenticated &&
      (!IsLoopbackAddress(c.listen) ||
       (!c.http_listen.empty() && !IsLoopbackAddress(c.http_listen)))) {
    return Invalid(
        "--auth=none on a non-loopback address lets anyone spend the "
        "upstream key; use --auth=keys, listen on 127.0.0.1, or add "
        "--allow_unauthenticated");
  }
  if (c.store != "sqlite" && c.store != "memory" && c.store != "postgres") {
    return Invalid(absl::StrCat("--store=", c.store,
                                " is unknown; use sqlite, postgres or memory"));
  }
  if (c.store == "postgres" && c.database_url.empty()) {
    return Invalid(
        "--store=postgres needs --database_url (or VIDEOGEN_DATABASE_URL), "
        "e.g. postgresql://videogen@db:5432/videogen");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return Invalid("TLS needs both --tls_cert_file and --tls_key_file");
  }
  if (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty()) {
    return Invalid(
        "--tls_client_ca_file needs --tls_cert_file and --tls_key_file");
  }
  if (c.mirror != "none" && c.mirror != "local" && c.mirror != "s3") {
    return Invalid(absl::StrCat("--mirror=", c.mirror,
                                " is unknown; use none, local or s3"));
  }
  if (c.mirror == "s3" && (c.s3_endpoint.empty() || c.s3_bucket.empty())) {
    return Invalid("--mirror=s3 needs --s3_endpoint and --s3_bucket");
  }
  if (c.log_format != "json" && c.log_format != "text") {
    return Invalid("--log_format must be json or text");
  }
  if (c.max_outstanding_submits < 1) {
    return Invalid("--max_outstanding_submits must be at least 1");
  }
  if (c.stream_backlog < 1)
    return Invalid("--stream_backlog must be at least 1");
  return absl::OkStatus();
}

}  // namespace

bool IsLoopbackAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

std::vector<char*> WithEnvFallbacks(int argc, char** argv,
                                    std::vector<std::string>& storage) {
  static const char* kNames[] = {"listen",
                                 "http_listen",
                                 "metrics_listen",
                                 "store",
                                 "data_dir",
                                 "database_url",
                                 "replica_id",
                                 "retention",
                                 "upstream_url",
                                 "upstream_endpoint",
                                 "api_key_file",
                                 "poll_initial_delay",
                                 "poll_interval",
                                 "generation_deadline",
                                 "heartbeat_interval",
                                 "drain_grace",
                                 "log_format",
                                 "models",
                                 "tls_cert_file",
                                 "tls_key_file",
                                 "tls_client_ca_file",
                                 "auth",
                                 "mirror",
                                 "s3_endpoint",
                                 "s3_bucket",
                                 "s3_region",
                                 "lease_duration",
                                 "webhook_secret_file"};
  storage.reserve(std::size(kNames));
  for (const char* name : kNames) {
    std::string env = absl::StrCat("VIDEOGEN_", absl::AsciiStrToUpper(name));
    if (const char* v = std::getenv(env.c_str())) {
      storage.push_back(absl::StrCat("--", name, "=", v));
    }
  }
  std::vector<char*> out = {argv[0]};
  for (auto& s : storage) out.push_back(s.data());
  for (int i = 1; i < argc; ++i) out.push_back(argv[i]);
  return out;
}

absl::StatusOr<Config> ConfigFromFlags() {
  Config c;
  c.listen = absl::GetFlag(FLAGS_listen);
  c.http_listen = absl::GetFlag(FLAGS_http_listen);
  c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  c.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  c.reflection = absl::GetFlag(FLAGS_reflection);
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  c.max_concurrent_streams_per_connection =
      absl::GetFlag(FLAGS_max_concurrent_streams_per_connection);
  c.max_streams = absl::GetFlag(FLAGS_max_streams);
  c.max_streams_per_tenant = absl::GetFlag(FLAGS_max_streams_per_tenant);
  c.stream_backlog = absl::GetFlag(FLAGS_stream_backlog);
  c.auth = absl::GetFlag(FLAGS_auth);
  c.allow_unauthenticated = absl::GetFlag(FLAGS_allow_unauthenticated);
  c.store = absl::GetFlag(FLAGS_store);
  c.data_dir = absl::GetFlag(FLAGS_data_dir);
  c.database_url = absl::GetFlag(FLAGS_database_url);
  c.replica_id = absl::GetFlag(FLAGS_replica_id);
  c.lease_duration = absl::GetFlag(FLAGS_lease_duration);
  c.retention = absl::GetFlag(FLAGS_retention);
  c.simulate = absl::GetFlag(FLAGS_simulate);
  c.sim_queued_for = absl::GetFlag(FLAGS_sim_queued_for);
  c.sim_generating_for = absl::GetFlag(FLAGS_sim_generating_for);
  c.sim_error_rate = absl::GetFlag(FLAGS_sim_error_rate);
  c.upstream_url = absl::GetFlag(FLAGS_upstream_url);
  c.upstream_endpoint = absl::GetFlag(FLAGS_upstream_endpoint);
  absl::StatusOr<std::string> key = ReadApiKey();
  if (!key.ok()) return key.status();
  c.api_key = *key;
  c.upstream_rate_limit = absl::GetFlag(FLAGS_upstream_rate_limit);
  c.upstream_max_in_flight = absl::GetFlag(FLAGS_upstream_max_in_flight);
  c.upstream_timeout = absl::GetFlag(FLAGS_upstream_timeout);
  const std::string models = absl::GetFlag(FLAGS_models);
  if (!models.empty()) {
    c.models = absl::StrSplit(models, ',', absl::SkipWhitespace());
  }
  c.poll_initial_delay = absl::GetFlag(FLAGS_poll_initial_delay);
  c.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  c.generation_deadline = absl::GetFlag(FLAGS_generation_deadline);
  c.max_outstanding_submits = absl::GetFlag(FLAGS_max_outstanding_submits);
  c.reconcile_window = absl::GetFlag(FLAGS_reconcile_window);
  c.reconcile_rate = absl::GetFlag(FLAGS_reconcile_rate);
  c.reconcile_interval = absl::GetFlag(FLAGS_reconcile_interval);
  c.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  c.drain_grace = absl::GetFlag(FLAGS_drain_grace);
  c.keepalive_time = absl::GetFlag(FLAGS_keepalive_time);
  c.keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout);
  c.keepalive_min_ping_interval =
      absl::GetFlag(FLAGS_keepalive_min_ping_interval);
  c.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  c.max_connection_age_grace = absl::GetFlag(FLAGS_max_connection_age_grace);
  c.webhook_allow_insecure = absl::GetFlag(FLAGS_webhook_allow_insecure);
  c.webhook_retry_schedule = absl::GetFlag(FLAGS_webhook_retry_schedule);
  c.webhook_secret_file = absl::GetFlag(FLAGS_webhook_secret_file);
  c.mirror = absl::GetFlag(FLAGS_mirror);
  c.s3_endpoint = absl::GetFlag(FLAGS_s3_endpoint);
  c.s3_bucket = absl::GetFlag(FLAGS_s3_bucket);
  c.s3_region = absl::GetFlag(FLAGS_s3_region);
  c.log_format = absl::GetFlag(FLAGS_log_format);
  if (absl::Status s = Check(c); !s.ok()) return s;
  return c;
}

}  // namespace videogen::app
