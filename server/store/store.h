#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "videogen/v1/video_generation.pb.h"

namespace videogen::store {

// A generation as persisted: the public resource plus the tracker's private
// scheduling state. A non-terminal record with an empty upstream_id means
// "submit intent recorded, upstream answer not yet seen".
struct Record {
  v1::Generation generation;
  absl::Time deadline = absl::InfiniteFuture();  // FAILED after this
};

// Position in the newest-first order (create_time desc, then id desc).
struct Cursor {
  absl::Time create_time;
  std::string id;
};

struct ListQuery {
  std::vector<v1::Generation::State> states;  // empty = all
  std::map<std::string, std::string> labels;  // all must match
  int page_size = 50;                         // > 0
  std::optional<Cursor> after;                // start strictly after this
};

struct ListPage {
  std::vector<v1::Generation> generations;
  std::optional<Cursor> next;  // set when more may follow
};

// Durable storage of generations. Every call is synchronous and, when it
// returns OK, durable. Implementations are thread-safe and serialize writes
// internally. Kept free of "one process owns everything" so a shared SQL
// store can implement it later.
class Store {
 public:
  virtual ~Store() = default;

  // Inserts or replaces the record keyed by generation.id. A request_id that
  // is non-empty is unique: a different id with the same request_id is
  // ALREADY_EXISTS.
  virtual absl::Status Put(const Record& record) = 0;

  // Removes a record (used when the upstream rejected the submit, so nothing
  // exists upstream). Missing ids are OK.
  virtual absl::Status Delete(std::string_view id) = 0;

  virtual absl::StatusOr<std::optional<Record>> Get(std::string_view id) = 0;
  virtual absl::StatusOr<std::optional<Record>> GetByRequestId(
      std::string_view request_id) = 0;

  // Every record that is not terminal (done == false), to resume polling.
  virtual absl::StatusOr<std::vector<Record>> LoadActive() = 0;

  // Newest first, filtered, paged.
  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;

  // Deletes terminal records whose update_time is before `cutoff`. Returns
  // how many went.
  virtual absl::StatusOr<int64_t> PurgeTerminalBefore(absl::Time cutoff) = 0;
};

}  // namespace videogen::store
