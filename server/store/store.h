#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::store {

// Where a generation's one and only upstream submit stands (design.md §5).
// Stored as an integer: keep the numbers.
enum class SubmitPhase : int {
  kDone = 0,         // the upstream answered with an id (or none is needed)
  kPending = 1,      // accepted here; nothing has left for the upstream yet
  kSent = 2,         // the POST left (or may have); no answer seen yet
  kUnconfirmed = 3,  // the answer was ambiguous: the reconciler looks the
                     // job up in the usage log, the POST is never re-sent
};

// A generation as persisted: the public resource plus the private state the
// tracker needs to resume it on any replica.
struct Record {
  v1::Generation generation;  // generation.tenant() scopes request_id
  absl::Time deadline = absl::InfiniteFuture();  // FAILED after this
  SubmitPhase submit = SubmitPhase::kDone;
  // When the submit left (kSent/kUnconfirmed): the usage-log window is
  // centred on it.
  absl::Time submit_time = absl::InfinitePast();
  // Row version: +1 on every write, including the ones that do not bump
  // `generation.revision` (submit phase, lease, estimate). Every update is
  // conditional on it (compare-and-set), which also fences a replica that
  // lost its lease: a claim by another replica bumps it.
  int64_t version = 0;
  // Poll lease (design.md §6): who polls this generation, and until when.
  // Single-process stores hand every lease to their one owner.
  std::string owner;
  absl::Time lease_until = absl::InfinitePast();
  // Set once a webhook receiver answered 410 Gone for this generation
  // (DropDeliveries): no delivery of it is queued or sent any more. Kept
  // beside the record like generation.webhook_status: Insert and Update
  // ignore the caller's value.
  bool webhooks_gone = false;
};

// Position in the newest-first order (create_time desc, then id desc).
// Nanosecond precision: the page token carries exactly what the store orders
// by, so no row falls between pages.
struct Cursor {
  absl::Time create_time;
  std::string id;
};

struct ListQuery {
  std::string tenant;  // empty = every tenant (admin, or --auth=none)
  std::vector<v1::Generation::State> states;  // empty = all
  std::map<std::string, std::string> labels;  // all must match
  int page_size = 50;                         // > 0
  std::optional<Cursor> after;                // start strictly after this
};

struct ListPage {
  std::vector<v1::Generation> generations;
  std::optional<Cursor> next;  // set when more may follow
};

// Per-tenant limits checked in the same transaction as an insert, so two
// concurrent creates can never both take the last unit (design.md §7).
// 0 means unlimited.
struct Admission {
  int64_t max_concurrent = 0;        // non-terminal generations
  int64_t creates_per_minute = 0;    // inserts in the last 60 s
  int64_t video_seconds_budget = 0;  // sum of duration_seconds per period;
                                     // FAILED generations give theirs back
  absl::Duration budget_period = absl::Hours(720);
};

// A webhook delivery waiting in the outbox (design.md §8). Written in the
// same transaction as the change it announces.
struct Delivery {
  int64_t seq = 0;  // store-assigned, unique
  std::string generation_id;
  int64_t revision = 0;  // webhook-id = generation_id + "." + revision
  std::string tenant;
  std::string url;
  std::string body;  // the GenerationEvent in proto3 JSON
  int attempts = 0;
  absl::Time next_attempt = absl::InfinitePast();
  absl::Time created = absl::InfinitePast();
  std::string owner;  // lease holder while an attempt runs
  absl::Time lease_until = absl::InfinitePast();
};

// One committed change that bumped a revision, as the change feed announces
// it. `generation` is set by in-process stores; a shared store's feed may
// carry only id and revision (NOTIFY payloads), and listeners re-read.
struct Change {
  std::string id;
  int64_t revision = 0;
  std::string tenant;
  std::shared_ptr<const v1::Generation> generation;  // may be null
};

// Announces committed changes to listeners, after commit and outside every
// store lock, in revision order per generation. The listener must not block
// (it hands the change to its own thread); it may see a revision again or
// see revisions out of order across generations, and drops anything at or
// below what it already holds. A PostgreSQL store implements it with
// LISTEN/NOTIFY plus catch-up by revision after a reconnect.
class ChangeFeed {
 public:
  using Listener = std::function<void(const Change&)>;
  virtual ~ChangeFeed() = default;
  // Replaces the listener; nullptr stops delivery. Thread-safe.
  virtual void SetListener(Listener listener) = 0;
};

// An API key as stored: never the key itself, only its hash (design.md §7).
struct ApiKey {
  std::string key_id;    // public, e.g. "k_3xQ..."
  std::string key_hash;  // hex SHA-256 of the secret key
  std::string tenant;
  bool admin = false;
  Admission limits;
  std::string webhook_secret;  // "whsec_" + base64
  absl::Time created = absl::InfinitePast();
  std::optional<absl::Time> revoked;
};

// One completed generation's run time, for the estimator (design.md §10).
struct DurationSample {
  std::string model;
  int duration_seconds = 0;
  absl::Duration took;  // create_time -> completed
  absl::Time completed;
};

// Durable storage of generations, keys, the webhook outbox and the
// estimator's samples. Every call is synchronous and, when it returns OK,
// durable. Implementations are thread-safe. Nothing here assumes one process
// owns everything: a shared SQL store implements the same interface.
class Store {
 public:
  virtual ~Store() = default;

  // ---- Generations ----

  // Inserts a new record (its version becomes 1). ALREADY_EXISTS when
  // (tenant, request_id) is taken: `*existing` (when given) then holds the
  // record that has it. RESOURCE_EXHAUSTED, naming the limit, when
  // `admission` (checked atomically with the insert) refuses it.
  virtual absl::Status Insert(const Record& record, const Admission& admission,
                              std::optional<Record>* existing) = 0;

  // Replaces the record whose stored version is `record.version - 1`
  // (compare-and-set) and appends `outbox` in the same transaction, except
  // the deliveries of a generation whose webhooks are gone (DropDeliveries),
  // which are left out, checked in that transaction. ABORTED when the stored
  // version differs (someone else wrote it: re-read), and NOT_FOUND when it
  // is gone. After commit, announces the change on the feed when
  // `generation.revision` went up.
  virtual absl::Status Update(const Record& record,
                              const std::vector<Delivery>& outbox) = 0;

  // Removes a record whose version is `version` (a submit the upstream
  // refused: nothing exists upstream, so the request_id is free again).
  // ABORTED on a version mismatch; a missing record is OK.
  virtual absl::Status Delete(std::string_view id, int64_t version) = 0;

  virtual absl::StatusOr<std::optional<Record>> Get(std::string_view id) = 0;
  virtual absl::StatusOr<std::optional<Record>> GetByRequestId(
      std::string_view tenant, std::string_view request_id) = 0;

  // Claims for `owner` until `until` up to `limit` non-terminal records
  // whose lease is free, expired (lease_until <= now) or already `owner`'s;
  // each claimed record's version goes up. Returns them.
  virtual absl::StatusOr<std::vector<Record>> ClaimActive(
      std::string_view owner, absl::Time now, absl::Time until, int limit) = 0;
  // Extends `owner`'s leases that have not expired to `until`, without a
  // version change. Returns the ids `owner` still holds.
  virtual absl::StatusOr<std::vector<std::string>> RenewLeases(
      std::string_view owner, absl::Time now, absl::Time until) = 0;

  // Newest first, filtered, paged.
  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;

  // Deletes terminal records whose update_time is before `cutoff`, with
  // their deliveries. Returns the ids that went (the media store drops
  // their files).
  virtual absl::StatusOr<std::vector<std::string>> PurgeTerminalBefore(
      absl::Time cutoff) = 0;

  // Records the last webhook attempt on a generation. Kept beside the
  // record (not a new version, not a new revision) so the deliverer never
  // races the poller's compare-and-set; Get and List merge it into
  // `generation.webhook_status`.
  virtual absl::Status SetWebhookStatus(std::string_view id,
                                        const v1::WebhookStatus& status) = 0;

  // Announces committed changes. Owned by the store.
  virtual ChangeFeed* feed() = 0;

  // Verifies the database (SQLite: PRAGMA quick_check) so a damaged file
  // is refused at startup instead of losing paid jobs later.
  virtual absl::Status CheckIntegrity() { return absl::OkStatus(); }

  // ---- API keys ----
  virtual absl::Status InsertKey(const ApiKey& key) = 0;
  virtual absl::StatusOr<std::optional<ApiKey>> FindKeyByHash(
      std::string_view key_hash) = 0;
  virtual absl::StatusOr<std::vector<ApiKey>> ListKeys() = 0;
  // NOT_FOUND for an unknown key_id.
  virtual absl::Status RevokeKey(std::string_view key_id, absl::Time when) = 0;

  // ---- Webhook outbox ----
  // Leases up to `limit` deliveries due at `now` (next_attempt <= now, lease
  // free or expired) to `owner` until `until`.
  virtual absl::StatusOr<std::vector<Delivery>> ClaimDeliveries(
      std::string_view owner, absl::Time now, absl::Time until, int limit) = 0;
  // Ends a delivery (delivered or given up): removes it.
  virtual absl::Status FinishDelivery(int64_t seq) = 0;
  // Schedules another attempt and releases the lease.
  virtual absl::Status RetryDelivery(int64_t seq, int attempts,
                                     absl::Time next_attempt) = 0;
  // Its receiver said 410 Gone: marks the generation's webhooks gone
  // (Record::webhooks_gone) and removes every pending delivery of it, in one
  // transaction, so that no delivery of it is ever queued again (Update
  // leaves them out). An unknown generation is OK (nothing to stop).
  virtual absl::Status DropDeliveries(std::string_view generation_id) = 0;
  // Pending deliveries and the oldest one's creation time, for metrics.
  virtual absl::StatusOr<std::pair<int64_t, absl::Time>> OutboxStats() = 0;

  // ---- Estimator samples ----
  virtual absl::Status AddSample(const DurationSample& sample) = 0;
  // The newest `limit` samples of one model and duration, newest first.
  virtual absl::StatusOr<std::vector<DurationSample>> RecentSamples(
      std::string_view model, int duration_seconds, int limit) = 0;
};

}  // namespace videogen::store
